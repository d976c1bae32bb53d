"""Where a router's scoring may run: in the process that takes the request, or on a batched
deployment of its own. Decided from the saved directory alone (no weights are read), so a
server can place a router before loading it."""

from __future__ import annotations

from pathlib import Path

from routers.checkpoint import _bundled_embedder, read_config
from routers.registry import router_class


def scores_lightly(router_dir: str | Path) -> bool:
    """Whether the router in `router_dir` scores a prompt in well under a millisecond on one
    core (its kind's `BaseRouter.scores_lightly` on its saved config)."""
    document = read_config(router_dir)
    kind = router_class(str(document.get("router")))
    return kind.scores_lightly(_bundled_embedder(document, Path(router_dir)))
