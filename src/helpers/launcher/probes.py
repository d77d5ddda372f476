"""Is a service ready, is it healthy: HTTP checks from the outside (notebook 06).

The supervisor asks :func:`is_ready` while a service starts; ``status`` asks :func:`check`
for each of a service's health paths and shows the answer (``/health 200``,
``/v1/models lists Qwen2.5-7B-Instruct``, ``/health: connection refused``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from ..server_probe import serves_model
from .plan import ServiceSpec

TIMEOUT_S = 2.0


def _get(url: str, api_key: str = "", timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET url``; raises OSError when nothing answers."""
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def is_ready(spec: ServiceSpec) -> bool:
    """The service answers ``ready_path`` with 200 (and lists ``spec.model``, when set)."""
    if spec.model:
        return serves_model(spec.host, spec.port, spec.model, spec.api_key or None, timeout=TIMEOUT_S)
    try:
        return _get(spec.url + spec.ready_path, spec.api_key)[0] == 200
    except OSError:
        return False


def check(url: str, path: str, *, model: str = "", api_key: str = "") -> tuple[bool, str]:
    """``(healthy, what was seen)`` for ``GET url+path``; ``/v1/models`` must list ``model``."""
    try:
        status, body = _get(url + path, api_key)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{path}: {reason}"
    if status != 200:
        hint = " (wrong or missing API key)" if status == 401 else ""
        return False, f"{path} {status}{hint}"
    if path.endswith("/models") and model:
        try:
            listed = [m.get("id") for m in json.loads(body).get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            return False, f"{path}: not a model listing"
        if model not in listed:
            return False, f"{path} lists {', '.join(map(str, listed)) or 'nothing'}, not {model}"
        return True, f"{path} lists {model}"
    return True, f"{path} 200"
