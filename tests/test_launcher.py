"""helpers.launcher: start/stop/status/logs, restarts with backoff, surviving its caller, no orphans.

The supervisor is generic over a plan of services, so most tests supervise small real
servers (``helpers.instant_upstream``, a script that crashes on purpose) and run in seconds;
the last test starts the real vLLM (tiny model) through ``start --gateway`` (marked ``vllm``).
Every process a test starts carries ``COURSE_FAULT_ROW=<tag>`` in its environment (see
tests/faults.py), so processes left behind are found even after they were re-parented.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from faults import MARK, Kernel, marked
from helpers import process
from helpers.instant_upstream import InstantUpstream
from helpers.deploy import DeployConfig
from helpers.errors import DeployError
from helpers.launcher import Plan, ServiceSpec, launch, plan_from_config
from helpers.launcher.state import read_state
from helpers.ports import free_port, port_is_free
from server_fixtures import listening, wait_until

REPO = Path(__file__).resolve().parents[1]
PROG = ".venv/bin/python -m helpers.launcher"
BOUND_S = 40.0

#: ``crasher.py PORT MODEL COUNTER CRASHES``: serves ``/v1/models`` like vLLM; in each of its first
#: CRASHES runs (all of them if CRASHES < 0) it exits with code 3 right after its first answer.
CRASHER = textwrap.dedent("""\
    import http.server, json, os, sys
    port, model, counter, crashes = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(counter, "a") as f:
        f.write("start\\n")
    runs = len(open(counter).read().splitlines())
    crash = crashes < 0 or runs <= crashes

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": model}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if crash:
                print(f"run {runs}: crashing on purpose after one answer", flush=True)
                os._exit(3)

        def log_message(self, *args):
            pass

    print(f"run {runs}: listening", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture
def tag():
    """A marker for this test's processes; the test fails if any is left, and they are killed."""
    value = uuid.uuid4().hex[:12]
    yield value
    left = marked(value)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes left behind: {left}"


def marked_env(tag: str) -> dict[str, str]:
    src = str(REPO / "src")
    return {**os.environ, MARK: tag, "PYTHONPATH": os.pathsep.join(filter(None, (src, os.environ.get("PYTHONPATH"))))}


def write_env(folder: Path, **values: object) -> Path:
    settings = {"COURSE_PROFILE": "tiny", "MODEL_NAME": "course/tiny-qwen2", "VLLM_PORT": free_port(),
                "GATEWAY_PORT": free_port(), "RUN_DIR": "run", **values}
    path = folder / ".env"
    path.write_text("".join(f"{name}={value}\n" for name, value in settings.items()), encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers.launcher", *args], capture_output=True, text=True,
                          env=env or marked_env("none"), cwd=REPO, timeout=timeout)


def instant(folder: Path, name: str = "vllm", port: int | None = None) -> ServiceSpec:
    port = port or free_port()
    return ServiceSpec(name=name, argv=[sys.executable, "-m", "helpers.instant_upstream", "--port", str(port)],
                       env={}, host="127.0.0.1", port=port, log=str(folder / "run" / "logs" / f"{name}.log"),
                       ready_path="/v1/models", model="instant", health_paths=["/health", "/v1/models"],
                       ready_timeout_s=60, grace_s=5)


def crasher(folder: Path, crashes: int, name: str = "vllm") -> ServiceSpec:
    script = folder / "crasher.py"
    script.write_text(CRASHER, encoding="utf-8")
    port = free_port()
    return ServiceSpec(name=name, argv=[sys.executable, str(script), str(port), "crashy", str(folder / "runs.txt"),
                                        str(crashes)],
                       env={}, host="127.0.0.1", port=port, log=str(folder / "run" / "logs" / f"{name}.log"),
                       ready_path="/v1/models", model="crashy", ready_timeout_s=60, grace_s=5)


def plan_for(env_file: Path, *services: ServiceSpec, restart_limit: int = 5, backoff_s: float = 0.2) -> Plan:
    return Plan(run_dir=str(env_file.parent / "run"), services=list(services), restart_limit=restart_limit,
                backoff_s=backoff_s, env_file=str(env_file))


def state_of(env_file: Path) -> dict:
    return read_state(env_file.parent / "run") or {}


def service_state(env_file: Path, name: str) -> str | None:
    return state_of(env_file).get("services", {}).get(name, {}).get("state")


def answers(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def one_error_line(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- the process layer's detached children ---------------------------------------------------------
def test_a_detached_child_is_not_registered_and_stop_group_ends_it(tmp_path, tag):
    log = tmp_path / "sleeper.log"
    log.write_text("an earlier run\n")
    child = process.spawn([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
                          name="sleeper", log_path=log, env=marked_env(tag), header="second run", append=True,
                          detached=True)
    assert wait_until(lambda: "up" in log.read_text(), 30)
    # not registered, so stop_all() (what interpreter exit runs) never sees it; calling stop_all()
    # here would also stop the session's shared vLLM server, which this process owns
    assert child.pid not in [c.pid for c in process.live_children()] and child.pid not in process._CHILDREN
    assert child.alive() and marked(tag)
    assert process.stop_group(child.pgid, grace=5)
    assert not marked(tag)
    assert log.read_text().splitlines()[:3] == ["an earlier run", "second run", "up"]
    child.wait(5)


# -- bad input: one line, exit 2 ----------------------------------------------------------------------
@pytest.mark.parametrize("lines, expected", [
    ("VLLM_PORT=abc", "VLLM_PORT='abc' is not valid: expected a port number 1-65535, e.g. 8000."),
    ("VLLM_PORT=8000\nMAX_MODEL_LENN=2048", "MAX_MODEL_LENN is not a variable the course knows. Did you mean MAX_MODEL_LEN?"),
    ("VLLM_PORT=8000\nexport RESTART_LIMIT=3", "write `NAME=value` without `export`"),
])
def test_a_bad_env_file_exits_2_with_one_line_naming_the_variable(tmp_path, lines, expected):
    env_file = tmp_path / ".env"
    env_file.write_text(f"COURSE_PROFILE=tiny\nMODEL_NAME=course/tiny-qwen2\n{lines}\n")
    message = one_error_line(cli("start", "--env", str(env_file)), 2)
    assert message.startswith(f"{PROG}: {env_file}") and expected in message
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_a_missing_env_file_and_a_bad_option_exit_2(tmp_path):
    missing = tmp_path / "nowhere" / ".env"
    assert "copy deploy/.env.example" in one_error_line(cli("status", "--env", str(missing)), 2)
    assert "-1.0 is not a valid wait: use a number >= 0" in one_error_line(cli("start", "--wait", "-1"), 2)


def test_a_missing_model_folder_exits_1_with_one_line_and_starts_nothing(tmp_path, tag):
    env_file = write_env(tmp_path, COURSE_PROFILE="cpu", MODEL_NAME="Qwen/Qwen2.5-0.5B-Instruct",
                         MODEL_DIR=tmp_path / "no-model")
    message = one_error_line(cli("start", "--env", str(env_file), env=marked_env(tag)), 1)
    assert f"Model directory {tmp_path / 'no-model'} does not exist" in message
    assert "`.venv/bin/python -m helpers.download " in message and not marked(tag)


# -- nothing running -----------------------------------------------------------------------------------
def test_stop_and_status_with_nothing_running(tmp_path):
    env_file = write_env(tmp_path)
    done = cli("stop", "--env", str(env_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"nothing is running for {env_file} (no launcher state in {tmp_path / 'run'})"
    done = cli("status", "--env", str(env_file))
    assert done.returncode == 3 and "not running" in done.stdout
    assert one_error_line(cli("logs", "--env", str(env_file)), 1).startswith(f"{PROG}: no log in ")


# -- refusing to start ----------------------------------------------------------------------------------
def test_start_refuses_a_taken_port_and_names_its_holder(tmp_path, tag):
    with InstantUpstream() as holder:
        env_file = write_env(tmp_path, VLLM_PORT=holder.port)
        message = one_error_line(cli("start", "--env", str(env_file), env=marked_env(tag)), 1)
        holder_pid = next(pid for pid in process.group_members(holder.child.pgid) if pid != holder.child.pid)
    assert f"VLLM_PORT={holder.port} on 127.0.0.1 is already in use by pid {holder_pid}" in message
    assert "helpers.instant_upstream" in message and f"set another VLLM_PORT in {env_file}" in message
    assert not marked(tag) and state_of(env_file) == {}


def test_start_refuses_when_a_launcher_already_runs(tmp_path, tag):
    env_file = write_env(tmp_path)
    launch(plan_for(env_file, instant(tmp_path)), env=marked_env(tag))
    try:
        pid = state_of(env_file)["supervisor"]["pid"]
        message = one_error_line(cli("start", "--env", str(env_file)), 1)
        assert f"a launcher already runs for {env_file} (supervisor pid {pid}" in message
        assert f"{PROG} stop --env {env_file}" in message
    finally:
        assert cli("stop", "--env", str(env_file)).returncode == 0


# -- supervising ----------------------------------------------------------------------------------------
def test_the_plan_of_an_env_file(tmp_path):
    env_file = write_env(tmp_path, VLLM_API_KEY="k1", RESTART_LIMIT=3, RUN_DIR="state/here")
    config = DeployConfig.from_env_file(env_file, check_hardware=False)
    plan = plan_from_config(config, env_file, gateway=True)
    vllm, gateway = plan.services
    assert plan.run_dir == str(tmp_path / "state" / "here") and plan.restart_limit == 3
    assert vllm.argv == config.vllm_command() and vllm.env["VLLM_API_KEY"] == "k1" and vllm.api_key == "k1"
    assert (vllm.ready_path, vllm.model, vllm.log) == ("/v1/models", "tiny-qwen2", f"{plan.run_dir}/logs/vllm.log")
    assert gateway.argv == config.gateway_command() and gateway.ready_path == "/health"
    assert "k1" not in vllm.header and '"$VLLM_API_KEY"' in vllm.header
    assert Plan.from_json(plan.to_json()) == plan
    without_key = plan_from_config(DeployConfig.from_env_file(write_env(tmp_path), check_hardware=False), env_file)
    assert without_key.services[0].env["VLLM_API_KEY"] is None and len(without_key.services) == 1


def test_the_router_goes_between_vllm_and_the_gateway(tmp_path):
    from vllm_router.launch_router import parse_router_args

    env_file = write_env(tmp_path, ROUTER_POLICY="round_robin", ROUTER_WORKERS="http://10.0.0.2:8000 http://10.0.0.3:8000")
    config = DeployConfig.from_env_file(env_file, check_hardware=False)
    vllm, router, gateway = plan_from_config(config, env_file, gateway=True, router=True).services
    parsed = parse_router_args(router.argv[3:])
    assert parsed.worker_urls == [config.vllm_url, "http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    assert parsed.policy == "round_robin" and router.port == config.service["ROUTER_PORT"]
    assert gateway.argv[gateway.argv.index("--upstream") + 1] == config.router_url
    with pytest.raises(DeployError, match="ROUTER_WORKERS='10.0.0.2:8000' is not valid: expected vLLM servers"):
        DeployConfig.from_env_file(write_env(tmp_path, ROUTER_WORKERS="10.0.0.2:8000"), check_hardware=False)
    with pytest.raises(DeployError, match="ROUTER_POLICY='fastest' is not valid"):
        DeployConfig.from_env_file(write_env(tmp_path, ROUTER_POLICY="fastest"), check_hardware=False)


def test_status_logs_and_stop_of_a_running_launcher(tmp_path, tag):
    env_file = write_env(tmp_path)
    spec = replace(instant(tmp_path), env={"VLLM_API_KEY": None, "COURSE_EXTRA": "yes"})
    launch(plan_for(env_file, spec), env={**marked_env(tag), "VLLM_API_KEY": "exported-in-the-shell",
                                          "PYTHONUNBUFFERED": "", "VLLM_LOGGING_CONFIG_PATH": "/tmp/kernel-log.json"})
    assert wait_until(lambda: service_state(env_file, "vllm") == "ready", 60)
    environ = Path(f"/proc/{state_of(env_file)['services']['vllm']['pid']}/environ").read_bytes().split(b"\0")
    assert b"COURSE_EXTRA=yes" in environ and not any(v.startswith(b"VLLM_API_KEY=") for v in environ)
    # log lines reach the file as written (a SIGKILLed vLLM loses a buffer), in the service's own log
    assert b"PYTHONUNBUFFERED=1" in environ and not any(v.startswith(b"VLLM_LOGGING_CONFIG_PATH=") for v in environ)
    done = cli("status", "--env", str(env_file))
    assert done.returncode == 0, done.stdout
    assert "running, ready" in done.stdout and "/health 200, /v1/models lists instant" in done.stdout
    done = cli("logs", "--env", str(env_file), "--service", "supervisor", "-n", "5")
    assert done.returncode == 0 and "vllm ready at " + spec.url in done.stdout
    stopped = cli("stop", "--env", str(env_file))
    assert stopped.returncode == 0 and "stopping the launcher" in stopped.stdout, stopped.stderr
    assert not marked(tag) and port_is_free("127.0.0.1", spec.port) and state_of(env_file) == {}
    assert cli("status", "--env", str(env_file)).returncode == 3


def test_a_crashed_service_is_restarted_with_backoff_and_counted(tmp_path, tag):
    env_file = write_env(tmp_path)
    spec = crasher(tmp_path, crashes=2)
    launch(plan_for(env_file, spec, restart_limit=5, backoff_s=0.2), env=marked_env(tag))
    try:
        assert wait_until(lambda: (tmp_path / "runs.txt").exists()
                          and len((tmp_path / "runs.txt").read_text().splitlines()) == 3
                          and service_state(env_file, "vllm") == "ready", 90)
        service = state_of(env_file)["services"]["vllm"]
        assert service["restarts"] == 2 and service["last_exit_code"] == 3
        supervisor_log = (tmp_path / "run" / "logs" / "supervisor.log").read_text()
        assert "vllm exited with code 3; restart 1 of 5 in 0.2 s" in supervisor_log
        assert "vllm exited with code 3; restart 2 of 5 in 0.4 s" in supervisor_log
        log = (tmp_path / "run" / "logs" / "vllm.log").read_text()  # appended: every run is in it
        assert log.count("crashing on purpose") == 2 and "run 3: listening" in log
        assert cli("status", "--env", str(env_file)).returncode == 0
    finally:
        assert cli("stop", "--env", str(env_file)).returncode == 0


def test_past_the_restart_limit_everything_stops_and_the_failure_is_kept(tmp_path, tag):
    env_file = write_env(tmp_path)
    first, crashing = instant(tmp_path, name="vllm"), crasher(tmp_path, crashes=-1, name="gateway")
    child = launch(plan_for(env_file, first, crashing, restart_limit=2, backoff_s=0.1), env=marked_env(tag))
    assert child.wait(BOUND_S) == 1  # the supervisor gave up
    state = state_of(env_file)
    assert state["supervisor"]["state"] == "failed"
    assert state["services"]["gateway"]["state"] == "failed" and state["services"]["gateway"]["restarts"] == 2
    assert state["services"]["vllm"]["state"] == "stopped"
    assert "RESTART_LIMIT=2" in state["failure"] and "crashing on purpose" in state["failure"]
    assert not marked(tag) and not listening(first.port)
    done = cli("status", "--env", str(env_file))
    assert done.returncode == 3 and "the last launch failed" in done.stdout and "RESTART_LIMIT=2" in done.stdout
    done = cli("stop", "--env", str(env_file))
    assert done.returncode == 0 and "removed the state of a launcher that failed" in done.stdout
    assert state_of(env_file) == {}


def test_a_service_that_fails_before_it_was_ever_ready_is_not_restarted(tmp_path, tag):
    env_file = write_env(tmp_path)
    broken = ServiceSpec(name="vllm", argv=[sys.executable, "-c", "print('unrecognized argument --bogus'); exit(2)"],
                         env={}, host="127.0.0.1", port=free_port(), log=str(tmp_path / "run" / "logs" / "vllm.log"))
    child = launch(plan_for(env_file, broken, restart_limit=5), env=marked_env(tag))
    assert child.wait(BOUND_S) == 1
    state = state_of(env_file)
    assert state["services"]["vllm"]["restarts"] == 0 and state["services"]["vllm"]["last_exit_code"] == 2
    assert "before it was ever ready" in state["failure"] and "unrecognized argument --bogus" in state["failure"]


def test_a_killed_supervisor_takes_its_services_along_and_status_cleans_up(tmp_path, tag):
    env_file = write_env(tmp_path)
    spec = instant(tmp_path)
    launch(plan_for(env_file, spec), env=marked_env(tag))
    assert wait_until(lambda: service_state(env_file, "vllm") == "ready", 60)
    os.kill(state_of(env_file)["supervisor"]["pid"], signal.SIGKILL)
    assert wait_until(lambda: not marked(tag), BOUND_S), marked(tag)
    assert not listening(spec.port)
    done = cli("status", "--env", str(env_file))
    assert done.returncode == 3 and "stale state" in done.stdout, done.stdout
    assert state_of(env_file) == {}


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_the_launcher_survives_the_process_that_started_it(tmp_path, tag, ending):
    env_file = write_env(tmp_path)
    plan = plan_for(env_file, instant(tmp_path))
    script = textwrap.dedent(f"""\
        import time
        from helpers.launcher import Plan, launch
        launch(Plan.from_json({plan.to_json()!r}))
        print("launched", flush=True)
        {"time.sleep(600)" if ending == "sigkill" else ""}
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=marked_env(tag))
    try:
        assert parent.stdout.readline().strip() == "launched"
        if ending == "sigkill":
            parent.kill()
        assert parent.wait(30) == (-signal.SIGKILL if ending == "sigkill" else 0)
        assert wait_until(lambda: service_state(env_file, "vllm") == "ready", 60)
        assert answers(plan.services[0].url + "/v1/models")
        assert cli("status", "--env", str(env_file)).returncode == 0
    finally:
        parent.kill()
        assert cli("stop", "--env", str(env_file)).returncode == 0
    assert not marked(tag)


def test_the_launcher_survives_the_notebook_kernel_that_started_it(tmp_path, tag):
    env_file = write_env(tmp_path)
    plan = plan_for(env_file, instant(tmp_path))
    kernel = Kernel(marked_env(tag))
    try:
        kernel.run(f"from helpers.launcher import Plan, launch\nlaunch(Plan.from_json({plan.to_json()!r}))\n"
                   "print('launched', flush=True)")
        assert wait_until(lambda: kernel.said("^launched$"), 60), kernel.lines
    finally:
        kernel.finish()  # the learner closes the notebook: the kernel shuts down
    try:
        assert kernel.popen.poll() is not None
        assert wait_until(lambda: service_state(env_file, "vllm") == "ready", 60)
        os.kill(state_of(env_file)["services"]["vllm"]["pid"], signal.SIGKILL)  # the supervisor still acts:
        assert wait_until(lambda: state_of(env_file).get("services", {}).get("vllm", {}).get("restarts") == 1
                          and service_state(env_file, "vllm") == "ready", 60), state_of(env_file)
        assert answers(plan.services[0].url + "/v1/models")
    finally:
        assert cli("stop", "--env", str(env_file)).returncode == 0
    assert not marked(tag)


def test_logs_follow_prints_new_lines_until_ctrl_c(tmp_path, tag):
    env_file = write_env(tmp_path)
    log = tmp_path / "run" / "logs" / "vllm.log"
    log.parent.mkdir(parents=True)
    log.write_text("old line\n")
    follower = subprocess.Popen([sys.executable, "-m", "helpers.launcher", "logs", "--env", str(env_file),
                                 "--service", "vllm", "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**marked_env(tag), "PYTHONUNBUFFERED": "1"}, cwd=REPO)
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [printed.put(line.strip()) for line in follower.stdout], daemon=True).start()
    try:
        assert printed.get(timeout=60) == "old line"
        with open(log, "a") as f:  # written right after the tail was shown: followed, not skipped
            f.write("new line\npartial")
        assert printed.get(timeout=60) == "new line"
        with open(log, "a") as f:
            f.write(" line completed\n")
        assert printed.get(timeout=60) == "partial line completed"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(30) == 130
        assert follower.stderr.read().strip() == f"{PROG}: stopped following the logs (Ctrl+C)"
    finally:
        follower.kill()


# -- the real thing -----------------------------------------------------------------------------------
@pytest.mark.vllm
def test_start_status_requests_logs_stop_with_real_vllm_router_and_gateway(tmp_path, tag, tiny_model_dir):
    from helpers.server import running_server_pids

    env_file = write_env(tmp_path, VLLM_API_KEY="launcher-test-key", ROUTER_PORT=free_port(),
                         ROUTER_METRICS_PORT=free_port())
    started = cli("start", "--env", str(env_file), "--gateway", "--router", "--wait", "600", env=marked_env(tag),
                  timeout=700)
    assert started.returncode == 0, started.stdout + started.stderr
    assert all(f"{name} is ready at" in started.stdout for name in ("vllm", "router", "gateway"))
    try:
        done = cli("status", "--env", str(env_file))
        assert done.returncode == 0, done.stdout
        assert "/v1/models lists tiny-qwen2" in done.stdout
        state = state_of(env_file)["services"]
        body = json.dumps({"model": "tiny-qwen2", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}).encode()
        for url, key in ((state["vllm"]["url"], "launcher-test-key"), (state["gateway"]["url"], "")):
            request = urllib.request.Request(url + "/v1/completions", data=body,
                                             headers={"Content-Type": "application/json",
                                                      **({"Authorization": f"Bearer {key}"} if key else {})})
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=120) as response:
                assert json.loads(response.read())["usage"]["completion_tokens"] == 4
        done = cli("logs", "--env", str(env_file), "--service", "vllm", "-n", "200")
        assert done.returncode == 0 and "the launcher starts vllm (run 1)" in done.stdout and "INFO" in done.stdout
    finally:
        stopped = cli("stop", "--env", str(env_file), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not marked(tag)
    assert running_server_pids(port=state["vllm"]["port"]) == []
    assert all(port_is_free("127.0.0.1", state[name]["port"]) for name in ("vllm", "router", "gateway"))
