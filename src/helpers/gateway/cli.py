"""``.venv/bin/python -m helpers.gateway``: the gateway as a command (notebook 05).

    .venv/bin/python -m helpers.gateway --upstream http://127.0.0.1:8000 --port 9000 --api-key-env GATEWAY_KEY

Keys are never given on the command line (``ps`` shows it to everyone): ``--api-key-env NAME``
names an environment variable that holds a key. Prints one line once it serves; bad options,
Ctrl+C and SIGTERM end with one line too (exit 2, 130, 143; a start-up failure exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from ..cli_args import EXIT_FAILURE, OneLineParser, course_command, exit_with, number, one_of
from ..errors import GatewayError
from ..ports import DEFAULT_HOST, connect_host, port_is_free
from .config import DEFAULT_READ_TIMEOUT_S, DEFAULT_RETRIES, POLICIES, GatewayConfig

PROG = course_command("helpers.gateway")
KEEP_ALIVE_S = 5
SHUTDOWN_GRACE_S = 3


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
    return p


def _env_value(p: argparse.ArgumentParser, name: str, option: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        p.error(f"{option} {name}: the environment variable {name} is not set or empty "
                f"(export {name}=... first; the option names a variable, it is not the key itself)")
    return value


def config_from(args: argparse.Namespace, p: argparse.ArgumentParser) -> GatewayConfig:
    try:
        return GatewayConfig(
            upstreams=tuple(args.upstream),
            api_keys=tuple(_env_value(p, name, "--api-key-env") for name in args.api_key_env),
            upstream_api_key=(_env_value(p, args.upstream_api_key_env, "--upstream-api-key-env")
                              if args.upstream_api_key_env else None),
            policy=args.policy, read_timeout=args.read_timeout, retries=args.retries)
    except GatewayError as exc:
        p.error(str(exc))


async def serve(config: GatewayConfig, host: str, port: int) -> int:
    import uvicorn

    from .app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, log_level="warning",
                                           timeout_keep_alive=KEEP_ALIVE_S,
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        bound = server.servers[0].sockets[0].getsockname()[1]
        keys = f", {len(config.api_keys)} API key(s)" if config.api_keys else ", no API key"
        print(f"gateway listening on http://{connect_host(host)}:{bound} -> upstreams {', '.join(config.upstreams)} "
              f"({config.policy}{keys})", flush=True)
    try:
        await task
    except SystemExit as exc:  # uvicorn exits this way when it cannot start
        return int(exc.code or EXIT_FAILURE)
    return 0 if server.started else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    config = config_from(args, p)
    if args.port and not port_is_free(args.host, args.port):
        sys.stderr.write(f"{PROG}: port {args.port} on {args.host} is already in use: pick another --port "
                         "(0 picks a free one)\n")
        return EXIT_FAILURE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    return asyncio.run(serve(config, args.host, args.port))


def run() -> None:
    exit_with(main, PROG)

