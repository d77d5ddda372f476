"""``.venv/bin/python -m helpers.gateway``: the gateway as a command (notebook 05).

    .venv/bin/python -m helpers.gateway --upstream http://127.0.0.1:8000 --port 9000 --api-key-env GATEWAY_KEY

Keys are never given on the command line (``ps`` shows it to everyone): ``--api-key-env NAME``
names an environment variable that holds a key. Listening beyond this machine (``--host
0.0.0.0`` or an address of a network card) needs a key, or ``--no-key-on-network`` with a
warning in the log. ``--limit NAME=VALUE`` sets any limit of
:class:`~helpers.gateway.limits.Limits`. Prints one line once it serves, naming the address
it is bound to; bad options, Ctrl+C and SIGTERM end with one line too (exit 2, 130, 143; a
start-up failure exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from ..cli_args import EXIT_FAILURE, OneLineParser, course_command, exit_with, number, one_of
from ..errors import GatewayError
from ..ports import DEFAULT_HOST, connect_host, exposure_problem, is_loopback, port_is_free
from .config import DEFAULT_READ_TIMEOUT_S, DEFAULT_RETRIES, POLICIES, GatewayConfig
from .limits import Limits, names as limit_names, parse_assignment

PROG = course_command("helpers.gateway")
SHUTDOWN_GRACE_S = 3
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="An API gateway in front of vLLM OpenAI-compatible servers.")
    p.add_argument("--upstream", action="append", required=True, metavar="URL",
                   help="a vLLM server, e.g. http://127.0.0.1:8000 (repeat for several)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=number(int, minimum=0, maximum=65535, what="port"), default=9000,
                   help="port to listen on (default 9000; 0 picks a free one)")
    p.add_argument("--api-key-env", action="append", default=[], metavar="NAME",
                   help="environment variable holding a key clients must send (repeat for several keys)")
    p.add_argument("--upstream-api-key-env", metavar="NAME", help="environment variable holding the upstream's key")
    p.add_argument("--policy", type=one_of(POLICIES, what="policy"), default=POLICIES[0],
                   help=f"how to pick an upstream: {' or '.join(POLICIES)} (default {POLICIES[0]})")
    p.add_argument("--read-timeout", type=number(float, minimum=0, exclusive_minimum=True, what="timeout"),
                   default=DEFAULT_READ_TIMEOUT_S, metavar="S",
                   help=f"seconds to wait for the upstream's next bytes (default {DEFAULT_READ_TIMEOUT_S:g})")
    p.add_argument("--retries", type=number(int, minimum=0, maximum=10, what="retry count"), default=DEFAULT_RETRIES,
                   metavar="N", help=f"extra attempts on connect errors and 502/503 (default {DEFAULT_RETRIES})")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help=f"change one limit (repeat): {', '.join(limit_names())}; see helpers.gateway.limits")
    p.add_argument("--no-key-on-network", action="store_true",
                   help="serve beyond loopback without a key (only behind something that checks callers)")
    return p


def _env_value(p: argparse.ArgumentParser, name: str, option: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        p.error(f"{option} {name}: the environment variable {name} is not set or empty "
                f"(export {name}=... first; the option names a variable, it is not the key itself)")
    return value


def config_from(args: argparse.Namespace, p: argparse.ArgumentParser) -> GatewayConfig:
    try:
        limits = Limits().replace(**dict(parse_assignment(text) for text in args.limit))
        return GatewayConfig(
            upstreams=tuple(args.upstream),
            api_keys=tuple(_env_value(p, name, "--api-key-env") for name in args.api_key_env),
            upstream_api_key=(_env_value(p, args.upstream_api_key_env, "--upstream-api-key-env")
                              if args.upstream_api_key_env else None),
            policy=args.policy, read_timeout=args.read_timeout, retries=args.retries, limits=limits)
    except GatewayError as exc:
        p.error(str(exc))


def banner(config: GatewayConfig, host: str, port: int) -> str:
    """The line printed once the gateway serves: where it is bound, and who can reach it."""
    keys = f"{len(config.api_keys)} API key(s)" if config.api_keys else "no API key"
    shown = f"[{host}]" if ":" in host else host
    reach = ("this machine only" if is_loopback(host) else
             f"every interface: other machines reach it at this machine's address; here http://{connect_host(host)}:{port}"
             if host in ("", "0.0.0.0", "::") else "the network")
    return (f"gateway listening on http://{shown}:{port} ({reach}) -> upstreams {', '.join(config.upstreams)} "
            f"({config.policy}, {keys})")


async def serve(config: GatewayConfig, host: str, port: int) -> int:
    import uvicorn

    from .app import create_app

    from .connection import uvicorn_config

    server = uvicorn.Server(uvicorn_config(create_app(config), host, port, log_level="warning",
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    task = asyncio.create_task(server.serve())
    await asyncio.sleep(0)  # serve() has installed uvicorn's own Ctrl+C/SIGTERM handlers by now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by main(): a stop during start-up waited
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    sockets = [sock for listener in server.servers for sock in listener.sockets] if server.started else []
    if sockets and not server.should_exit:  # (a stop during start-up: no banner)
        bound = sockets[0].getsockname()[1]
        print(banner(config, host, bound), flush=True)
    try:
        await task
    except SystemExit as exc:  # uvicorn exits this way when it cannot start
        return int(exc.code or EXIT_FAILURE)
    return 0 if server.started else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    config = config_from(args, p)
    problem = exposure_problem(args.host, bool(config.api_keys), opt_out="pass --no-key-on-network",
                               set_key="set a key (export GATEWAY_KEY=...; --api-key-env GATEWAY_KEY)")
    if problem and not args.no_key_on_network:
        p.error(problem)
    if problem:
        sys.stderr.write(f"WARNING: {PROG}: serving {args.host} without a key (--no-key-on-network): anyone who "
                         "reaches this port may use the model.\n")
    if args.port and not port_is_free(args.host, args.port):
        sys.stderr.write(f"{PROG}: port {args.port} on {args.host} is already in use: pick another --port "
                         "(0 picks a free one)\n")
        return EXIT_FAILURE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    # Until uvicorn handles them, Ctrl+C and SIGTERM wait (blocked, not lost): one arriving while the app
    # is built would otherwise cancel uvicorn's start-up half-way and print its traceback.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        try:
            from uvloop import run as run_loop
        except ImportError:  # pragma: no cover - vLLM's uvicorn[standard] brings uvloop
            run_loop = asyncio.run
        return run_loop(serve(config, args.host, args.port))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def run() -> None:
    exit_with(main, PROG)

