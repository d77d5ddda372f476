"""Reading a vLLM server's log: why did it fail, what is it doing now (notebook 03).

vLLM prints hundreds of lines while it starts; :class:`helpers.server.VLLMServer` keeps them
in a file and quotes only what a learner needs: the last exception (or ERROR) line when the
start failed, and the latest INFO message while it is still starting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .process import read_tail

LOG_TAIL_LINES = 30
HEADLINE_SEARCH_LINES = 400

_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b:? ?.*$")
_ERROR_LOG_LINE = re.compile(r"\bERROR\b")
_PROCESS_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s*")
_INFO_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?INFO\s+\S+\s+\S+\s+\[[^\]]*\]\s*")


#: Exceptions that only point elsewhere ("See root cause above"): the root cause is the better headline.
_WRAPPER = re.compile(r"See root cause above|Engine core initialization failed")


def headline(lines: Sequence[str]) -> str | None:
    """The most telling line of a failed start: the last exception line (the root cause rather
    than vLLM's "Engine core initialization failed" wrapper), else the last ERROR."""
    for pattern in (_EXCEPTION_LINE, _ERROR_LOG_LINE):
        wrappers = []
        for index in range(len(lines) - 1, -1, -1):
            stripped = _PROCESS_PREFIX.sub("", lines[index].strip())
            if pattern is _EXCEPTION_LINE and _WRAPPER.search(stripped):
                wrappers.append(stripped)
                continue
            if pattern.search(stripped):
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if following.startswith((" ", "\t")) and "errors.pydantic.dev" not in following:
                    stripped += " " + following.strip()  # e.g. pydantic's ValidationError detail
                return stripped
        if wrappers:
            return wrappers[0]
    return None


def last_info(path: str | Path) -> str:
    """The message of the last INFO line in the log (what vLLM is doing right now)."""
    for line in reversed(read_tail(path, 40)):
        match = _INFO_PREFIX.match(line.strip())
        if match:
            return line.strip()[match.end():]
    return ""


def failure_report(what: str, log_path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """``what``, vLLM's own headline and the indented log tail: the text of a start-up error."""
    tail = read_tail(log_path, lines)
    text = f"{what}\n"
    said = headline(read_tail(log_path, HEADLINE_SEARCH_LINES))  # the root cause may be far above the tail
    if said:
        text += f"vLLM says: {said}\n"
    return text + f"Last {len(tail)} lines of {log_path}:\n" + "\n".join(f"    {line}" for line in tail)
