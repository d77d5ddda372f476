"""helpers.server: command line, start/health/stop, reuse, busy port, failures, Ctrl-C, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request

import psutil
import pytest

from helpers.errors import ServerError
from helpers.server import (
    API_SERVER_MODULE,
    option_values,
    VLLMServer,
    running_server_pids,
    server_command,
    servers_started_here,
)
from helpers.settings import get_settings, replace

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import API_KEY, listening, new_port, shared_server_options, stub_command, wait_until  # noqa: E402

pytest_plugins = ["server_fixtures"]

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# -- the command line (no server) ------------------------------------------------------------
def test_server_command_tiny_profile():
    settings = get_settings("tiny", check_hardware=False)
    cmd = server_command(settings, host="127.0.0.1", port=8123)
    assert cmd[:3] == [sys.executable, "-m", API_SERVER_MODULE]
    options = option_values(cmd[3:])
    assert options["--model"] == str(settings.model_dir)
    assert options["--served-model-name"] == settings.served_model_name
    assert options["--dtype"] == settings.dtype
    assert options["--max-model-len"] == str(settings.max_model_len)
    assert options["--port"] == "8123" and options["--host"] == "127.0.0.1"
    assert options["--distributed-executor-backend"] == "uni"
    assert "--enforce-eager" in cmd
    assert "--gpu-memory-utilization" not in cmd and "--tensor-parallel-size" not in cmd
    assert "--api-key" not in cmd


def test_server_command_gpu_profile_key_and_extra_args():
    settings = replace(get_settings("gpu", check_hardware=False), enforce_eager=False)
    cmd = server_command(settings, host="127.0.0.1", port=8000, api_key="k", extra_args=["--seed", "1"])
    joined = " ".join(cmd)
    assert f"--gpu-memory-utilization {settings.gpu_memory_utilization}" in joined
    assert f"--tensor-parallel-size {settings.tensor_parallel_size}" in joined
    assert "--enforce-eager" not in cmd and "--no-enforce-eager" in cmd
    assert cmd[-4:] == ["--api-key", "k", "--seed", "1"]


@pytest.mark.parametrize("profile", ["tiny", "smol", "cpu", "gpu"])
def test_server_and_llm_get_the_same_engine_arguments(profile):
    """vLLM's own parser reads the server command into the EngineArgs that LLM(**llm_kwargs()) builds."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    settings = get_settings(profile, check_hardware=False)
    kwargs = settings.llm_kwargs()
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(server_command(settings, port=8000)[3:])
    from_cli, from_kwargs = AsyncEngineArgs.from_cli_args(parsed), AsyncEngineArgs(**kwargs)
    for name in kwargs:
        cli_value, kwarg_value = getattr(from_cli, name), getattr(from_kwargs, name)
        if name == "served_model_name":
            cli_value = cli_value[0] if isinstance(cli_value, list) and len(cli_value) == 1 else cli_value
        assert cli_value == kwarg_value, f"{name}: server {cli_value!r} != LLM {kwarg_value!r}"


def test_a_port_outside_the_tcp_range_is_refused():
    with pytest.raises(ServerError, match="port=None"):
        VLLMServer(get_settings("tiny", check_hardware=False), port=70000)


# -- the shared real server ------------------------------------------------------------------
@pytest.mark.vllm
def test_start_health_and_properties(shared_server):
    assert shared_server.is_running() and shared_server.owns_process
    assert shared_server.base_url == f"http://127.0.0.1:{shared_server.port}"
    assert shared_server.url_for("v1", "models") == f"{shared_server.base_url}/v1/models"
    assert shared_server.api_key == API_KEY
    assert shared_server.served_model_name == "tiny-qwen2"
    assert shared_server.startup_seconds is not None
    with urllib.request.urlopen(shared_server.url_for("health"), timeout=5) as response:
        assert response.status == 200
    (api_server,) = running_server_pids(port=shared_server.port)
    assert api_server in running_server_pids()
    # its own session, led by the guard: stopping the group cannot touch pytest
    assert os.getpgid(api_server) == shared_server.pid == os.getsid(shared_server.pid) != os.getpgid(0)
    # the command line heads the log (its tail may be access lines of the tests that used the server)
    assert shared_server.log_path.is_file() and "api_server" in shared_server.log_path.read_text(errors="replace")[:4000]
    assert shared_server.log_tail(5)


@pytest.mark.vllm
def test_a_with_block_borrows_the_live_server_and_leaves_it_to_its_owner(shared_server, tiny_settings, capsys):
    with VLLMServer(tiny_settings, **shared_server_options(tiny_settings)) as borrowed:
        assert borrowed.pid == shared_server.pid and not borrowed.owns_process
    assert f"using the server already running on port {shared_server.port}" in capsys.readouterr().out
    assert shared_server.is_running() and shared_server.owns_process
    assert servers_started_here() == [(shared_server.port, shared_server.pid)]


