"""The Hugging Face half of the local test hub: what ``huggingface_hub.snapshot_download`` calls.

Paths (under ``HF_ENDPOINT``, or ``endpoint=``): ``GET /api/models/{id}[/revision/{rev}]``
(repository info with ``siblings``), ``GET /api/models/{id}/tree/{rev}[/{path}]?recursive=``
(the listing with git blob SHA-1 ``oid`` and, for LFS files, the SHA-256), and
``GET|HEAD /{id}/resolve/{rev}/{file}`` (the bytes, with ``ETag`` / ``X-Linked-Etag``,
``X-Linked-Size`` and ``X-Repo-Commit`` headers the client checks). Unknown repositories
answer with ``X-Error-Code: RepoNotFound``, as the Hub does.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import unquote

from .server import BaseHandler

__all__ = ["HuggingFaceAPI"]


class HuggingFaceAPI(BaseHandler):
    """Routes of the Hugging Face Hub API (mixed into :class:`helpers.local_hub.api.Handler`)."""

    def _hf_not_found(self, message: str, code: str = "RepoNotFound") -> None:
        self.send_json(404 if code != "RepoNotFound" else 401, {"error": message},
                       {"X-Error-Code": code, "X-Error-Message": message})

    def route_hf_api(self, method: str, rest: str, query: dict[str, str]) -> None:
        model, model_id, tail = self.split_model(rest)
        if model is None:
            return self._hf_not_found("Repository not found")
        files = self.hub.files(model)
        kind, _, remainder = tail.partition("/")
        revision, _, sub = (unquote(remainder).partition("/") if kind in ("revision", "tree") else ("", "", ""))
        if not kind:
            revision = self.hub.revisions[-1]
        if kind not in ("", "revision", "tree"):
            return self.send_json(404, {"error": f"Unsupported path {tail}"})
        if not self.hub.revision_ok(revision, files):
            return self._hf_not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
        commit = self.hub.commit(files)
        if kind in ("", "revision"):
            owner, name = model_id.split("/", 1)
            siblings = [{"rfilename": f.path, "size": f.size} for f in files]
            return self.send_json(200, {
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
            if entry.is_lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
            out[entry.path] = item
        return self.send_json(200, list(out.values()))

    def route_hf_resolve(self, method: str, path: str) -> None:
        repo_part, _, rest = path.partition("/resolve/")
        for prefix in ("models/",):  # /models/{id}/resolve/... is accepted by the Hub too
            if repo_part.startswith(prefix):
                repo_part = repo_part[len(prefix):]
        model = self.hub.model(repo_part)
        if model is None:
            return self._hf_not_found("Repository not found")
        revision, _, file_path = rest.partition("/")
        revision = unquote(revision)
        files = self.hub.files(model)
        if not self.hub.revision_ok(revision, files):
            return self._hf_not_found(f"Invalid rev id: {revision}", "RevisionNotFound")
        entry = next((f for f in files if f.path == file_path), None)
        if entry is None:
            return self._hf_not_found("Entry not found", "EntryNotFound")
        commit = self.hub.commit(files)
        etag = entry.sha256 if entry.is_lfs else entry.git_sha1
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
        if entry.is_lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        return self.send_file(model, entry, headers)
