"""The supervisor: starts a plan's services, restarts the ones that crash, stops them all (notebook 06).

``python -m helpers.launcher supervise PLAN.json`` runs detached from whoever started it
(:func:`helpers.process.spawn` with ``detached=True``), so closing the notebook or terminal
does not stop it. Each service is an ordinary :func:`helpers.process.spawn` child: its guard
watches the *supervisor*, so if the supervisor dies, even by SIGKILL, the services go too.

The rules, one loop every 0.2 s:

* services start in plan order, each once every service before it has been ready;
* ready = the readiness check of :mod:`.probes` passes; a service not ready within its
  ``ready_timeout_s`` is stopped and counts as a crash;
* a service that exits **before it was ever ready** is a start-up failure (a bad flag, too
  little memory): restarting cannot fix it, so the launcher gives up at once and says why;
* a service that exits after it was ready is restarted after 2, 4, 8 ... s (capped at 60 s),
  up to ``restart_limit`` times in a row; one that then stays ready for :data:`STABLE_S`
  seconds starts a fresh count. Past the limit, everything is stopped and the state file
  keeps the failure and the log's tail;
* SIGTERM, SIGINT or SIGHUP: stop every service (SIGTERM to its group, SIGKILL after its
  grace), remove the state file, exit 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import process
from ..server_log import failure_report
from .plan import Plan, ServiceSpec
from .probes import is_ready
from .state import (FAILED, READY, RESTARTING, RUNNING, STARTING, STOPPED, STOPPING, WAITING, remove_state,
                    take_lock, write_state)

POLL_S = 0.2
STABLE_S = 300.0


def say(text: str) -> None:
    """One timestamped line in the supervisor's log (its stdout)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)


@dataclass
class Service:
    """A spec and what happened to it so far."""

    spec: ServiceSpec
    state: str = WAITING
    child: process.Child | None = None
    pid: int | None = None
    restarts: int = 0
    in_a_row: int = 0
    ever_ready: bool = False
    last_exit_code: int | None = None
    started_at: float = 0.0
    ready_at: float = 0.0
    ready_since: float = 0.0
    next_start_at: float = 0.0

    def command_pid(self) -> int | None:
        """The command's pid (the guard's child), once it exists."""
        if self.pid is None and self.child is not None and self.child.alive():
            import psutil

            try:
                children = psutil.Process(self.child.pid).children()
            except psutil.Error:
                return None
            self.pid = children[0].pid if children else None
        return self.pid


