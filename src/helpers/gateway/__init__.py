"""An API gateway in front of vLLM's OpenAI-compatible servers (notebook 05).

One process between clients and one or more vLLM servers that adds what a server on its own
does not: API keys, routing and failover across upstreams, retries where they are safe,
OpenAI-shaped errors with a request id, custom request formats, Prometheus metrics::

    from helpers.gateway import start_gateway
    gateway = start_gateway([server], api_key_envs=["GATEWAY_KEY"])
    client = OpenAI(base_url=gateway.url_for("v1"), api_key=os.environ["GATEWAY_KEY"])

Modules, one idea each:

* :mod:`~helpers.gateway.config`: :class:`GatewayConfig`, the checked settings;
* :mod:`~helpers.gateway.app`: :func:`create_app`, routes, keys, error handlers;
* :mod:`~helpers.gateway.relay`: retries, failover, streams relayed as they arrive;
* :mod:`~helpers.gateway.upstreams`: upstream state and the routing policy;
* :mod:`~helpers.gateway.protocols`: custom formats (``/chat``, ``/generate``) and their registry;
* :mod:`~helpers.gateway.protocol_routes`: how a protocol's request becomes a chat completion;
* :mod:`~helpers.gateway.body`, :mod:`~helpers.gateway.api_errors`: reading bodies, shaping errors;
* :mod:`~helpers.gateway.metrics`: the Prometheus registry and the request observer;
* :mod:`~helpers.gateway.server`: :class:`GatewayServer` / :func:`start_gateway` for notebooks;
* :mod:`~helpers.gateway.cli`: ``python -m helpers.gateway``.
"""

from .app import create_app
from .config import POLICIES, GatewayConfig
from .protocols import PROTOCOLS, ChatProtocol, GenerateProtocol, Protocol
from .server import GatewayServer, start_gateway

__all__ = ["PROTOCOLS", "POLICIES", "ChatProtocol", "GatewayConfig", "GatewayServer", "GenerateProtocol",
           "Protocol", "create_app", "start_gateway"]
