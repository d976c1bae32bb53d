"""Routers that ship inside the package, by name. Wherever a router is named (the CLI's
`--router`, a serve config's `path`, a batch job), a shipped name or a router directory works."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).parent
# `minilm` reads each prompt with MiniLM. `fast` is its student: a static table distilled
# from the same encoder (`routeray distill`) and a small network trained on minilm's scores
# (the `distilled` kind). It routes as well as its teacher at a fraction of the work per
# prompt, so it is also the default.
SHIPPED: dict[str, Path] = {
    "default": _PACKAGE / "fast_router",
    "fast": _PACKAGE / "fast_router",
    "minilm": _PACKAGE / "minilm_router",
    # N models: every model's predicted quality on a prompt (the `multi` kind), for routing
    # among many models by price (routers.decision.choice).
    "multi": _PACKAGE / "multi_router",
}


def default_router_dir() -> Path:
    """The shipped default router, committed inside the package."""
    return SHIPPED["default"]


def router_path(name_or_dir: str | Path | None) -> Path:
    """The directory of a shipped router (`default` when None) or the directory given. A
    shipped name wins over a directory of that name in the working directory: write
    `./default` for that one."""
    if name_or_dir is None:
        return SHIPPED["default"]
    if isinstance(name_or_dir, str) and name_or_dir in SHIPPED:
        return SHIPPED[name_or_dir]
    return Path(name_or_dir)
