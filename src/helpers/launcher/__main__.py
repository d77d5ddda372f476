"""``.venv/bin/python -m helpers.launcher start|stop|status|logs``: the launcher's command line (notebook 06).

Every error is one line on stderr (a failed start adds the service's log tail) and a defined
exit code: 0 success, 1 failure, 2 a bad ``.env`` or option, 3 ``status``: nothing running,
130 Ctrl+C. ``supervise PLAN`` is internal: the process ``start`` leaves running.
"""

from __future__ import annotations

import sys

from ..cli_args import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, exit_with, number, one_of
from ..errors import CourseError, DeployError, ServerError, SettingsError
from .commands import DEFAULT_ENV, DEFAULT_WAIT_S, PROG, start, stop
from .report import LOG_NAMES, logs, status


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Run vLLM (and the gateway) in the background from a .env file.")
    sub = p.add_subparsers(dest="action", required=True)
    env_help = f"the deployment file (default {DEFAULT_ENV})"
    begin = sub.add_parser("start", help="start vLLM (and the gateway) in the background")
    begin.add_argument("--env", default=DEFAULT_ENV, help=env_help)
    begin.add_argument("--gateway", action="store_true", help="also start the chapter 05 gateway once vLLM is ready")
    begin.add_argument("--router", action="store_true",
                       help="also start vLLM's router (chapter 10) in front of this vLLM and ROUTER_WORKERS; "
                            "the gateway then sends to the router")
    begin.add_argument("--wait", type=number(float, minimum=0, what="wait"), default=DEFAULT_WAIT_S, metavar="S",
                       help=f"seconds to wait until ready (default {DEFAULT_WAIT_S:g}; 0 returns at once)")
    for name, text in (("stop", "stop the launcher and its services"),
                       ("status", "state and live health (exit 0 ready, 1 not healthy, 3 not running)")):
        sub.add_parser(name, help=text).add_argument("--env", default=DEFAULT_ENV, help=env_help)
    tail = sub.add_parser("logs", help="show the end of the logs")
    tail.add_argument("--env", default=DEFAULT_ENV, help=env_help)
    tail.add_argument("--service", type=one_of(LOG_NAMES, what="service"), help="one log: " + ", ".join(LOG_NAMES))
    tail.add_argument("-n", "--lines", type=number(int, minimum=0, what="line count"), default=40,
                      help="lines from the end (default 40)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl+C")
    supervise = sub.add_parser("supervise", help="(internal) the supervisor process that `start` leaves running")
    supervise.add_argument("plan")
    return p


def _one_line(exc: Exception) -> str:
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.action == "supervise":
        from .supervisor import main as supervise

        return supervise(args.plan)
    try:
        if args.action == "start":
            start(args.env, gateway=args.gateway, router=args.router, wait=args.wait)
        elif args.action == "stop":
            stop(args.env)
        elif args.action == "status":
            result = status(args.env)
            print(result)
            return result.exit_code
        else:
            logs(args.env, service=args.service, lines=args.lines, follow=args.follow)
    except (DeployError, SettingsError) as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:  # a failed start quotes the service's log tail below its first line
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except CourseError as exc:  # e.g. the model folder is missing
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if args.action == "logs":
            print(f"{PROG}: stopped following the logs (Ctrl+C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    exit_with(main, PROG)
