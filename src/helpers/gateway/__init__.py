"""An API gateway in front of vLLM's OpenAI-compatible servers (notebook 05).

One process between clients and one or more vLLM servers that adds what a server on its own
does not: API keys, routing and failover across upstreams, retries where they are safe,
OpenAI-shaped errors with a request id, custom request formats, Prometheus metrics::

    from helpers.gateway import start_gateway
    gateway = start_gateway([server], api_key_envs=["GATEWAY_KEY"])
    client = OpenAI(base_url=gateway.url_for("v1"), api_key=os.environ["GATEWAY_KEY"])

Modules, one idea each:

* :mod:`~helpers.gateway.config`: :class:`GatewayConfig`, the checked settings;
* :mod:`~helpers.gateway.limits`: :class:`Limits`, what one client may send and ask for;
* :mod:`~helpers.gateway.connection`: those limits where the bytes arrive (uvicorn's protocol);
* :mod:`~helpers.gateway.app`: :func:`create_app`, routes, error handlers;
* :mod:`~helpers.gateway.passthrough`: the OpenAI routes, a plain ASGI app (the hot path);
* :mod:`~helpers.gateway.downstream`: the client's side: body, departure (cancels upstream), answers;
* :mod:`~helpers.gateway.request_fields`: ``stream``/``n``/``max_tokens`` read as vLLM reads them;
* :mod:`~helpers.gateway.keys`: API keys;
* :mod:`~helpers.gateway.relay`: retries, failover, streams relayed as they arrive;
* :mod:`~helpers.gateway.upstreams`: upstream state and the routing policy;
* :mod:`~helpers.gateway.protocols`: custom formats (``/chat``, ``/generate``) and their registry;
* :mod:`~helpers.gateway.protocol_routes`: how a protocol's request becomes a chat completion;
* :mod:`~helpers.gateway.body`, :mod:`~helpers.gateway.api_errors`: reading bodies, shaping errors;
* :mod:`~helpers.gateway.metrics`: the Prometheus registry and the request observer;
* :mod:`~helpers.gateway.server`: :class:`GatewayServer` / :func:`start_gateway` for notebooks;
* :mod:`~helpers.gateway.cli`: ``python -m helpers.gateway``.
"""

import importlib
from typing import TYPE_CHECKING, Any

#: What ``from helpers.gateway import NAME`` finds, and in which module. Imported on first use,
#: so ``python -m helpers.gateway`` starts light and a Ctrl+C while it imports ends in one line.
_EXPORTS = {"create_app": "app", "POLICIES": "config", "GatewayConfig": "config", "Limits": "limits",
            "PROTOCOLS": "protocols", "ChatProtocol": "protocols", "GenerateProtocol": "protocols",
            "Protocol": "protocols", "GatewayServer": "server", "start_gateway": "server"}

__all__ = ["PROTOCOLS", "POLICIES", "ChatProtocol", "GatewayConfig", "GatewayServer", "GenerateProtocol", "Limits",
           "Protocol", "create_app", "start_gateway"]

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app
    from .config import POLICIES, GatewayConfig
    from .limits import Limits
    from .protocols import PROTOCOLS, ChatProtocol, GenerateProtocol, Protocol
    from .server import GatewayServer, start_gateway


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'helpers.gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
