"""A routing decision as the endpoint acts on it: the backends to try, in order.

One shape for both router types, so the ingress has one path: a two-model router's decision is
[strong] or [weak] by score >= threshold (with the weak model after a failed strong call, as
`backends.errors.may_fall_back` allows); an N-model router's is every model it chooses among,
in the order `routers.decision.choice.preference_order` gives (the chosen model first, then the
one the same rule picks when that fails, and so on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from backends import BackendError
from backends.errors import may_fall_back, service_failed
from routers.decision.choice import ChoiceRule, choose, preference_order


@dataclass
class Plan:
    """`order`: backend keys ("strong", "weak", or a model name), the first the chosen one.
    `route`: how the request reached its backend, for headers and metrics ("strong"/"weak"
    for a two-model router, the chosen model's name for an N-model one, "direct" for a request
    that named a backend). `multi`: decided by an N-model router. `headers`: what the decision
    says about itself."""

    order: list[str]
    route: str
    multi: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def may_try_next(
        self, failed: str, failure: BackendError, *, fallback_to_weak: bool, fallback_to_next: bool
    ) -> bool:
        """Whether the backend after `failed` in `order` may answer instead."""
        position = self.order.index(failed)
        if position + 1 >= len(self.order):
            return False
        if not self.multi:
            return may_fall_back(failed, self.route, failure, enabled=fallback_to_weak)
        # The same criterion as strong -> weak: a routed call whose service failed.
        return fallback_to_next and self.route != "direct" and service_failed(failure)


def direct_plan(backend: str) -> Plan:
    """A request that named a backend's model: that backend and no other."""
    return Plan([backend], "direct")


def two_model_plan(score: float, threshold: float) -> Plan:
    route = "strong" if score >= threshold else "weak"
    headers = {"x-routeray-score": f"{score:.6f}", "x-routeray-threshold": f"{threshold:.6f}"}
    return Plan(["strong", "weak"] if route == "strong" else ["weak"], route, headers=headers)


def multi_plan(
    models: Sequence[str],
    keys: Sequence[str],
    qualities: Sequence[float],
    costs: Sequence[float],
    rule: ChoiceRule,
) -> Plan:
    """An N-model decision for one prompt: `models` (names as configured), the `keys` of
    their backends, each one's predicted `qualities` and `costs` (USD of this prompt on it),
    all in the router's order."""
    ranked = preference_order(np.asarray(qualities), np.asarray(costs), rule)
    chosen = ranked[0]
    headers = {
        "x-routeray-score": f"{qualities[chosen]:.6f}",
        "x-routeray-cost": f"{costs[chosen]:.8f}",
        "x-routeray-rule": rule.describe(),
    }
    return Plan([keys[i] for i in ranked], models[chosen], multi=True, headers=headers)


def multi_decisions(
    models: Sequence[str], qualities: np.ndarray, costs: np.ndarray, rule: ChoiceRule
) -> list[dict[str, object]]:
    """Each prompt's entry in a `POST /v1/route` answer for an N-model router: `qualities`
    and `costs` are (prompts, models), in the router's order."""
    chosen = choose(qualities, costs, rule)
    return [
        {
            "route": models[c],
            "model": models[c],
            "qualities": {m: float(q) for m, q in zip(models, row, strict=True)},
            "cost_usd": float(cost_row[c]),
            "rule": rule.describe(),
        }
        for c, row, cost_row in zip(chosen, qualities, costs, strict=True)
    ]