# -- failing before or during start-up -------------------------------------------------------
def test_busy_port_fails_fast_and_spawns_nothing(tiny_settings):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        before = set(running_server_pids())
        with pytest.raises(ServerError) as info:
            VLLMServer(tiny_settings, port=port).start()
        spawned = set(running_server_pids()) - before
    message = str(info.value)
    assert f"Port {port}" in message
    for hint in ("port=None", "ss -ltnp", f"lsof -i :{port}", f"port={port + 1}"):
        assert hint in message
    assert f"pid {os.getpid()}" in message  # it names who holds the port
    assert not spawned and running_server_pids(port=port) == []
    assert port not in dict(servers_started_here())


@pytest.mark.vllm
def test_invalid_model_path_fails_fast_with_the_log_tail(tiny_settings, tmp_path, capsys):
    port = new_port()
    settings = replace(tiny_settings, model_dir=tmp_path / "no-such-model")
    server = VLLMServer(settings, port=port, log_path=tmp_path / "bad.log")
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
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
    log = tmp_path / "ctrl-c.log"
    script = tmp_path / "start.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {SRC!r})
        from helpers.server import start_server
        from helpers.settings import get_settings
        start_server(get_settings("tiny"), port={port}, log_path={str(log)!r})
        print("UNEXPECTED: server ready")
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        # the middle of start-up: vLLM has written its first lines (imports done, engine starting)
        assert wait_until(lambda: log.is_file() and len(log.read_text(errors="replace").splitlines()) >= 3,
                          timeout=60), "the server never wrote to its log"
        server_pids = running_server_pids(port=port)
        assert server_pids, "the server is not running"
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
    with pytest.raises(ServerError, match="did not become healthy within 1.5 s") as info:
        server.start()
    assert "loading forever" in str(info.value)
    assert not server.is_running()


@pytest.mark.parametrize("ending", ["exit", "sigkill", "sigkill-after-thread"])
def test_stub_server_dies_with_the_python_process(tmp_path, ending):
    """atexit (normal exit, kernel restart) and the guard (kill -9), also when a worker thread
    that started the server has ended (Linux's parent-death signal follows the thread)."""
    port = new_port()
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""\
        import sys, threading, time
        sys.path.insert(0, {SRC!r})
        from helpers.server import start_server
        from helpers.settings import get_settings
        servers = []
        start = lambda: servers.append(start_server(get_settings("tiny", check_hardware=False), port={port},
                                                    command={stub_command(tmp_path)!r}, progress=False))
        if {ending!r} == "sigkill-after-thread":
            thread = threading.Thread(target=start)
            thread.start()
            thread.join()
        else:
            start()
        print(servers[0].pid, flush=True)
        if {ending!r} != "exit":
            print("serving" if servers[0].is_running() else "DIED", flush=True)
            time.sleep(300)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        if ending != "exit":
            assert owner.stdout.readline().strip() == "serving"
            assert listening(port)
            owner.kill()
        owner.wait(timeout=20)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert wait_until(lambda: not psutil.pid_exists(server_pid)
                      or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE, 10)
    assert wait_until(lambda: not listening(port), 10)


def test_ready_means_the_expected_model_is_listed(tiny_settings, tmp_path):
    """A server on that port that answers /health but serves another model is not ours."""
    command = stub_command(tmp_path, name="somebody-elses-model")
    server = VLLMServer(tiny_settings, port=new_port(), command=command, timeout=2, progress=False)
    with pytest.raises(ServerError, match=f"never listed '{tiny_settings.served_model_name}'") as info:
        server.start()
    assert "stub listening" in str(info.value)  # it did run and answer: the model name decided
    assert not server.is_running() and server.port not in dict(servers_started_here())


def test_one_owner_per_process_start_adopts_and_with_borrows(tiny_settings, tmp_path, capsys):
    command = stub_command(tmp_path)
    first, rerun = VLLMServer(tiny_settings, command=command).start(), None
    try:
        with VLLMServer(tiny_settings, command=command) as borrowed:   # borrows: leaves it running
            assert borrowed.pid == first.pid and not borrowed.owns_process
        assert first.is_running() and first.owns_process

        rerun = VLLMServer(tiny_settings, command=command).start()     # a re-run cell adopts it
        assert rerun.pid == first.pid and rerun.owns_process and not first.owns_process
        capsys.readouterr()
        first.stop()                                                   # the old object no longer stops it
        assert "a newer VLLMServer adopted it" in capsys.readouterr().out
        assert rerun.is_running() and (rerun.port, rerun.pid) in servers_started_here()
        rerun.stop()                                                   # the owner does
        assert not rerun.is_running() and not rerun.owns_process
        assert rerun.port not in dict(servers_started_here())
        assert rerun.port == first.port and rerun.log_path.is_file()   # still there to read after the stop
    finally:
        for server in (rerun, first):
            if server is not None:
                server.stop()
