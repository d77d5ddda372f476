"""What the launcher runs: a :class:`Plan` of :class:`ServiceSpec` s, built from a ``.env`` (notebook 06).

The supervisor is generic: it starts, watches and restarts whatever services a plan lists,
in order, each one once the one before it is ready. :func:`plan_from_config` writes the
course's plan (vLLM, optionally the chapter 05 gateway) from a :class:`~helpers.deploy.DeployConfig`;
tests write plans of small real servers. The plan is saved as JSON in the run folder (mode
0600: it holds the services' keys, as the ``.env`` does) so that a restart runs exactly the
command that was checked at ``start``, even if the ``.env`` was edited since.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..deploy import DeployConfig
from ..deploy.env_file import read_env_file
from ..errors import DeployError
from ..ports import connect_host
from ..process import STOP_GRACE_S
from ..server_command import format_command

STATE_FILE = "launcher.json"
PLAN_FILE = "launcher-plan.json"
LOCK_FILE = "launcher.lock"
LOG_FOLDER = "logs"
VLLM_READY_TIMEOUT_S = 1800.0   # loading 15 GB of weights on a slow disk takes minutes
GATEWAY_READY_TIMEOUT_S = 60.0
BACKOFF_S = 2.0
BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its command, where it listens and how to tell that it is ready.

    Ready means ``GET ready_path`` answers 200 (with ``api_key`` as a bearer token) and, when
    ``model`` is set, the answer lists that model, as ``/v1/models`` does. ``health_paths``
    are what ``status`` checks live. ``env`` is added to the supervisor's environment; a
    ``None`` value removes that variable (e.g. a ``VLLM_API_KEY`` exported in the learner's
    shell must not lock a vLLM the ``.env`` starts without a key).
    """

    name: str
    argv: list[str]
    env: dict[str, str | None]
    host: str
    port: int
    log: str
    ready_path: str = "/health"
    model: str = ""
    api_key: str = ""
    health_paths: list[str] = field(default_factory=lambda: ["/health"])
    ready_timeout_s: float = VLLM_READY_TIMEOUT_S
    grace_s: float = STOP_GRACE_S
    header: str = ""

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class Plan:
    """Services in start order, the restart policy, and the run folder (state, lock, logs)."""

    run_dir: str
    services: list[ServiceSpec]
    restart_limit: int = 5
    backoff_s: float = BACKOFF_S
    backoff_max_s: float = BACKOFF_MAX_S
    env_file: str = ""

    @property
    def folder(self) -> Path:
        return Path(self.run_dir)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        services = [ServiceSpec(**spec) for spec in data.pop("services")]
        return cls(services=services, **data)

    def save(self) -> Path:
        """Write the plan into the run folder, readable by its owner only; returns its path."""
        path = self.folder / PLAN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        os.replace(temporary, path)
        return path


def run_dir_of(env_file: str | Path, raw: str | None = None) -> Path:
    """The ``.env``'s RUN_DIR (default ``run``), relative to the file's folder unless absolute.

    ``raw`` is RUN_DIR as already parsed; without it the file is read (leniently: ``stop`` and
    ``status`` must work even when the rest of the file was edited into an invalid state).
    """
    if raw is None:
        raw = read_env_file(env_file).get("RUN_DIR", "").strip() or "run"
    folder = Path(raw).expanduser()
    if not str(folder).strip():
        raise DeployError(f"{env_file}: RUN_DIR is empty: set e.g. RUN_DIR=run.")
    return folder if folder.is_absolute() else (Path(env_file).resolve().parent / folder)


def plan_from_config(config: DeployConfig, env_file: str | Path, *, gateway: bool = False,
                     router: bool = False) -> Plan:
    """The course's plan: vLLM (ready when ``/v1/models`` lists the served name), then vLLM's
    router (notebook 10: this vLLM and ``ROUTER_WORKERS`` behind it), then the gateway, whose
    upstream is the router when there is one."""
    run_dir = run_dir_of(env_file, str(config.service["RUN_DIR"]))
    logs = run_dir / LOG_FOLDER
    secrets = {name: config.service[name] for name in ("VLLM_API_KEY", "GATEWAY_API_KEY")}
    vllm_argv, vllm_env = config.vllm_command(), config.vllm_environment()
    shown = "starting: " + format_command(vllm_argv, vllm_env, secrets=secrets)
    services = [ServiceSpec(
        name="vllm", argv=vllm_argv, env={"VLLM_API_KEY": None, **vllm_env}, host=config.service["VLLM_HOST"],
        port=config.service["VLLM_PORT"], log=str(logs / "vllm.log"), ready_path="/v1/models",
        model=config.settings.served_model_name, api_key=config.service["VLLM_API_KEY"],
        health_paths=["/health", "/v1/models"], ready_timeout_s=VLLM_READY_TIMEOUT_S, grace_s=STOP_GRACE_S + 2,
        header=shown)]
    if router:
        argv = config.router_command()
        services.append(ServiceSpec(
            name="router", argv=argv, env={}, host=config.service["VLLM_HOST"], port=config.service["ROUTER_PORT"],
            log=str(logs / "router.log"), ready_path="/health", ready_timeout_s=GATEWAY_READY_TIMEOUT_S, grace_s=5.0,
            header="starting: " + format_command(argv, {})))
    if gateway:
        argv = config.gateway_command(config.router_url if router else None)
        env = config.gateway_environment()
        services.append(ServiceSpec(
            name="gateway", argv=argv, env=env, host=config.service["GATEWAY_HOST"],
            port=config.service["GATEWAY_PORT"], log=str(logs / "gateway.log"), ready_path="/health",
            ready_timeout_s=GATEWAY_READY_TIMEOUT_S, grace_s=5.0,
            header="starting: " + format_command(argv, env, secrets=secrets)))
    return Plan(run_dir=str(run_dir), services=services, restart_limit=config.service["RESTART_LIMIT"],
                env_file=str(env_file))


def supervisor_command(plan_path: Path) -> list[str]:
    """``python -m helpers.launcher supervise PLAN``: the process that owns the services."""
    return [sys.executable, "-m", "helpers.launcher", "supervise", str(plan_path)]
