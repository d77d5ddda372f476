"""Faults the local test hub can inject into a file download, to test what a client does then.

* **interrupt**: hang up after N bytes, with the full ``Content-Length`` announced: a dropped
  connection. The client should resume with ``Range: bytes=N-``.
* **corrupt**: flip the first byte sent: a bad mirror or CDN. The listing still announces the
  right SHA-256, so the client's integrity check must reject the bytes.
* **hold**: send N bytes, then keep the connection open and silent until released: a download
  caught in progress, at a known point, for tests that interrupt the client there (signals).

Each fault applies to the next ``times`` GETs of one repository path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Fault", "Faults"]


@dataclass
class Fault:
    file_path: str
    times: int
    after_bytes: int | None = None  # stop sending after this many bytes of the file
    corrupt: bool = False  # flip the first byte sent
    hold: bool = False  # after ``after_bytes``: wait for release instead of hanging up


class Faults:
    """The pending faults of one hub, and the hold point's two events. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Fault] = []
        self.held = threading.Event()  # a response reached a hold point
        self.released = threading.Event()  # held responses may end (set by release() and stop())

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._pending.append(fault)
        if fault.hold:
            self.held.clear()
            self.released.clear()

    def take(self, file_path: str) -> Fault | None:
        """The fault for this GET of ``file_path``, if one is pending (it counts one use)."""
        with self._lock:
            for fault in self._pending:
                if fault.file_path == file_path and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
        self.released.set()

    def hold_here(self) -> None:
        """Called by a response at its hold point: announce it, then wait to be released."""
        self.held.set()
        self.released.wait()
