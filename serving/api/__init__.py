"""tpuserve.serving.api: the OpenAI-compatible HTTP server (protocol, handlers, app), vLLM's shape."""

from tpuserve.serving.api.context import ServingContext
from tpuserve.serving.api.server import build_app

__all__ = ["ServingContext", "build_app"]
