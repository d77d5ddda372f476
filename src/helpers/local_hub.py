"""A tiny ModelScope-compatible model hub served from local folders.

The course uses it to exercise the *real* download path of notebook
``01_download_model`` without Internet access: tests, CI and offline
classrooms start a :class:`LocalModelHub` on ``127.0.0.1`` and point
``modelscope.snapshot_download`` at it with ``MODELSCOPE_ENDPOINT``::

    with LocalModelHub({"course/tiny-qwen2": Path("models/tiny-qwen2")}) as hub:
        with hub.use():                       # sets MODELSCOPE_ENDPOINT, restores it on exit
            snapshot_download("course/tiny-qwen2", local_dir="/tmp/tiny")

What it implements is exactly what ``modelscope`` 1.40 / ``modelscope-hub``
0.5 call for a model download (paths are under ``MODELSCOPE_ENDPOINT``):

* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=``:
  the file listing, ``{"Code": 200, "Data": {"Files": [...]}, "Success": true}``
  with ``Path``/``Name``/``Type``/``Size``/``Sha256`` per entry. The client
  checks every downloaded file against ``Size`` and ``Sha256``.
* ``GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=``: the file
  bytes, honouring ``Range: bytes=N-`` with ``206``/``Content-Range`` (the client
  resumes a ``<file>.incomplete`` left by an interrupted download).
* ``GET /api/v1/models/{owner}/{name}``, ``.../revisions`` and
  ``GET /openapi/v1/models/{owner}/{name}``: repository metadata.
* ``GET /api/v1/repos/internalAccelerationInfo``: the region probe the client
  sends before its first file (answered with "no intra-cloud route").

Unknown models answer ``404`` with the JSON error envelope of the real hub
(``"Message": "模型不存在"``), so the client raises its real not-found error.

The same server also answers the subset of the Hugging Face Hub API that
``huggingface_hub.snapshot_download`` uses (``/api/models/{id}/revision/{rev}``,
``/api/models/{id}/tree/{rev}`` and ``/{id}/resolve/{rev}/{file}``); point
``HF_ENDPOINT`` (or the ``endpoint=`` argument) at :attr:`LocalModelHub.endpoint`.

Every request is recorded in :attr:`LocalModelHub.requests` as ``(method, path)``
so tests can assert, for instance, that a second download made no request.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_EXCLUDE",
    "HubRequest",
    "LocalModelHub",
    "pointing_modelscope_at",
]

#: File or folder names never published by the hub (matched against every path part).
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git",
    ".cache",  # huggingface_hub keeps local_dir metadata in .cache/huggingface
    ".course-download.json",  # marker written by helpers.download
    "*.incomplete",
    ".DS_Store",
)

_CHUNK = 1024 * 1024
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class HubRequest:
    """One request served by the hub (see :attr:`LocalModelHub.request_log`).

    Recorded when the response headers are sent, i.e. before the client can have
    the response: a test that asserts right after a download never misses one.
    """

    method: str
    path: str  # URL path without the query string
    query: dict[str, str]
    status: int
    range: str | None = None
    bytes_sent: int = 0


@dataclass
class _FileEntry:
    path: str  # POSIX path inside the repository
    size: int
    sha256: str
    mtime: float
    git_sha1: str


@dataclass
class _Fault:
    file_path: str
    times: int
    after_bytes: int | None = None  # hang up after this many bytes of the file
    corrupt: bool = False  # flip the first byte sent


@dataclass
class _Model:
    model_id: str
    root: Path
    # rel path -> ((size, mtime), sha256, git blob sha1)
    _cache: dict[str, tuple[tuple[int, float], str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self, exclude: tuple[str, ...]) -> list[_FileEntry]:
        """Walk the folder; hashes are cached per (size, mtime), so edited files are re-hashed."""
        entries: list[_FileEntry] = []
        with self._lock:
            for path in sorted(self.root.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(self.root).as_posix()
                if any(fnmatch.fnmatch(part, pattern) for part in rel.split("/") for pattern in exclude):
                    continue
                stat = path.stat()
                signature = (stat.st_size, stat.st_mtime)
                cached = self._cache.get(rel)
                if cached is None or cached[0] != signature:
                    cached = (signature, *_hashes(path, stat.st_size))
                    self._cache[rel] = cached
                entries.append(_FileEntry(rel, stat.st_size, cached[1], stat.st_mtime, cached[2]))
        return entries


def _hashes(path: Path, size: int) -> tuple[str, str]:
    """SHA-256 (ModelScope ``Sha256``, HF LFS oid) and git blob SHA-1 (HF ``oid``) in one pass."""
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            sha256.update(block)
            git_sha1.update(block)
    return sha256.hexdigest(), git_sha1.hexdigest()


def _commit_id(files: list[_FileEntry], revision: str) -> str:
    """A stable 40-hex "commit" derived from the content, as the real hubs expose one."""
    digest = hashlib.sha1(revision.encode())
    for entry in files:
        digest.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


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
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self._log: list[HubRequest] = []
        self._faults: list[_Fault] = []
        self._server: _HubServer | None = None
        self._thread: threading.Thread | None = None
        for model_id, folder in (models or {}).items():
            self.add_model(model_id, folder)

    # ------------------------------------------------------------------ setup
    def add_model(self, model_id: str, folder: str | os.PathLike[str]) -> None:
        """Publish ``folder`` as ``model_id`` (``owner/name``); allowed while running."""
        if not _MODEL_ID_RE.match(model_id):
            raise ValueError(f"model id {model_id!r} must look like 'owner/name'")
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"cannot serve {model_id!r}: {root} is not a directory")
        with self._lock:
            self._models[model_id] = _Model(model_id, root)

    @property
    def model_ids(self) -> list[str]:
        return sorted(self._models)

    def start(self) -> LocalModelHub:
        """Start serving in a daemon thread (idempotent); returns ``self``."""
        if self._server is not None:
            return self
        server = _HubServer((self.host, self._requested_port), _Handler, hub=self)
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

    def _record(self, record: HubRequest) -> None:
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
        with self._lock:
            self._faults.append(_Fault(file_path, times, after_bytes=after_bytes))

    def corrupt(self, file_path: str, *, times: int = 1) -> None:
        """Serve ``file_path`` with one flipped byte (next ``times`` GETs): a bad mirror/CDN.

        The listing still announces the right size and SHA-256, so the client's
        integrity check must reject the bytes.
        """
        with self._lock:
            self._faults.append(_Fault(file_path, times, corrupt=True))

    def clear_faults(self) -> None:
        """Forget pending :meth:`interrupt` / :meth:`corrupt` faults."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, file_path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.file_path == file_path and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # ---------------------------------------------------------------- lookup
    def _model(self, model_id: str) -> _Model | None:
        with self._lock:
            return self._models.get(model_id)

    def _files(self, model: _Model) -> list[_FileEntry]:
        return model.files(self.exclude)

    def _revision_ok(self, revision: str, files: list[_FileEntry]) -> bool:
        return revision in self.revisions or revision == _commit_id(files, self.revisions[0])


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
    _forget_modelscope_default_config()
    try:
        yield hub
    finally:
        for name, old in previous.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        _forget_modelscope_default_config()


