"""The model names that route, read the same way by the endpoint and the in-process Controller.

`router-<name>` routes at the router's recorded default threshold; `router-<name>-<threshold>`
(RouteLLM's spelling, e.g. `router-mf-0.116`) at that threshold; `router-<name>-<N>pct` (e.g.
`router-default-30pct`) at the threshold recorded for N % strong calls on real user prompts
(`routers.thresholds.threshold_for_share`). A percentage carries its unit in the name, so a
client cannot read a share as a threshold or the other way round.

An N-model router (`routers.decision.choice`) takes its rule's parameter the same way:
`router-<name>-lambda<L>` (cost weight L, quality points per US dollar, e.g.
`router-multi-lambda20`) or `router-<name>-margin<M>` (the cheapest model within M quality
points of the best, e.g. `router-multi-margin0.05`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass

from pydantic import ValidationError

from routers.decision.choice import ChoiceRule

PREFIX = "router-"
_PCT = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)pct$")
_RULE = re.compile(r"^(?P<form>lambda|margin)(?P<number>[0-9]+(?:\.[0-9]+)?)$")


class ModelNameError(ValueError):
    """A `router-...` name that cannot be served: `unknown` when no router has that name (a
    404 for an HTTP client), else a value that is not a threshold or a share (a 400)."""

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


@dataclass(frozen=True)
class RouterModel:
    """What a router model name asks for: a router, and at most one of a threshold or a
    strong share (a fraction in (0, 1)); neither means the router's recorded default."""

    router: str
    threshold: float | None = None
    strong_share: float | None = None
    # An N-model router's rule (routers.decision.choice.ChoiceRule), as the name gave it.
    rule: ChoiceRule | None = None


def router_model_names(routers: Collection[str]) -> list[str]:
    """`router-<name>` for every router name (aliases included), sorted."""
    return [f"{PREFIX}{n}" for n in sorted(routers)]


def _suffix(model: str, value: str) -> tuple[float | None, float | None]:
    """(threshold, strong share) from what follows the router's name."""
    pct = _PCT.match(value)
    if pct:
        share = float(pct["number"]) / 100.0
        if not 0.0 < share < 1.0:
            raise ModelNameError(
                f"strong share {value!r} in model {model!r} must be above 0pct and below 100pct"
            )
        return None, share
    try:
        threshold = float(value)
    except ValueError:
        raise ModelNameError(
            f"threshold {value!r} in model {model!r} is not a number (write a threshold such "
            "as 0.116 or a strong share such as 30pct; for an N-model router, lambda20 or "
            "margin0.05)"
        ) from None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ModelNameError(f"threshold {threshold} in model {model!r} is outside [0, 1]")
    return threshold, None


def parse_router_model(model: str, routers: Collection[str]) -> RouterModel | None:
    """The router model `model` names, or None when it does not start with `router-`.

    `routers` are the names served (aliases included); names may contain dashes, so the
    longest known name that fits wins. ModelNameError for an unknown router or a bad value.
    """
    if not model.startswith(PREFIX):
        return None
    rest = model[len(PREFIX) :]
    if rest in routers:
        return RouterModel(rest)
    name = next(
        (n for n in sorted(routers, key=len, reverse=True) if rest.startswith(n + "-")), None
    )
    if name is None:
        known = ", ".join(router_model_names(routers))
        raise ModelNameError(f"unknown router in model {model!r}; available: {known}", unknown=True)
    suffix = rest[len(name) + 1 :]
    rule = _RULE.match(suffix)
    if rule:
        field = "cost_weight" if rule["form"] == "lambda" else "margin"
        try:
            return RouterModel(name, rule=ChoiceRule(**{field: float(rule["number"])}))
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ModelNameError(f"{rule['form']} in model {model!r}: {reason}") from None
    threshold, share = _suffix(model, suffix)
    return RouterModel(name, threshold=threshold, strong_share=share)
