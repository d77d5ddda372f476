"""The local test hub itself: :class:`LocalModelHub`, what it serves, records and injects.

See :mod:`helpers.local_hub` for what it is for and which API paths it answers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

from ..hubs import MODEL_ID_RE, forget_modelscope_config
from .api import Handler
from .catalogue import DEFAULT_EXCLUDE, FileEntry, PublishedModel, commit_id
from .faults import Fault, Faults
from .server import HubRequest, HubServer

__all__ = ["HubRequest", "LocalModelHub", "pointing_modelscope_at"]

class LocalModelHub:
    """Serve local model folders over HTTP the way modelscope.cn (and the HF Hub) do.

    Parameters
    ----------
    models:
        ``{"owner/name": folder}``; every regular file below ``folder`` is published
        (except :data:`DEFAULT_EXCLUDE`).
    host, port:
        Where to listen; ``port=0`` (default) picks a free port.
    revisions:
        Branch names accepted for every model (``"master"`` for ModelScope,
        ``"main"`` for Hugging Face). The computed commit id is accepted too.
    log_requests:
        Print one line per request to stderr (quiet by default).
    """

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike[str]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        revisions: tuple[str, ...] = ("master", "main"),
        exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.revisions = tuple(revisions)
        self.exclude = tuple(exclude)
        self.log_requests = log_requests
        self._models: dict[str, PublishedModel] = {}
        self._lock = threading.Lock()
        self._log: list[HubRequest] = []
        self.faults = Faults()
        self._server: HubServer | None = None
        self._thread: threading.Thread | None = None
        for model_id, folder in (models or {}).items():
            self.add_model(model_id, folder)

    # ------------------------------------------------------------------ setup
    def add_model(self, model_id: str, folder: str | os.PathLike[str]) -> None:
        """Publish ``folder`` as ``model_id`` (``owner/name``); allowed while running."""
        if not MODEL_ID_RE.match(model_id):
            raise ValueError(f"model id {model_id!r} must look like 'owner/name'")
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"cannot serve {model_id!r}: {root} is not a directory")
        with self._lock:
            self._models[model_id] = PublishedModel(model_id, root)

    @property
    def model_ids(self) -> list[str]:
        return sorted(self._models)

    def start(self) -> LocalModelHub:
        """Start serving in a daemon thread (idempotent); returns ``self``."""
        if self._server is not None:
            return self
        server = HubServer((self.host, self._requested_port), Handler, hub=self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"LocalModelHub:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = None
        self._thread = None
        self.faults.released.set()  # held responses end
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> LocalModelHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalModelHub is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def model_url(self, model_id: str) -> str:
        """The model page URL, as on modelscope.cn (``{endpoint}/models/{id}``)."""
        return f"{self.endpoint}/models/{model_id}"

    # ---------------------------------------------------------------- env vars
    def env(self) -> dict[str, str]:
        """Environment variables that point ModelScope and Hugging Face clients here.

        ``MODELSCOPE_ENDPOINT`` is what modelscope-hub reads (``MODELSCOPE_DOMAIN``
        is deprecated and would default to ``https://``); ``HF_ENDPOINT`` is read
        by huggingface_hub **at import time**, so pass ``endpoint=`` explicitly
        when it is already imported. ``NO_PROXY`` keeps loopback traffic off any
        configured HTTP proxy.
        """
        no_proxy = [p for p in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if p]
        for host in (self.host, "127.0.0.1", "localhost"):
            if host not in no_proxy:
                no_proxy.append(host)
        joined = ",".join(no_proxy)
        return {
            "MODELSCOPE_ENDPOINT": self.endpoint,
            "HF_ENDPOINT": self.endpoint,
            "NO_PROXY": joined,
            "no_proxy": joined,
        }

    def use(self) -> contextlib.AbstractContextManager[LocalModelHub]:
        """Context manager: set :meth:`env` in ``os.environ``, restore it on exit."""
        return pointing_modelscope_at(self)

    # -------------------------------------------------------------- recording
    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request served so far (path includes the query)."""
        with self._lock:
            return [
                (r.method, r.path + ("?" + "&".join(f"{k}={quote(v)}" for k, v in r.query.items()) if r.query else ""))
                for r in self._log
            ]

    @property
    def request_log(self) -> list[HubRequest]:
        """Detailed records (status, ``Range`` header, bytes sent) of every request."""
        with self._lock:
            return list(self._log)

    def downloaded_files(self) -> list[str]:
        """Repository paths whose bytes were requested (GET on a file), in order."""
        out = []
        for record in self.request_log:
            if record.method != "GET" or record.status not in (200, 206):
                continue
            if record.path.endswith("/repo") and "FilePath" in record.query:
                out.append(record.query["FilePath"])
            elif "/resolve/" in record.path:
                out.append(record.path.split("/resolve/", 1)[1].split("/", 1)[1])
        return out

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def record(self, record: HubRequest) -> None:
        """Called by the server when a response's headers are sent."""
        with self._lock:
            self._log.append(record)
        if self.log_requests:
            extra = f" range={record.range}" if record.range else ""
            print(f"[LocalModelHub] {record.method} {record.path} {record.query} -> {record.status}{extra}",
                  file=sys.stderr)

    # ---------------------------------------------------------- fault inject
    def interrupt(self, file_path: str, *, after_bytes: int, times: int = 1) -> None:
        """Cut the connection after ``after_bytes`` of ``file_path`` (next ``times`` GETs).

        Simulates a dropped connection mid-download; the response still announces
        the full ``Content-Length``, exactly like a network failure would look.
        """
        self.faults.add(Fault(file_path, times, after_bytes=after_bytes))

    def corrupt(self, file_path: str, *, times: int = 1) -> None:
        """Serve ``file_path`` with one flipped byte (next ``times`` GETs): a bad mirror/CDN.

        The listing still announces the right size and SHA-256, so the client's
        integrity check must reject the bytes.
        """
        self.faults.add(Fault(file_path, times, corrupt=True))

    def hold(self, file_path: str, *, after_bytes: int, times: int = 1) -> None:
        """Send ``after_bytes`` of ``file_path``, then keep the connection silent until :meth:`release`.

        A download caught in progress at a known point: :meth:`wait_until_held` returns once
        a client got there, e.g. to interrupt it at that moment. :meth:`stop` releases too.
        """
        self.faults.add(Fault(file_path, times, after_bytes=after_bytes, hold=True))

    def wait_until_held(self, timeout: float) -> bool:
        """True once a response reached its :meth:`hold` point (False after ``timeout`` s)."""
        return self.faults.held.wait(timeout)

    def release(self) -> None:
        """Let held responses end (the connection is then closed mid-body)."""
        self.faults.released.set()

    def clear_faults(self) -> None:
        """Forget pending faults and release held responses."""
        self.faults.clear()

    # ---------------------------------------------------------------- lookup
    def model(self, model_id: str) -> PublishedModel | None:
        with self._lock:
            return self._models.get(model_id)

    def files(self, model: PublishedModel) -> list[FileEntry]:
        return model.files(self.exclude)

    def commit(self, files: list[FileEntry]) -> str:
        """The commit id every revision of this content resolves to."""
        return commit_id(files, self.revisions[0])

    def revision_ok(self, revision: str, files: list[FileEntry]) -> bool:
        return revision in self.revisions or revision == self.commit(files)


@contextlib.contextmanager
def pointing_modelscope_at(hub: LocalModelHub) -> Iterator[LocalModelHub]:
    """Point ``modelscope`` (and ``huggingface_hub`` via ``HF_ENDPOINT``) at ``hub``.

    Sets :meth:`LocalModelHub.env` in ``os.environ`` and restores the previous
    values on exit. modelscope-hub caches its configuration (endpoint, cache dir)
    in a process-wide default created on first use, so that cached default is
    dropped on entry and on exit, and the next call re-reads the environment.
    """
    values = hub.env()
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    forget_modelscope_config()
    try:
        yield hub
    finally:
        for name, old in previous.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        forget_modelscope_config()
