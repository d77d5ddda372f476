"""``start`` and ``stop``: the launcher's actions, for the command line and notebook 06.

:func:`start` checks everything it can before anything runs (the ``.env``, a launcher
already running, the ports, the model folder), then :func:`launch` starts the supervisor
detached and :func:`start` waits until the services are ready, one progress line every
10 s. :func:`stop` asks the supervisor to stop (SIGTERM) and waits until every process of
the launcher is gone. Both print what they do; errors are :class:`~helpers.errors.CourseError` s
(a bad ``.env``: :class:`~helpers.errors.DeployError`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Mapping

from .. import process
from ..cli_args import course_command
from ..deploy import DeployConfig
from ..errors import ServerError
from ..ports import listener_of, port_is_free
from ..server_log import failure_report, last_info
from .plan import LOG_FOLDER, Plan, plan_from_config, run_dir_of, supervisor_command
from .report import LauncherStatus, status
from .state import FAILED, READY, lock_is_held, read_state, remove_state

PROG = course_command("helpers.launcher")
DEFAULT_ENV = "deploy/.env"
DEFAULT_WAIT_S = 600.0
PROGRESS_EVERY_S = 10.0
SUPERVISOR_START_S = 60.0    # Python start-up and imports, on a busy machine
SUPERVISOR_GRACE_S = 30.0    # the supervisor stops its services (vLLM: 12 s) before this

Out = Callable[[str], None]


def stop_hint(env_file: str | Path) -> str:
    return f"`{PROG} stop --env {env_file}`"


def _already_running(env_file: str | Path, run_dir: Path) -> str:
    supervisor = (read_state(run_dir) or {}).get("supervisor", {})
    who = f"supervisor pid {supervisor['pid']}" if supervisor.get("pid") else "its supervisor is starting"
    return (f"a launcher already runs for {env_file} ({who}, run folder {run_dir}): "
            f"`{PROG} status --env {env_file}` shows it, {stop_hint(env_file)} stops it.")


def _rotate_logs(folder: Path) -> None:
    """Keep the previous launch's logs as NAME.log.1; this launch starts fresh files."""
    for log in folder.glob("*.log"):
        os.replace(log, log.with_name(log.name + ".1"))


def launch(plan: Plan, *, env: Mapping[str, str] | None = None) -> process.Child:
    """Start the supervisor for ``plan``, detached; returns once it has written its state.

    ``env``: the supervisor's (and so the services') environment, default this process's.
    """
    folder = plan.folder
    if lock_is_held(folder):
        raise ServerError(_already_running(plan.env_file or folder, folder))
    remove_state(folder)  # a failed launch's record: this one replaces it
    (folder / LOG_FOLDER).mkdir(parents=True, exist_ok=True)
    _rotate_logs(folder / LOG_FOLDER)
    log = folder / LOG_FOLDER / "supervisor.log"
    child = process.spawn(supervisor_command(plan.save()), name="launcher supervisor", log_path=log, env=env,
                          grace=SUPERVISOR_GRACE_S, cwd=folder, detached=True)
    deadline = time.monotonic() + SUPERVISOR_START_S
    while time.monotonic() < deadline and child.alive():
        if (read_state(folder) or {}).get("supervisor", {}).get("group") == child.pgid:
            return child
        time.sleep(0.1)
    child.stop()
    raise ServerError(failure_report("the launcher's supervisor did not start.", log, lines=10))


def _check_ports(plan: Plan, env_file: str | Path) -> None:
    for spec in plan.services:
        if not port_is_free(spec.host, spec.port):
            holder = listener_of(spec.port)
            variable = f"{spec.name.upper()}_PORT"
            raise ServerError(f"{variable}={spec.port} on {spec.host} is already in use"
                              + (f" by {holder}" if holder else " by another program")
                              + f": stop that program (`kill PID`) or set another {variable} in {env_file}.")


def wait_until_ready(child: process.Child, plan: Plan, wait: float, out: Out) -> None:
    """Wait until every service is ready; on failure or timeout stop everything and raise."""
    folder, started = plan.folder, time.monotonic()
    next_note = started + PROGRESS_EVERY_S
    announced: set[str] = set()
    while True:
        state = read_state(folder) or {}
        services = state.get("services", {})
        for spec in plan.services:
            if services.get(spec.name, {}).get("state") == READY and spec.name not in announced:
                announced.add(spec.name)
                model = f" (model {spec.model})" if spec.model else ""
                out(f"{spec.name} is ready at {spec.url}{model} after {time.monotonic() - started:.0f} s")
        if len(announced) == len(plan.services):
            return
        if state.get("failure") or state.get("supervisor", {}).get("state") == FAILED or not child.alive():
            child.wait(SUPERVISOR_GRACE_S)  # it stops its services itself
            child.stop()
            state = read_state(folder) or {}
            raise ServerError(state.get("failure") or failure_report(
                "the launcher's supervisor stopped before the services were ready.",
                folder / LOG_FOLDER / "supervisor.log", lines=15))
        now = time.monotonic()
        pending = next(spec for spec in plan.services if spec.name not in announced)
        if now - started > wait:
            child.stop()
            raise ServerError(failure_report(
                f"{pending.name} was not ready within {wait:g} s, so the launcher was stopped. Wait longer with "
                f"--wait (a first start compiles and loads the model), or see why below.", pending.log))
        if now >= next_note:
            next_note += PROGRESS_EVERY_S
            doing = last_info(pending.log) or services.get(pending.name, {}).get("state", "starting")
            out(f"waiting for {pending.name} ({now - started:.0f} s): {doing}")
        time.sleep(0.5)


