"""TCP ports on this machine: a free one, is this one free, who holds it (notebook 03)."""

from __future__ import annotations

import socket

DEFAULT_HOST = "127.0.0.1"


def connect_host(host: str) -> str:
    """Where clients connect: a server bound to all interfaces is reached on 127.0.0.1."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def exposure_problem(host: str, has_key: bool, *, set_key: str, opt_out: str) -> str | None:
    """Why a gateway bound to ``host`` without a key is unsafe (None when it is not): anyone who
    reaches the port may use the model. ``set_key``/``opt_out`` say how, in the caller's terms."""
    if is_loopback(host) or has_key:
        return None
    where = "every network interface" if host in ("", "0.0.0.0", "::") else f"the address {host}"
    return (f"a gateway on {host} listens on {where}, and without a key anyone who can reach this machine may use "
            f"the model: {set_key}, or {opt_out} if a firewall or a proxy in front already checks who calls")


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def distinct_free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """``count`` free ports, all different (two :func:`free_port` calls may return the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def port_is_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound, i.e. nothing listens there (SO_REUSEADDR, as uvicorn)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def listener_of(port: int) -> str | None:
    """'pid 123: python -m ...' for whoever listens on ``port``, if the OS tells us."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return None
                cmdline = " ".join(psutil.Process(conn.pid).cmdline())
                return f"pid {conn.pid}: {cmdline[:160]}"
    except Exception:  # noqa: BLE001 - best effort (permissions, platform)
        return None
    return None


def busy_port_message(host: str, port: int) -> str:
    """What to say when a fixed port is taken by a program we did not start."""
    holder = listener_of(port)
    return (f"Port {port} on {host} is already in use by another program{f' ({holder})' if holder else ''}, "
            f"not by a server this Python process started. Pick another port (e.g. port={port + 1}), pass "
            f"port=None to get a free one, or find and stop the program that holds it: "
            f"`ss -ltnp 'sport = :{port}'` or `lsof -i :{port}` (a vLLM server left over from an old kernel "
            f"shows up there; `kill PID` stops it).")
