"""routers: learned strong-vs-weak LLM routers (RouteLLM), as a plain library.

No Ray, no HTTP. Everything outside this package uses only `Router.score` and `load_router`.
"""

from routers.checkpoint import CheckpointError, default_router_dir, load_router, save_router
from routers.protocol import BaseRouter, Router, route

__all__ = [
    "BaseRouter",
    "CheckpointError",
    "Router",
    "default_router_dir",
    "load_router",
    "route",
    "save_router",
]
