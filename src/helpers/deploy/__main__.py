"""``.venv/bin/python -m helpers.deploy``: check a ``.env``, or run a service from it (notebook 06).

    .venv/bin/python -m helpers.deploy check --env deploy/.env   # validate, print the vLLM and gateway commands
    python3 -m helpers.deploy exec vllm                  # in a container: become the vLLM server
    python3 -m helpers.deploy exec gateway --upstream http://vllm:8000

``exec`` reads the variables from its environment (compose passes the ``.env`` with
``env_file:``) and replaces itself with the command (``os.execvpe``), so the server is the
container's main process and receives ``docker stop``'s SIGTERM itself.
"""

from __future__ import annotations

import os
import sys

from ..cli_args import OneLineParser, course_command, exit_with, one_of
from ..errors import CourseError, DeployError
from ..server_command import format_command
from .config import KNOWN, DeployConfig

PROG = course_command("helpers.deploy")
# ``exec`` runs in the compose containers (deploy/docker-compose.yml's entrypoint), not in .venv
CONTAINER_PROG = "python3 -m helpers.deploy exec"


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Check a deployment .env file, or run one of its services.")
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate a .env file and print the commands it runs")
    check.add_argument("--env", default="deploy/.env", help="the .env file (default deploy/.env)")
    run = sub.add_parser("exec", help="become a service (container entry point; reads the environment)")
    run.add_argument("service", type=one_of(("vllm", "gateway"), what="service"))
    run.add_argument("--upstream", help="the gateway's upstream URL (default: this .env's vLLM)")
    return p


def _shown(config: DeployConfig, argv: list[str], env: dict[str, str]) -> str:
    secrets = {name: config.service[name] for name in ("VLLM_API_KEY", "GATEWAY_API_KEY")}
    return format_command(argv, env, secrets=secrets)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.action == "check":
        try:
            config = DeployConfig.from_env_file(args.env, check_hardware=False)
        except CourseError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        problem = config.gateway_exposure()
        if problem:
            print(f"{PROG}: {problem}", file=sys.stderr)
            return 2
        print(f"{args.env}: OK ({config.settings.profile} profile, model {config.settings.model_id})")
        print("vLLM:    " + _shown(config, config.vllm_command(), config.vllm_environment()))
        print("gateway: " + _shown(config, config.gateway_command(), config.gateway_environment()))
        if config.gateway_exposure("0.0.0.0"):
            print("note: docker compose publishes the gateway on every interface, where it refuses to start "
                  "without a key: set GATEWAY_API_KEY in .env before `docker compose up`.")
        return 0
    values = {name: value for name, value in os.environ.items() if name in KNOWN}
    try:
        # the gateway's container has no GPU: only vLLM's start checks for one
        config = DeployConfig.from_values(values, source="environment", strict=False,
                                          check_hardware=args.service == "vllm")
        if args.service == "vllm":
            config.settings.ensure_model()
            command, extra = config.vllm_command(), config.vllm_environment()
        else:
            problem = config.gateway_exposure()
            if problem:
                raise DeployError(problem)
            command, extra = config.gateway_command(args.upstream), config.gateway_environment()
    except CourseError as exc:
        print(f"{CONTAINER_PROG} {args.service}: {exc}", file=sys.stderr)
        return 2
    print("starting: " + _shown(config, command, extra), flush=True)
    # The .env's own names stay out of the service's environment: VLLM_PORT and VLLM_HOST mean
    # something else to vLLM itself (VLLM_PORT: its internal ports). HF_HOME is a real setting.
    env = {name: value for name, value in os.environ.items() if name not in KNOWN or name == "HF_HOME"}
    env["PYTHONUNBUFFERED"] = "1"   # `docker compose logs` shows each line as it is written
    os.execvpe(command[0], command, {**env, **extra})
    return 1  # not reached


if __name__ == "__main__":
    exit_with(main, PROG)
