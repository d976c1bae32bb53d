"""The `routeray` command line (and the demo it starts), and routeray inside an application:
`from routeray import Controller` (see routeray/controller/).

The Controller is imported on first use, so that the command line does not pay for it and
importing this package imports neither Ray nor the openai SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routeray.controller import (
        AsyncController,
        Controller,
        ControllerError,
        Decision,
        Routing,
    )

__all__ = ["AsyncController", "Controller", "ControllerError", "Decision", "Routing"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from routeray import controller

        return getattr(controller, name)
    raise AttributeError(f"module 'routeray' has no attribute {name!r}")
