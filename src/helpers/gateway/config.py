"""What one gateway needs to know: its upstreams, its keys, its limits (notebook 05).

:class:`GatewayConfig` is plain data, checked once when it is made; :func:`helpers.gateway.create_app`
builds an app from it, and the command line (``python -m helpers.gateway``) builds it from options.
Keys are fields that ``repr`` leaves out, so printing a configuration never shows a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GatewayError
from .limits import Limits

POLICIES = ("least-in-flight", "round-robin")
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0


def normalize_upstream(url: str) -> str:
    """``http://host:8000/v1/`` -> ``http://host:8000``: routes are added by the gateway."""
    text = str(url).strip().rstrip("/")
    if text.endswith("/v1"):
        text = text[:-3]
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise GatewayError(f"Upstream {url!r} is not an http(s) URL: use e.g. http://127.0.0.1:8000 "
                           "(the address of a vLLM server, with or without /v1).")
    return text


@dataclass(frozen=True)
class GatewayConfig:
    """One gateway: where requests go, who may send them, how hard to try.

    ``api_keys``: clients must send one of them (``Authorization: Bearer KEY``) on every route
    but ``/health`` and ``/metrics``; none means no check. ``upstream_api_key`` is what the
    gateway itself sends upstream. ``retries``: extra attempts after a connect error or a
    502/503, made only before the client received anything; ``backoff_s`` doubles each time
    the same upstream is tried again. ``protocols`` are names in
    :data:`helpers.gateway.protocols.PROTOCOLS`; each becomes the route ``/NAME``. ``limits``
    bound what one client may send and ask for (:class:`~helpers.gateway.limits.Limits`).
    """

    upstreams: tuple[str, ...]
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    upstream_api_key: str | None = field(default=None, repr=False)
    policy: str = "least-in-flight"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    limits: Limits = field(default_factory=Limits)
    protocols: tuple[str, ...] = ("chat", "generate")

    def __post_init__(self) -> None:
        upstreams = (self.upstreams,) if isinstance(self.upstreams, str) else tuple(self.upstreams)
        if not upstreams:
            raise GatewayError("A gateway needs at least one upstream: pass the URL of a vLLM server, "
                               "e.g. upstreams=('http://127.0.0.1:8000',).")
        object.__setattr__(self, "upstreams", tuple(normalize_upstream(url) for url in upstreams))
        object.__setattr__(self, "api_keys", tuple(key for key in self.api_keys if key))
        object.__setattr__(self, "protocols", tuple(self.protocols))
        if self.policy not in POLICIES:
            raise GatewayError(f"policy={self.policy!r} is not a routing policy: use one of {', '.join(POLICIES)}.")
        if not isinstance(self.limits, Limits):
            raise GatewayError(f"limits={self.limits!r} must be a helpers.gateway.limits.Limits.")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise GatewayError(f"{name}={getattr(self, name)!r} must be a positive number.")
        if not (isinstance(self.retries, int) and self.retries >= 0) or self.backoff_s < 0:
            raise GatewayError(f"retries={self.retries!r} and backoff_s={self.backoff_s!r} must be >= 0 "
                               "(retries an integer).")
