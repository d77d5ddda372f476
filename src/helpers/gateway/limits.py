"""What one request may cost the gateway: sizes, counts, time, and the work it may ask for (notebook 05).

A server that faces clients it does not control needs a bound on everything a client chooses:
how many bytes and headers it sends, how slowly it sends them, how long it idles, and how much
generation it asks for. Each bound is a field of :class:`Limits` with a default that no honest
client meets; the command line sets any of them with ``--limit NAME=VALUE``. Where a limit
is passed the client gets an OpenAI-shaped error with the status HTTP has for it:

=====================  ======  ==============================================================
limit                  status  when
=====================  ======  ==============================================================
``max_body_bytes``     413     the body (declared or read) is larger
``max_json_depth``     400     objects/arrays nested deeper than this
``max_header_bytes``   431     request line plus headers are larger
``max_headers``        431     more header lines than this
``max_url_bytes``      414     the request target (path and query) is longer
``header_timeout_s``   408     the request line and headers took longer to arrive
``body_timeout_s``     408     the body took longer to arrive (a client that declared more
                               bytes than it sends is one of these)
``idle_timeout_s``     (none)  a connection with no request in flight is closed after this
``max_connections``    503     more connections open at once (answered, then closed)
``max_n``              400     ``n`` (times the prompts of a batched ``/v1/completions``)
``max_tokens``         400     ``max_tokens``/``max_completion_tokens`` above this or above the
                               model's context (``max_model_len`` from the upstream)
=====================  ======  ==============================================================

The byte, header, time and connection limits are enforced where bytes arrive
(:mod:`helpers.gateway.connection`), before any route runs; the others in the routes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import GatewayError


@dataclass(frozen=True)
class Limits:
    """Bounds on one client's request; see the module's table. ``max_tokens=None``: the model's context."""

    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    max_url_bytes: int = 8 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 5.0
    max_connections: int = 1024
    max_n: int = 16
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "max_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise GatewayError(f"Limit {item.name}={value!r} must be a positive number.")
            if item.name.startswith("max_") and int(value) != value:
                raise GatewayError(f"Limit {item.name}={value!r} must be a whole number.")

    def replace(self, **changes: Any) -> "Limits":
        """A copy with ``changes``; unknown names are refused with the list of known ones."""
        unknown = sorted(set(changes) - set(names()))
        if unknown:
            raise GatewayError(f"Unknown limit(s) {', '.join(unknown)}: the limits are {', '.join(names())}.")
        return Limits(**{**{name: getattr(self, name) for name in names()}, **changes})


def names() -> tuple[str, ...]:
    return tuple(item.name for item in fields(Limits))


def parse_assignment(text: str) -> tuple[str, int | float]:
    """``"max_n=4"`` -> ``("max_n", 4)``; what is wrong is said in one sentence."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in names():
        raise GatewayError(f"{text!r} is not NAME=VALUE with NAME one of {', '.join(names())}.")
    kind = "number" if name.endswith("_s") else "whole number"
    try:
        number = float(value)
    except ValueError:
        raise GatewayError(f"{name}={value!r}: the value must be a {kind}.") from None
    if name.endswith("_s"):
        return name, number
    if not number.is_integer():
        raise GatewayError(f"{name}={value!r}: the value must be a {kind}.")
    return name, int(number)
