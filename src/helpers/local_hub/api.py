"""Which URL of the local test hub goes to which protocol: one port speaks both hubs' APIs."""

from __future__ import annotations

from .huggingface_api import HuggingFaceAPI
from .modelscope_api import ModelScopeAPI

__all__ = ["Handler"]


class Handler(ModelScopeAPI, HuggingFaceAPI):
    """The request handler :class:`helpers.local_hub.LocalModelHub` serves with."""

    def route(self, method: str, path: str, query: dict[str, str]) -> None:
        if path == "/api/v1/repos/internalAccelerationInfo":
            # No intra-cloud (Alibaba Cloud VPC) route: the client uses the public one.
            return self.ms_ok({"InternalRegionQueryAddress": ""})
        if path.startswith("/api/v1/models/"):
            return self.route_modelscope(method, path[len("/api/v1/models/"):], query)
        if path.startswith("/openapi/v1/models/"):
            return self.route_openapi(path[len("/openapi/v1/models/"):])
        if path.startswith("/api/models/"):
            return self.route_hf_api(method, path[len("/api/models/"):], query)
        if "/resolve/" in path:
            return self.route_hf_resolve(method, path.lstrip("/"))
        return self.send_json(404, {"Code": 404, "Message": f"Not found: {path}", "Success": False})
