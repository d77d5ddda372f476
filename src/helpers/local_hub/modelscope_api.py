"""The ModelScope half of the local test hub: what ``modelscope`` 1.40 / ``modelscope-hub`` 0.5 call.

Paths (under ``MODELSCOPE_ENDPOINT``):

* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=``: the file
  listing, ``{"Code": 200, "Data": {"Files": [...]}, "Success": true}`` with
  ``Path``/``Name``/``Type``/``Size``/``Sha256`` per entry; the client checks every
  downloaded file against ``Size`` and ``Sha256``;
* ``GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=``: the file bytes,
  honouring ``Range: bytes=N-`` (the client resumes a ``<file>.incomplete``);
* ``GET /api/v1/models/{owner}/{name}``, ``.../revisions`` and
  ``GET /openapi/v1/models/{owner}/{name}``: repository metadata;
* ``GET /api/v1/repos/internalAccelerationInfo``: the region probe sent before the first file.

Unknown models answer ``404`` with the real hub's JSON envelope (``"Message": "模型不存在"``),
so the client raises its real not-found error.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .catalogue import FileEntry
from .server import BaseHandler

__all__ = ["ModelScopeAPI"]


class ModelScopeAPI(BaseHandler):
    """Routes of the ModelScope API (mixed into :class:`helpers.local_hub.api.Handler`)."""

    # -- ModelScope envelopes ----------------------------------------------
    def ms_ok(self, data: Any) -> None:
        self.send_json(200, {"Code": 200, "Data": data, "Message": "success",
                             "RequestId": uuid.uuid4().hex, "Success": True})

    def ms_error(self, status: int, message: str) -> None:
        self.send_json(status, {"Code": status, "Data": None, "Message": message,
                                "RequestId": uuid.uuid4().hex, "Success": False})

    # ModelScope legacy API: /api/v1/models/{owner}/{name}[/...]
    def route_modelscope(self, method: str, rest: str, query: dict[str, str]) -> None:
        model, model_id, tail = self.split_model(rest)
        if model is None:
            # What modelscope.cn answers for an unknown (or private) model id.
            return self.ms_error(404, "模型不存在")
        files = self.hub.files(model)
        revision = query.get("Revision") or self.hub.revisions[0]
        commit = self.hub.commit(files)
        if tail == "":
            return self.ms_ok(self._ms_repo_info(model_id, files, commit))
        if tail == "revisions":
            branches = [{"Revision": r, "CommitId": commit, "CreatedAt": int(time.time())} for r in self.hub.revisions]
            return self.ms_ok({"RevisionMap": {"Branches": branches, "Tags": []}})
        if not self.hub.revision_ok(revision, files):
            return self.ms_error(404, f"Revision {revision} not found for model {model_id}")
        if tail == "repo/files":
            return self.ms_ok(self._ms_listing(files, query, commit))
        if tail == "repo" and method in ("GET", "HEAD"):
            file_path = (query.get("FilePath") or "").lstrip("/")
            entry = next((f for f in files if f.path == file_path), None)
            if entry is None:
                return self.ms_error(404, f"File {file_path or '(empty)'} not found in {model_id}@{revision}")
            return self.send_file(model, entry, {"X-Repo-Commit": commit})
        return self.ms_error(404, f"Unsupported path for {model_id}: {tail}")

    @staticmethod
    def _ms_repo_info(model_id: str, files: list[FileEntry], commit: str) -> dict[str, Any]:
        owner, name = model_id.split("/", 1)
        return {"Id": abs(hash(model_id)) % 10**8, "Name": name, "Path": owner, "ChineseName": "",
                "Visibility": 5, "IsPublished": 1, "Downloads": 0, "Stars": 0, "License": "Apache License 2.0",
                "LastUpdatedTime": int(max((f.mtime for f in files), default=time.time())),
                "Revision": "master", "CommitId": commit}

    def _ms_listing(self, files: list[FileEntry], query: dict[str, str], commit: str) -> dict[str, Any]:
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
    def route_openapi(self, rest: str) -> None:
        model, model_id, tail = self.split_model(rest)
        if model is None or tail:
            return self.send_json(404, {"success": False, "code": "ResourceNotFound",
                                        "message": f"Model {model_id} not found", "request_id": uuid.uuid4().hex})
        owner, name = model_id.split("/", 1)
        return self.send_json(200, {"success": True, "request_id": uuid.uuid4().hex,
                                    "data": {"id": model_id, "owner": owner, "name": name, "private": False}})