def _forget_modelscope_default_config() -> None:
    """Make modelscope-hub re-read MODELSCOPE_* variables (only if it is imported)."""
    config = sys.modules.get("modelscope_hub.config")
    if config is not None and hasattr(config, "set_default_config"):
        config.set_default_config(None)


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------
class _HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, hub: LocalModelHub):
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conn_lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet: clients hang up
        if self.hub.log_requests:
            super().handle_error(request, client_address)


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalModelHub/1.0"
    timeout = 60  # idle keep-alive connections end after a minute
    server: _HubServer

    # -- plumbing ---------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        return  # requests are recorded (and optionally printed) by LocalModelHub._record

    @property
    def hub(self) -> LocalModelHub:
        return self.server.hub

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._drain_body()
        self._dispatch("POST")

    def _drain_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    _entry: HubRequest | None = None
    _status = 0

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self._method = method
        self._path = unquote(split.path)
        self._query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self._status = 0
        self._entry = None
        try:
            self._route(method, self._path, self._query)
        except _ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._record_once()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def end_headers(self) -> None:
        if getattr(self, "_path", None) is not None:
            self._record_once()  # before the client can see the response
        super().end_headers()

    def _record_once(self) -> None:
        if self._entry is None:
            self._entry = HubRequest(self._method, self._path, self._query, self._status, self.headers.get("Range"))
            self.hub._record(self._entry)

    def _count(self, n: int) -> None:
        if self._entry is not None:
            self._entry.bytes_sent += n

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        request_id = uuid.uuid4().hex
        self.send_header("X-Request-Id", request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self._method != "HEAD":
            self._count(len(body))
            self.wfile.write(body)

    # -- ModelScope envelopes ----------------------------------------------
    def _ms_ok(self, data: Any) -> None:
        self._send_json(200, {"Code": 200, "Data": data, "Message": "success",
                              "RequestId": uuid.uuid4().hex, "Success": True})

    def _ms_error(self, status: int, message: str) -> None:
        self._send_json(status, {"Code": status, "Data": None, "Message": message,
                                 "RequestId": uuid.uuid4().hex, "Success": False})

    # -- routing ------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, str]) -> None:
        if path == "/api/v1/repos/internalAccelerationInfo":
            # No intra-cloud (Alibaba Cloud VPC) route: the client uses the public one.
            return self._ms_ok({"InternalRegionQueryAddress": ""})
        if path.startswith("/api/v1/models/"):
            return self._route_modelscope(method, path[len("/api/v1/models/"):], query)
        if path.startswith("/openapi/v1/models/"):
            return self._route_openapi(path[len("/openapi/v1/models/"):])
        if path.startswith("/api/models/"):
            return self._route_hf_api(method, path[len("/api/models/"):], query)
        if "/resolve/" in path:
            return self._route_hf_resolve(method, path.lstrip("/"))
        return self._send_json(404, {"Code": 404, "Message": f"Not found: {path}", "Success": False})

    def _split_model(self, rest: str) -> tuple[_Model | None, str, str]:
        parts = rest.strip("/").split("/", 2)
        model_id = "/".join(parts[:2])
        tail = parts[2] if len(parts) > 2 else ""
        return self.hub._model(model_id), model_id, tail

    # ModelScope legacy API: /api/v1/models/{owner}/{name}[/...]
    def _route_modelscope(self, method: str, rest: str, query: dict[str, str]) -> None:
        model, model_id, tail = self._split_model(rest)
        if model is None:
            # What modelscope.cn answers for an unknown (or private) model id.
            return self._ms_error(404, "模型不存在")
        files = self.hub._files(model)
        revision = query.get("Revision") or self.hub.revisions[0]
        commit = _commit_id(files, self.hub.revisions[0])
        if tail == "":
            return self._ms_ok(self._ms_repo_info(model_id, files, commit))
        if tail == "revisions":
            branches = [{"Revision": r, "CommitId": commit, "CreatedAt": int(time.time())} for r in self.hub.revisions]
            return self._ms_ok({"RevisionMap": {"Branches": branches, "Tags": []}})
        if not self.hub._revision_ok(revision, files):
            return self._ms_error(404, f"Revision {revision} not found for model {model_id}")
        if tail == "repo/files":
            return self._ms_ok(self._ms_listing(files, query, commit))
        if tail == "repo" and method in ("GET", "HEAD"):
            file_path = (query.get("FilePath") or "").lstrip("/")
            entry = next((f for f in files if f.path == file_path), None)
            if entry is None:
                return self._ms_error(404, f"File {file_path or '(empty)'} not found in {model_id}@{revision}")
            return self._send_file(model, entry, {"X-Repo-Commit": commit})
        return self._ms_error(404, f"Unsupported path for {model_id}: {tail}")

    @staticmethod
    def _ms_repo_info(model_id: str, files: list[_FileEntry], commit: str) -> dict[str, Any]:
        owner, name = model_id.split("/", 1)
        return {"Id": abs(hash(model_id)) % 10**8, "Name": name, "Path": owner, "ChineseName": "",
                "Visibility": 5, "IsPublished": 1, "Downloads": 0, "Stars": 0, "License": "Apache License 2.0",
                "LastUpdatedTime": int(max((f.mtime for f in files), default=time.time())),
                "Revision": "master", "CommitId": commit}

    def _ms_listing(self, files: list[_FileEntry], query: dict[str, str], commit: str) -> dict[str, Any]:
        recursive = (query.get("Recursive") or "false").lower() == "true"
        root = (query.get("Root") or "").strip("/")
        prefix = f"{root}/" if root else ""
        entries: dict[str, dict[str, Any]] = {}

        def tree(path: str) -> dict[str, Any]:
            return {"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "tree", "Size": 0, "Sha256": "",
                    "IsLFS": False, "Mode": "040000", "Revision": commit, "CommitId": commit}

        for entry in files:
            if not entry.path.startswith(prefix):
                continue
            rest = entry.path[len(prefix):]
            if "/" in rest and not recursive:
                child = prefix + rest.split("/", 1)[0]
                entries.setdefault(child, tree(child))
                continue
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, tree(folder))
            entries[entry.path] = {
                "Name": entry.path.rsplit("/", 1)[-1], "Path": entry.path, "Type": "blob", "Size": entry.size,
                "Sha256": entry.sha256, "IsLFS": entry.size > 1024 * 1024 or entry.path.endswith(".safetensors"),
                "Mode": "100644", "Revision": commit, "CommitId": commit, "CommitMessage": "upload",
                "CommittedDate": int(entry.mtime), "CommitterName": "course",
            }
        return {"Files": list(entries.values()),
                "LatestCommitter": {"CommitterName": "course", "Id": commit, "Message": "upload"}}

    # OpenAPI: /openapi/v1/models/{owner}/{name}
    def _route_openapi(self, rest: str) -> None:
        model, model_id, tail = self._split_model(rest)
        if model is None or tail:
            return self._send_json(404, {"success": False, "code": "ResourceNotFound",
                                         "message": f"Model {model_id} not found", "request_id": uuid.uuid4().hex})
        owner, name = model_id.split("/", 1)
        return self._send_json(200, {"success": True, "request_id": uuid.uuid4().hex,
                                     "data": {"id": model_id, "owner": owner, "name": name, "private": False}})

    # -- Hugging Face Hub ---------------------------------------------------
    def _hf_not_found(self, message: str, code: str = "RepoNotFound") -> None:
        self._send_json(404 if code != "RepoNotFound" else 401, {"error": message},
                        {"X-Error-Code": code, "X-Error-Message": message})

    def _route_hf_api(self, method: str, rest: str, query: dict[str, str]) -> None:
        model, model_id, tail = self._split_model(rest)
        if model is None:
            return self._hf_not_found("Repository not found")
        files = self.hub._files(model)
        kind, _, remainder = tail.partition("/")
        revision, _, sub = (unquote(remainder).partition("/") if kind in ("revision", "tree") else ("", "", ""))
        if not kind:
            revision = self.hub.revisions[-1]
        if kind not in ("", "revision", "tree"):
            return self._send_json(404, {"error": f"Unsupported path {tail}"})
        if not self.hub._revision_ok(revision, files):
            return self._hf_not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
        commit = _commit_id(files, self.hub.revisions[0])
        if kind in ("", "revision"):
            owner, name = model_id.split("/", 1)
            siblings = [{"rfilename": f.path, "size": f.size} for f in files]
            return self._send_json(200, {
                "_id": commit[:24], "id": model_id, "author": owner, "sha": commit, "private": False,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(max((f.mtime for f in files),
                                                                                          default=time.time()))),
                "siblings": siblings, "modelId": model_id, "name": name,
            })
        # tree listing
        recursive = (query.get("recursive") or "false").lower() in ("true", "1")
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        out: dict[str, dict[str, Any]] = {}
        for entry in files:
            if not entry.path.startswith(prefix):
                continue
            rest_path = entry.path[len(prefix):]
            parts = rest_path.split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                out.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                        "size": 0, "path": folder})
            if "/" in rest_path and not recursive:
                continue
            item: dict[str, Any] = {"type": "file", "oid": entry.git_sha1, "size": entry.size,
                                    "path": entry.path}
            if entry.path.endswith(".safetensors") or entry.size > 10 * 1024 * 1024:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
            out[entry.path] = item
        return self._send_json(200, list(out.values()))

    def _route_hf_resolve(self, method: str, path: str) -> None:
        repo_part, _, rest = path.partition("/resolve/")
        for prefix in ("models/",):  # /models/{id}/resolve/... is accepted by the Hub too
            if repo_part.startswith(prefix):
                repo_part = repo_part[len(prefix):]
        model = self.hub._model(repo_part)
        if model is None:
            return self._hf_not_found("Repository not found")
        revision, _, file_path = rest.partition("/")
        revision = unquote(revision)
        files = self.hub._files(model)
        if not self.hub._revision_ok(revision, files):
            return self._hf_not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
        entry = next((f for f in files if f.path == file_path), None)
        if entry is None:
            return self._hf_not_found("Entry not found", "EntryNotFound")
        commit = _commit_id(files, self.hub.revisions[0])
        is_lfs = entry.path.endswith(".safetensors") or entry.size > 10 * 1024 * 1024
        etag = entry.sha256 if is_lfs else entry.git_sha1
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
        if is_lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        return self._send_file(model, entry, headers)

    # -- file bytes -----------------------------------------------------------
    def _send_file(self, model: _Model, entry: _FileEntry, extra: Mapping[str, str]) -> None:
        size = entry.size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = _RANGE_RE.match(range_header.strip())
            if match and (match.group(1) or match.group(2)):
                first, last = match.group(1), match.group(2)
                if first:
                    start = int(first)
                    end = min(int(last), size - 1) if last else size - 1
                else:  # suffix range: last N bytes
                    start, end = max(0, size - int(last)), size - 1
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            # anything else (multiple ranges, garbage) is ignored: 200 with the whole file
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", _http_date(entry.mtime))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self._method == "HEAD" or length == 0:
            return
        fault = self.hub._take_fault(entry.path)
        budget = length
        if fault is not None and fault.after_bytes is not None:
            budget = max(0, fault.after_bytes - start)
        flip = fault is not None and fault.corrupt
        with (model.root / entry.path).open("rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                if budget <= 0:
                    # Simulated network failure: hang up mid-body.
                    self.wfile.flush()
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    raise _ClientGone()
                block = fh.read(min(_CHUNK, remaining, budget))
                if not block:
                    break
                if flip:
                    block = bytes([block[0] ^ 0xFF]) + block[1:]
                    flip = False
                self._count(len(block))
                self.wfile.write(block)
                remaining -= len(block)
                budget -= len(block)
