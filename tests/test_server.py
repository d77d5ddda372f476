"""helpers.server: command line, start/health/stop, reuse, busy port, failures, Ctrl-C, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

from helpers.errors import CourseError, ServerError
from helpers.server import (
    API_SERVER_MODULE,
    VLLMServer,
    running_server_pids,
    server_command,
    servers_started_here,
    start_server,
)
from helpers.settings import get_settings, replace

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import API_KEY, new_port, stub_command, wait_until  # noqa: E402

pytest_plugins = ["server_fixtures"]

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# -- the command line (no server) ------------------------------------------------------------
def test_server_command_tiny_profile():
    settings = get_settings("tiny", check_hardware=False)
    cmd = server_command(settings, host="127.0.0.1", port=8123)
    assert cmd[:3] == [sys.executable, "-m", API_SERVER_MODULE]
    options = dict(zip(cmd[3::2], cmd[4::2]))
    assert options["--model"] == str(settings.model_dir)
    assert options["--served-model-name"] == settings.served_model_name
    assert options["--dtype"] == settings.dtype
    assert options["--max-model-len"] == str(settings.max_model_len)
    assert options["--port"] == "8123" and options["--host"] == "127.0.0.1"
    assert "--enforce-eager" in cmd
    assert "--gpu-memory-utilization" not in cmd and "--tensor-parallel-size" not in cmd
    assert "--api-key" not in cmd


def test_server_command_gpu_profile_key_and_extra_args():
    settings = replace(get_settings("gpu", check_hardware=False), enforce_eager=False)
    cmd = server_command(settings, host="127.0.0.1", port=8000, api_key="k", extra_args=["--seed", "1"])
    joined = " ".join(cmd)
    assert f"--gpu-memory-utilization {settings.gpu_memory_utilization}" in joined
    assert f"--tensor-parallel-size {settings.tensor_parallel_size}" in joined
    assert "--enforce-eager" not in cmd
    assert cmd[-4:] == ["--api-key", "k", "--seed", "1"]


def test_server_error_is_a_course_error():
    assert issubclass(ServerError, CourseError) and issubclass(ServerError, RuntimeError)
    with pytest.raises(ServerError, match="port=None"):
        VLLMServer(get_settings("tiny", check_hardware=False), port=70000)


# -- the shared real server ------------------------------------------------------------------
@pytest.mark.vllm
def test_start_health_and_properties(shared_server):
    assert shared_server.is_running()
    assert shared_server.base_url == f"http://127.0.0.1:{shared_server.port}"
    assert shared_server.url_for("v1", "models") == f"{shared_server.base_url}/v1/models"
    assert shared_server.api_key == API_KEY
    assert shared_server.served_model_name == "tiny-qwen2"
    assert 0 < shared_server.startup_seconds < 180
    with urllib.request.urlopen(shared_server.url_for("health"), timeout=5) as response:
        assert response.status == 200
    assert shared_server.pid in running_server_pids()
    assert running_server_pids(port=shared_server.port) == [shared_server.pid]
    assert running_server_pids(log_path=shared_server.log_path) == [shared_server.pid]
    assert shared_server.log_path.is_file()
    assert "api_server" in shared_server.log_tail(200)
    # its own session: stopping the group cannot touch pytest
    assert os.getpgid(shared_server.pid) == shared_server.pid != os.getpgid(0)


@pytest.mark.vllm
def test_starting_again_reuses_the_live_server(shared_server, tiny_settings, capsys):
    again = start_server(tiny_settings, api_key=API_KEY)
    same_port = VLLMServer(tiny_settings, api_key=API_KEY, port=shared_server.port).start()
    out = capsys.readouterr().out
    assert again.pid == same_port.pid == shared_server.pid
    assert again.port == same_port.port == shared_server.port
    message = f"reusing the server already running on port {shared_server.port} (pid {shared_server.pid})"
    assert out.count(message) == 2
    assert servers_started_here() == [(shared_server.port, shared_server.pid)]


# -- failing before or during start-up -------------------------------------------------------
def test_busy_port_fails_fast_and_spawns_nothing(tiny_settings):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        before = set(running_server_pids())
        started = time.monotonic()
        with pytest.raises(ServerError) as info:
            VLLMServer(tiny_settings, port=port).start()
        assert time.monotonic() - started < 1.0
        spawned = set(running_server_pids()) - before
    message = str(info.value)
    assert f"Port {port}" in message
    for hint in ("port=None", "ss -ltnp", f"lsof -i :{port}", f"port={port + 1}"):
        assert hint in message
    assert f"pid {os.getpid()}" in message  # it names who holds the port
    assert not spawned and running_server_pids(port=port) == []


@pytest.mark.vllm
def test_invalid_model_path_fails_fast_with_the_log_tail(tiny_settings, tmp_path, capsys):
    port = new_port()
    settings = replace(tiny_settings, model_dir=tmp_path / "no-such-model")
    server = VLLMServer(settings, port=port, log_path=tmp_path / "bad.log")
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        server.start()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "exited with code" in message and "before it became healthy" in message
    assert "vLLM says:" in message and "no-such-model" in message
    assert f"lines of {tmp_path / 'bad.log'}" in message
    assert message.count("\n    ") >= 10  # the log tail, indented
    assert not server.is_running()
    assert running_server_pids(port=port) == []
    assert port not in [p for p, _ in servers_started_here()]


@pytest.mark.vllm
def test_ctrl_c_during_startup_leaves_no_process(tmp_path):
    port = new_port()
    script = tmp_path / "start.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {SRC!r})
        from helpers.server import start_server
        from helpers.settings import get_settings
        start_server(get_settings("tiny"), port={port}, log_path={str(tmp_path / 'ctrl-c.log')!r})
        print("UNEXPECTED: server ready")
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: running_server_pids(port=port), timeout=30), "the server never spawned"
        server_pids = running_server_pids(port=port)
        time.sleep(3)  # vLLM is importing/loading: the middle of start-up
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGINT, out  # the KeyboardInterrupt propagated
    assert "KeyboardInterrupt" in out and "UNEXPECTED" not in out
    assert running_server_pids(port=port) == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in server_pids)


# -- lifecycle logic with a stub server (no model, sub-second) -------------------------------
def test_stub_lifecycle_stop_kills_the_whole_group(tiny_settings, tmp_path):
    port = new_port()
    # bash starts a background grandchild in the group, then becomes the stub server
    script = tmp_path / "group.sh"
    script.write_text(f"sleep 300 &\necho $! > {tmp_path / 'grandchild.pid'}\nexec \"$@\"\n")
    command = ["bash", str(script), *stub_command(tmp_path)]
    with VLLMServer(tiny_settings, port=port, command=command, progress=False) as server:
        assert server.is_running() and server.port == port
        grandchild = int((tmp_path / "grandchild.pid").read_text())
        assert os.getpgid(grandchild) == server.pid
        pid = server.pid
    assert not server.is_running()
    assert wait_until(lambda: not psutil.pid_exists(grandchild)
                      or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE, 5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    server.stop()  # idempotent


def test_an_exported_vllm_api_key_does_not_lock_a_server_started_without_a_key(tiny_settings, tmp_path,
                                                                                monkeypatch):
    """vLLM reads VLLM_API_KEY; a key exported for other servers must not reach this one."""
    monkeypatch.setenv("VLLM_API_KEY", "exported-in-the-shell")
    script = tmp_path / "env_stub.sh"
    script.write_text('echo "key in the server: ${VLLM_API_KEY:-none}"\nexec "$@"\n')
    command = ["bash", str(script), *stub_command(tmp_path)]
    with VLLMServer(tiny_settings, port=new_port(), command=command, progress=False) as server:
        assert wait_until(lambda: "key in the server" in server.log_tail(), 5)
        assert "key in the server: none" in server.log_tail()


def test_stub_different_config_on_same_port_replaces_the_old_server(tiny_settings, tmp_path, capsys):
    port = new_port()
    first = VLLMServer(tiny_settings, port=port, command=stub_command(tmp_path, "a")).start()
    second = VLLMServer(replace(tiny_settings, max_model_len=1024), port=port,
                        command=stub_command(tmp_path, "b")).start()
    try:
        out = capsys.readouterr().out
        assert f"stopping the server already running on port {port} (pid {first.pid})" in out
        assert "different configuration" in out
        assert not first.is_running() and second.is_running() and second.pid != first.pid
        assert second.port == port
    finally:
        second.stop()


def test_a_changed_configuration_of_the_same_model_replaces_the_old_server(tiny_settings, tmp_path, capsys):
    same_model = ("--model", str(tmp_path / "model"))
    first = VLLMServer(tiny_settings, command=stub_command(tmp_path, *same_model, "--max-model-len", "2048")).start()
    other = VLLMServer(tiny_settings, command=stub_command(tmp_path, "--model", str(tmp_path / "other"))).start()
    second = VLLMServer(tiny_settings, command=stub_command(tmp_path, *same_model, "--max-model-len", "1024")).start()
    try:
        out = capsys.readouterr().out
        assert f"stopping the server of the same model on port {first.port} (pid {first.pid})" in out
        assert "--max-model-len 2048 -> 1024" in out
        assert not first.is_running() and second.is_running() and other.is_running()
        kept = VLLMServer(tiny_settings, command=stub_command(tmp_path, *same_model, "--max-model-len", "512"),
                          exclusive=False).start()
        assert second.is_running() and kept.is_running()
        kept.stop()
    finally:
        second.stop()
        other.stop()


def test_stub_timeout_stops_the_server_and_shows_the_log(tiny_settings, tmp_path):
    port = new_port()
    command = [sys.executable, "-c", "import time; print('loading forever', flush=True); time.sleep(300)", "{port}"]
    server = VLLMServer(tiny_settings, port=port, command=command, timeout=1.5, progress=False)
    started = time.monotonic()
    with pytest.raises(ServerError, match="did not become healthy within 1.5 s") as info:
        server.start()
    assert time.monotonic() - started < 10
    assert "loading forever" in str(info.value)
    assert not server.is_running()


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_stub_server_dies_with_the_python_process(tmp_path, ending):
    """atexit (normal exit, kernel restart) and the parent-death signal (kill -9)."""
    port = new_port()
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {SRC!r})
        from helpers.server import start_server
        from helpers.settings import get_settings
        server = start_server(get_settings("tiny", check_hardware=False), port={port},
                              command={stub_command(tmp_path)!r}, progress=False)
        print(server.pid, flush=True)
        if {ending!r} == "sigkill":
            time.sleep(300)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        if ending == "sigkill":
            owner.kill()
        owner.wait(timeout=20)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert wait_until(lambda: not psutil.pid_exists(server_pid)
                      or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE, 10)
