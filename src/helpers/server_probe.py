"""Is a vLLM server there? Which processes run one, does a port serve a model (notebook 03).

Both look from the outside, so they also find servers this Python process did not start
(a leftover from an old kernel, a colleague's): :func:`running_server_pids` for the
"nothing left behind" checks, :func:`serves_model` for readiness.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .ports import connect_host
from .process import GUARD
from .server_command import API_SERVER_MODULE, option_values


def running_server_pids(port: int | None = None) -> list[int]:
    """PIDs of live processes running vLLM's API server on this machine (leftover check).

    All of them, not only this Python process's; the guards of :mod:`helpers.process` are not
    counted. ``port`` keeps those started with ``--port PORT``.
    """
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if (proc.info["status"] == psutil.STATUS_ZOMBIE or API_SERVER_MODULE not in cmdline
                    or str(GUARD) in cmdline):
                continue
            values = option_values(cmdline[cmdline.index(API_SERVER_MODULE):])
            if port is None or values.get("--port") == str(port):
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(pids)


def serves_model(host: str, port: int, model: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """True when ``GET /v1/models`` on ``host:port`` lists ``model``: this server, ready."""
    request = urllib.request.Request(f"http://{connect_host(host)}:{port}/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            listing = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    models = listing.get("data") if isinstance(listing, dict) else None
    return isinstance(models, list) and any(isinstance(m, dict) and m.get("id") == model for m in models)