def start(env_file: str | Path = DEFAULT_ENV, *, gateway: bool = False, router: bool = False,
          wait: float = DEFAULT_WAIT_S, out: Out = print) -> LauncherStatus:
    """Start vLLM (and vLLM's router, the gateway) in the background as ``env_file`` says; wait until ready.

    ``wait=0`` returns as soon as the supervisor runs. Raises :class:`~helpers.errors.DeployError`
    for a bad ``.env`` and :class:`~helpers.errors.ServerError` when something is in the way
    or a service fails to start (after stopping everything this call started).
    """
    config = DeployConfig.from_env_file(env_file, check_hardware=True)
    plan = plan_from_config(config, env_file, gateway=gateway, router=router)
    if lock_is_held(plan.folder):
        raise ServerError(_already_running(env_file, plan.folder))
    _check_ports(plan, env_file)
    config.settings.ensure_model()
    child = launch(plan)
    supervisor = (read_state(plan.folder) or {}).get("supervisor", {})
    out(f"launcher started for {env_file}: supervisor pid {supervisor.get('pid')}, "
        f"logs in {plan.folder / LOG_FOLDER}")
    if wait > 0:
        try:
            wait_until_ready(child, plan, wait, out)
        except KeyboardInterrupt:
            out(f"stopped waiting (Ctrl+C); the launcher keeps starting in the background: "
                f"`{PROG} status --env {env_file}` shows it, {stop_hint(env_file)} stops it.")
            raise
    else:
        out(f"not waiting: `{PROG} status --env {env_file}` says when it is ready.")
    out(f"stop it with {stop_hint(env_file)}")
    return status(env_file)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def stop(env_file: str | Path = DEFAULT_ENV, *, out: Out = print) -> bool:
    """Stop the launcher of ``env_file`` and everything it runs; False if nothing was running."""
    folder = run_dir_of(env_file)
    running = lock_is_held(folder)
    state = read_state(folder)
    if running and state is None:  # a supervisor that is just starting: its state comes in a moment
        deadline = time.monotonic() + SUPERVISOR_START_S
        while state is None and lock_is_held(folder) and time.monotonic() < deadline:
            time.sleep(0.1)
            state = read_state(folder)
        running = lock_is_held(folder)
    if not running:
        if state is None:
            out(f"nothing is running for {env_file} (no launcher state in {folder})")
        else:
            how = "failed" if state.get("failure") else "was killed before it could clean up"
            remove_state(folder)
            out(f"nothing is running for {env_file}; removed the state of a launcher that {how} (see "
                f"`{PROG} logs --env {env_file}`)")
        return False
    supervisor, services = state.get("supervisor", {}), state.get("services", {})
    def described(name: str, info: dict) -> str:
        return f"{name} (pid {info['pid']})" if info.get("pid") else f"{name} ({info.get('state', 'not running')})"

    names = ", ".join(described(name, info) for name, info in services.items() if info.get("group"))
    out(f"stopping the launcher for {env_file}: supervisor pid {supervisor.get('pid')}"
        + (f", {names}" if names else ""))
    group = supervisor.get("group")
    if group and _pgid(supervisor.get("pid", 0)) == group:  # still that supervisor's group: ours to stop
        process.stop_group(group, grace=SUPERVISOR_GRACE_S)
    leftovers = [info["group"] for info in services.values() if info.get("group")]
    for leftover in leftovers:  # normally gone already: the supervisor (or its guards) stopped them
        process.stop_group(leftover, grace=5.0)
    remove_state(folder)
    ports = ", ".join(str(info.get("port")) for info in services.values())
    out(f"stopped: the supervisor and {len(services)} service(s); port(s) {ports} free"
        if all(port_is_free(info.get("host", "127.0.0.1"), info["port"]) for info in services.values())
        else f"stopped the launcher, but port(s) {ports} are still in use: see `ss -ltnp`")
    return True
