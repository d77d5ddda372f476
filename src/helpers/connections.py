"""Which network connections did this process open during a block of code? (notebook 01)

``with connections_opened() as opened: ...`` fills ``opened`` with the address of every
socket the process (any thread, any library: requests, httpx, urllib, C extensions going
through Python's ``socket`` module) connected to inside the block. It relies on Python's audit
hooks (:pep:`578`): ``socket.connect`` is an audited event, so nothing is patched. A hook
cannot be removed once added: one is added at the first use, and it records only while a
block is open. Accepted connections (a server in this process) are not counted.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["connections_opened"]

_lock = threading.Lock()
_active: list[list[Any]] = []  # one list per open block
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _active:
        address = args[1] if len(args) > 1 else None
        with _lock:
            for opened in _active:
                opened.append(address)


@contextmanager
def connections_opened() -> Iterator[list[Any]]:
    """Yield a list that receives the address of each connection opened until the block ends."""
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True
        opened: list[Any] = []
        _active.append(opened)
    try:
        yield opened
    finally:
        with _lock:  # by identity: two blocks' lists may be equal
            _active[:] = [other for other in _active if other is not opened]
