"""vLLM's log goes to a file, and the lines a learner needs are read back from it (notebook 02)."""

from __future__ import annotations

import json
import logging

import pytest

from helpers.engine_log import highlights, route_offline_log

# Lines as vLLM 0.32 writes them (CPU: one line; GPU: two), in the file's format.
CPU_LOG = """INFO 11-22 03:13:20 [model.py:2152] Using max model len 2048
INFO 11-22 03:13:26 [kv_cache_utils.py:2327] CPU KV cache size: 46,592 tokens, Maximum concurrency for 2,048 tokens per request: 22.75x
INFO 11-22 03:13:27 [core.py:402] init engine (profile, create kv cache, warmup model) took 1.54 s
"""
GPU_LOG = """INFO 11-22 03:13:26 [gpu_worker.py:300] Available KV cache memory: 5.42 GiB
INFO 11-22 03:13:26 [kv_cache_utils.py:1087] GPU KV cache size: 101,488 tokens
INFO 11-22 03:13:26 [kv_cache_utils.py:1091] Maximum concurrency for 8,192 tokens per request: 12.39x
"""


@pytest.fixture
def vllm_logger():
    logger = logging.getLogger("vllm")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_vllm_records_land_in_the_file_and_not_on_the_screen(tmp_path, capsys, vllm_logger):
    log_file = tmp_path / "offline.log"
    env = route_offline_log(log_file)
    config = json.loads(open(env["VLLM_LOGGING_CONFIG_PATH"]).read())
    assert config["handlers"]["file"]["filename"] == str(log_file)
    logging.getLogger("vllm.engine.core").warning("Triton is installed, but doesn't include CPU backend.")
    logging.getLogger("vllm.engine.core").debug("not at INFO")
    for handler in vllm_logger.handlers:
        handler.flush()
    captured = capsys.readouterr()
    assert "Triton" not in captured.out + captured.err
    text = log_file.read_text()
    assert text.startswith("WARNING ") and "Triton is installed" in text and "not at INFO" not in text


def test_highlights_pick_the_kv_cache_lines_without_their_prefix(tmp_path):
    cpu, gpu = tmp_path / "cpu.log", tmp_path / "gpu.log"
    cpu.write_text(CPU_LOG)
    gpu.write_text(GPU_LOG)
    assert highlights(cpu) == [
        "CPU KV cache size: 46,592 tokens, Maximum concurrency for 2,048 tokens per request: 22.75x"]
    assert highlights(gpu) == ["Available KV cache memory: 5.42 GiB", "GPU KV cache size: 101,488 tokens",
                               "Maximum concurrency for 8,192 tokens per request: 12.39x"]


def test_highlights_of_a_log_not_written_yet_are_empty(tmp_path):
    assert highlights(tmp_path / "missing.log") == []
