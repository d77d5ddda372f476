""".venv/bin/python -m helpers.smoke: arguments, dtype rules, a passing run, a failing run, Ctrl+C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers.hardware import GpuInfo
from helpers.smoke import build_parser, main, resolve_dtype

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import new_port, wait_until  # noqa: E402

pytest_plugins = ["server_fixtures"]


def smoke(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "helpers.smoke", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def gpu(capability: tuple[int, int]) -> GpuInfo:
    return GpuInfo(index=0, name="test card", memory_total_bytes=24 << 30, compute_capability=capability,
                   driver_version="0", memory_bandwidth_gbs=None)


# -- arguments (in-process, no server) -------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["--port", "-1", "MODEL"], "argument --port: -1 is not a valid port"),
    (["--port", "65536", "MODEL"], "argument --port: 65536 is not a valid port"),
    (["--gpu-util", "1.5", "MODEL"], "argument --gpu-util: 1.5 is outside (0, 1]"),
    (["--gpu-util", "0", "MODEL"], "argument --gpu-util: 0.0 is outside (0, 1]"),
    (["--gpus", "0", "MODEL"], "argument --gpus: 0 is not a valid GPU count"),
    (["--max-len", "0", "MODEL"], "argument --max-len: 0 is not a valid max len"),
    (["--dtype", "fp8", "MODEL"], "argument --dtype: invalid choice: 'fp8'"),
    (["--bogus", "MODEL"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: MODEL"),
    (["/no/such/model/dir"], "model directory /no/such/model/dir does not exist"),
    (["EMPTY_DIR"], "has no config.json"),
])
def test_invalid_arguments_exit_2_with_one_line(args, expected, tmp_path, tiny_model_dir, capsys):
    args = [str(tmp_path) if arg == "EMPTY_DIR" else str(tiny_model_dir) if arg == "MODEL" else arg
            for arg in args]
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith(".venv/bin/python -m helpers.smoke: error: ") and expected in captured.err


def test_invalid_arguments_from_the_command_line():
    for args in (["--port", "-1", "some/model"], ["--gpu-util", "1.5", "some/model"], ["--nope", "some/model"]):
        done = smoke(*args, timeout=60)
        assert done.returncode == 2, done
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    for flag in ("MODEL", "--port", "--gpus", "--max-len", "--gpu-util", "--dtype", "--timeout",
                 "--api-key", "--served-model-name", "--enforce-eager"):
        assert flag in text
    for default in ("(default: 8000)", "(default: 1)", "(default: 1024)", "(default: 0.8)", "(default: auto)",
                    "(default: from the model's size"):
        assert default in " ".join(text.split())
    assert "examples (in the repository root):" in text and "exit codes:" in text
    assert len(build_parser().format_help().splitlines()) > 20


def test_dtype_auto_rules():
    ampere, turing = [gpu((8, 6))], [gpu((7, 5))]
    assert resolve_dtype("float32", "bfloat16", ampere, ())[0] == "float32"  # explicit wins
    assert resolve_dtype("auto", "bfloat16", ampere, ())[0] == "bfloat16"
    assert resolve_dtype("auto", "float32", ampere, ())[0] == "bfloat16"
    assert resolve_dtype("auto", "float16", ampere, ())[0] == "float16"
    assert resolve_dtype("auto", "bfloat16", turing, ())[0] == "float16"
    assert resolve_dtype("auto", "float32", turing, ())[0] == "float16"
    assert resolve_dtype("auto", None, turing, ())[0] == "float16"
    assert resolve_dtype("auto", "bfloat16", (), ("avx512_bf16",))[0] == "bfloat16"
    assert resolve_dtype("auto", "bfloat16", (), ("avx2",))[0] == "float32"
    assert resolve_dtype("auto", "float32", (), ("avx512_bf16",))[0] == "float32"
    dtype, why = resolve_dtype("auto", "bfloat16", turing, ())
    assert "7.5" in why and "bfloat16" in why


# -- real runs -------------------------------------------------------------------------------
@pytest.mark.vllm
def test_smoke_passes_end_to_end(tiny_model_dir):
    from helpers.server import running_server_pids

    port = new_port()
    done = smoke(str(tiny_model_dir), "--port", str(port), "--max-len", "512", "--api-key", "smoke-key",
                 "--served-model-name", "tiny-smoke")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "4/4 passed" in out and out.count("✓") == 4 and "✗" not in out
    assert f"--port {port}" in out and "--api-key smoke-key" in out and "--max-model-len 512" in out
    assert "(ignored on CPU" in out and "VLLM_CPU_KVCACHE_SPACE=1" in out
    assert "16 generated /" in out and "chunks" in out
    assert f"stopping the vLLM server on port {port}" in out
    assert running_server_pids(port=port) == []


@pytest.mark.vllm
def test_smoke_reports_a_failed_start_and_leaves_nothing(tiny_model_dir):
    from helpers.server import running_server_pids

    port = new_port()
    done = smoke(str(tiny_model_dir), "--port", str(port), "--max-len", "100000", timeout=120)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "the server did not start" in out and "0/4 passed" in out
    assert "max_model_len" in out and "vLLM says:" in out  # the reason, from the log tail
    assert "Traceback" not in done.stderr
    assert running_server_pids(port=port) == []


@pytest.mark.vllm
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted (Ctrl+C)"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_smoke_stops_the_server_on_ctrl_c_and_sigterm(tiny_model_dir, sig, code, said):
    from helpers.server import running_server_pids

    port = new_port()
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "helpers.smoke", str(tiny_model_dir), "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in child.stdout:  # wait for a state: the server process exists
            lines.append(line)
            if line.startswith("starting vLLM server"):
                break
        assert wait_until(lambda: running_server_pids(port=port), 10), "".join(lines)
        child.send_signal(sig)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == code, out + err
    assert said in out and "Traceback" not in err
    assert running_server_pids(port=port) == []


def test_model_dtype_reads_config(tmp_path):
    from helpers.smoke import model_dtype

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    assert model_dtype(str(tmp_path)) == "float16"
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"dtype": "bfloat16"}}))
    assert model_dtype(str(tmp_path)) == "bfloat16"
    assert model_dtype("Qwen/Qwen2.5-0.5B-Instruct") is None
