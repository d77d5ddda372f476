"""The launcher: vLLM (and the gateway) as background services without Docker (notebook 06).

On machines where Docker cannot run (AutoDL containers), ``.venv/bin/python -m helpers.launcher``
(or ``bash deploy/launch.sh``) does what ``docker compose up -d`` does elsewhere, from the same
``deploy/.env``:

    .venv/bin/python -m helpers.launcher start --env deploy/.env [--gateway] [--wait 600]
    .venv/bin/python -m helpers.launcher status --env deploy/.env    # exit 0 ready, 1 unhealthy, 3 not running
    .venv/bin/python -m helpers.launcher logs --env deploy/.env [--service vllm] [-n 40] [--follow]
    .venv/bin/python -m helpers.launcher stop --env deploy/.env

``start`` leaves a *supervisor* running detached (:mod:`.supervisor`): it survives the
terminal or notebook that started it, restarts a service that crashes, and takes its
services with it when it dies. Everything about a launch lives in the ``.env``'s RUN_DIR:
``launcher.json`` (state), ``launcher.lock``, ``logs/``. From a notebook::

    from helpers.launcher import start, status, logs, stop
    start("deploy/.env"); status("deploy/.env"); logs("deploy/.env", service="vllm"); stop("deploy/.env")
"""

from .commands import launch, start, stop
from .plan import Plan, ServiceSpec, plan_from_config, run_dir_of
from .report import LauncherStatus, ServiceStatus, logs, status

__all__ = ["LauncherStatus", "Plan", "ServiceSpec", "ServiceStatus", "launch", "logs", "plan_from_config",
           "run_dir_of", "start", "status", "stop"]