class Supervisor:
    """Runs one :class:`Plan` until told to stop or until a service fails for good."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.services = [Service(spec) for spec in plan.services]
        self.state = RUNNING
        self.failure = ""
        self.stop_signal: int | None = None
        self.started = time.time()

    # -- the state file ------------------------------------------------------------------------
    def record(self) -> None:
        services = {}
        for service in self.services:
            spec, child = service.spec, service.child
            services[spec.name] = {
                "state": service.state, "pid": service.command_pid(),
                "group": child.pgid if child is not None and child.alive() else None,
                "host": spec.host, "port": spec.port, "url": spec.url, "model": spec.model,
                "health_paths": spec.health_paths, "restarts": service.restarts,
                "last_exit_code": service.last_exit_code, "log": spec.log,
                "ready_since": service.ready_since if service.state == READY else None}
        write_state(self.plan.folder, {
            "supervisor": {"pid": os.getpid(), "group": os.getpgrp(), "started": self.started, "state": self.state,
                           "env_file": self.plan.env_file, "run_dir": self.plan.run_dir,
                           "restart_limit": self.plan.restart_limit},
            "services": services, "failure": self.failure})

    # -- one service ---------------------------------------------------------------------------
    def start(self, service: Service) -> None:
        spec = service.spec
        header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} the launcher starts {spec.name} (run {service.restarts + 1})"
        # Unbuffered: a Python service's log lines reach its file as they are written (vLLM logs
        # to stdout; buffered, they would wait for an exit that a SIGKILL never brings), and the
        # notebook kernel's own vLLM log routing is not inherited (VLLMServer does the same).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_LOGGING_CONFIG_PATH": None, **spec.env}
        service.child = process.spawn(spec.argv, name=f"launcher:{spec.name}", log_path=spec.log,
                                      env={name: value for name, value in env.items() if value is not None},
                                      header=f"{header}\n{spec.header}".rstrip(),
                                      grace=spec.grace_s, append=True)
        service.state, service.pid, service.started_at = STARTING, None, time.monotonic()
        say(f"started {spec.name} (guard pid {service.child.pid}), log {spec.log}")
        self.record()

    def crashed(self, service: Service, why: str) -> None:
        spec, limit = service.spec, self.plan.restart_limit
        service.last_exit_code = service.child.returncode if service.child else None
        service.child, service.pid = None, None
        if not service.ever_ready:
            self.fail(service, f"{spec.name} {why} before it was ever ready: a start-up failure, which a restart "
                               "would repeat. The launcher stopped; fix the cause below and start again.")
        elif service.in_a_row >= limit:
            self.fail(service, f"{spec.name} {why}; it was restarted {service.in_a_row} times in a row "
                               f"(RESTART_LIMIT={limit}), so the launcher gave up and stopped everything.")
        else:
            service.in_a_row += 1
            service.restarts += 1
            delay = min(self.plan.backoff_s * 2 ** (service.in_a_row - 1), self.plan.backoff_max_s)
            service.state, service.next_start_at = RESTARTING, time.monotonic() + delay
            say(f"{spec.name} {why}; restart {service.in_a_row} of {limit} in {delay:g} s")
            self.record()

    def fail(self, service: Service, what: str) -> None:
        service.state = FAILED
        self.failure = failure_report(what, service.spec.log)
        say(self.failure)

    def step(self, index: int, service: Service) -> None:
        """Advance one service's state by what it is doing now."""
        spec, now = service.spec, time.monotonic()
        if service.state == WAITING:
            if all(other.ever_ready for other in self.services[:index]):
                self.start(service)
        elif service.state == RESTARTING:
            if now >= service.next_start_at:
                self.start(service)
        elif service.state in (STARTING, READY):
            child = service.child
            if not child.alive():
                self.crashed(service, f"exited with code {child.returncode}")
            elif service.state == READY:
                if service.in_a_row and now - service.ready_at >= STABLE_S:
                    service.in_a_row = 0  # stable again: a later crash starts a fresh count
            elif is_ready(spec):
                service.state, service.ready_at, service.ever_ready = READY, now, True
                service.ready_since = time.time()
                self.record()
                say(f"{spec.name} ready at {spec.url} after {now - service.started_at:.0f} s")
            elif now - service.started_at > spec.ready_timeout_s:
                say(f"{spec.name} not ready after {spec.ready_timeout_s:g} s: stopping it")
                child.stop()
                self.crashed(service, f"was not ready within {spec.ready_timeout_s:g} s")

    # -- the whole run -------------------------------------------------------------------------
    def request_stop(self, signum: int, frame: object) -> None:  # noqa: ARG002 - signal handler
        self.stop_signal = signum

    def stop_services(self) -> None:
        running = [service for service in self.services if service.child is not None]
        if running:
            say(f"stopping {', '.join(service.spec.name for service in running)}")
        process.stop_all()  # SIGTERM to every group at once, then each one's grace
        for service in self.services:
            if service.state != FAILED:
                service.state = STOPPED
            if service.child is not None:
                service.last_exit_code, service.child, service.pid = service.child.returncode, None, None

    def run(self) -> int:
        """Supervise until a stop signal (exit 0) or a failure (exit 1, recorded in the state file)."""
        lock = take_lock(self.plan.folder, timeout=2.0)
        if lock is None:
            say(f"another launcher already runs for {self.plan.run_dir}: this one does nothing")
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.request_stop)
        say(f"supervisor pid {os.getpid()} runs {', '.join(s.name for s in self.plan.services)} "
            f"(restart limit {self.plan.restart_limit})")
        try:
            self.record()
            while self.stop_signal is None and not self.failure:
                for index, service in enumerate(self.services):
                    self.step(index, service)
                    if self.failure:
                        break
                time.sleep(POLL_S)
        except Exception as exc:  # noqa: BLE001 - a bug here must still stop the services and say why
            self.failure = f"the launcher's supervisor failed: {exc!r}"
            say(self.failure)
        finally:
            if self.stop_signal is not None:
                say(f"received {signal.Signals(self.stop_signal).name}")
            self.state = STOPPING
            self.record()
            self.stop_services()
            if self.failure:
                self.state = FAILED
                self.record()  # kept: `status` and `start` show what went wrong
            else:
                remove_state(self.plan.folder)
            say("supervisor stopped")
            lock.close()
        return 1 if self.failure else 0


def main(plan_path: str) -> int:
    try:
        plan = Plan.from_json(Path(plan_path).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        print(f"cannot read the launcher plan {plan_path}: {exc}", file=sys.stderr)
        return 2
    return Supervisor(plan).run()
