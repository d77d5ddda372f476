"""vLLM's log goes to a file; the notebook shows the few lines a learner needs (notebook 02).

vLLM logs every step of an engine start (a config dump of several thousand characters
included) to stdout. That is useful in a terminal and a wall in a notebook. vLLM reads a
Python ``logging`` configuration from the file named by ``VLLM_LOGGING_CONFIG_PATH`` when it
is first imported; :func:`route_offline_log` writes one that sends the ``vllm`` logger to
``offline-<pid>.log`` and returns that variable. Servers (notebook 03) already log to their own
file. :func:`highlights` then picks out the lines worth reading, such as the KV-cache size and
the maximum concurrency that vLLM computed.
"""

from __future__ import annotations

import json
import logging.config
import os
import re
import tempfile
import warnings
from pathlib import Path

#: One folder for every log the course writes: offline engines and servers.
LOG_DIR = Path(tempfile.gettempdir()) / "vllm-hands-on" / "logs"

#: vLLM's own words for what it allocated: "CPU KV cache size: 22,016 tokens, Maximum
#: concurrency for 2,048 tokens per request: 10.75x" (one line on CPU; GPU engines log
#: "GPU KV cache size: ..." and "Maximum concurrency ..." as two).
KV_CACHE_PATTERN = re.compile(r"KV cache size|Maximum concurrency|Available KV cache memory")
_PREFIX = re.compile(r"^.*?\[[\w.]+:\d+\]\s*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")   # servers log in colour


def offline_log_path(pid: int | None = None) -> Path:
    """The log file of the offline engines started by process ``pid`` (default: this one)."""
    return LOG_DIR / f"offline-{pid or os.getpid()}.log"


def logging_config(log_file: Path) -> dict:
    """A ``logging.config.dictConfig`` that appends vLLM's records to ``log_file``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                 "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "mode": "a",
                              "encoding": "utf-8", "formatter": "plain", "level": "DEBUG"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }


def route_offline_log(log_file: Path | None = None) -> dict[str, str]:
    """Write the logging config for ``log_file``; return the variable that makes vLLM use it.

    Takes effect in processes that import vLLM after the variable is set (the notebook's own
    kernel when called before ``from vllm import LLM``, and every engine process vLLM spawns).
    """
    log_file = log_file or offline_log_path()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config = logging_config(log_file)
    config_file = log_file.with_suffix(".logging.json")
    config_file.write_text(json.dumps(config, indent=2))
    # Also now, in this process: vLLM logs a few lines while importing, before it reads the file.
    logging.config.dictConfig(config)
    # torch warns once per engine about a deprecated alias vLLM touches; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op.* is deprecated")
    return {"VLLM_LOGGING_CONFIG_PATH": str(config_file)}


def highlights(log_file: str | Path, pattern: re.Pattern[str] = KV_CACHE_PATTERN) -> list[str]:
    """The messages of ``log_file`` that match ``pattern``, without their level/time/source prefix."""
    try:
        lines = Path(log_file).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [_PREFIX.sub("", _ANSI.sub("", line)).strip() for line in lines if pattern.search(line)]

