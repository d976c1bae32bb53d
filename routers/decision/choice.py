"""Which of N models answers a prompt: the one decision rule every N-model route uses.

Given each model's predicted quality on a prompt, q_m in [0, 1] (an N-model router's
`qualities`), and what the prompt would cost on it, c_m in US dollars (`prompt_costs`: the
prices in `prices.yaml` and the prompt's token estimate), the rule picks

- **cost weight** (`cost_weight`, lambda, in quality points per US dollar): argmax_m
  q_m - lambda * c_m. lambda = 0 is "the best model"; a large lambda is "the cheapest". At
  lambda = 10, paying one more cent per prompt must buy 0.1 more quality.
- **margin** (`margin`, in quality points): the cheapest model whose predicted quality is
  within `margin` of the best model's on that prompt. margin = 0 is "the best model"; a
  margin of 1 is "the cheapest".

Ties go to the cheaper model, then to the one listed first. When the chosen model fails, the
next is the one the same rule picks among the models left (`preference_order`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from routers.prices import ModelPrice, estimate_tokens

DEFAULT_MARGIN = 0.05


class ChoiceRule(BaseModel):
    """One of a cost weight or a margin (neither: a margin of DEFAULT_MARGIN)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cost_weight: float | None = Field(
        default=None,
        ge=0.0,
        description="lambda in argmax q - lambda * cost: quality points given up per US dollar "
        "saved on a prompt (0: the best model; large: the cheapest).",
    )
    margin: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="The cheapest model whose predicted quality is within this many quality "
        "points of the best one's (0: the best model; 1: the cheapest).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> ChoiceRule:
        if self.cost_weight is not None and self.margin is not None:
            raise ValueError("give a cost_weight or a margin, not both")
        return self

    @property
    def effective_margin(self) -> float | None:
        if self.cost_weight is not None:
            return None
        return DEFAULT_MARGIN if self.margin is None else self.margin

    def describe(self) -> str:
        if self.cost_weight is not None:
            return f"cost_weight={self.cost_weight:g}"
        return f"margin={self.effective_margin:g}"


def prompt_costs(
    prices: Sequence[ModelPrice], prompts: Sequence[str] | None = None, *, tokens=None
) -> np.ndarray:
    """(n prompts, n models) US dollars: each prompt's input tokens (estimated from its text,
    or `tokens`) at each model's input price, plus the model's mean answer length at its
    output price."""
    if tokens is None:
        tokens = estimate_tokens(list(prompts or []))
    tokens = np.asarray(tokens, dtype=np.float64)
    return np.stack([np.asarray(p.cost(tokens), np.float64) for p in prices], axis=1).reshape(
        len(tokens), len(prices)
    )


def _check(qualities: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(qualities, dtype=np.float64)
    c = np.broadcast_to(np.asarray(costs, dtype=np.float64), q.shape)
    if q.ndim != 2 or q.shape[1] == 0:
        raise ValueError(f"qualities must be (prompts, models), got shape {q.shape}")
    return q, c


def choose(
    qualities: np.ndarray,
    costs: np.ndarray,
    rule: ChoiceRule | None = None,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """The index of the model each prompt goes to. `qualities` and `costs` are (n, M) (costs
    may be one row of M, the same for every prompt); `available` (n, M) or (M,) booleans
    leave models out (at least one per prompt must stay)."""
    rule = rule or ChoiceRule()
    q, c = _check(qualities, costs)
    ok = np.ones(q.shape, bool) if available is None else np.broadcast_to(available, q.shape)
    if not ok.any(axis=1).all():
        raise ValueError("every prompt needs at least one model to choose from")
    margin = rule.effective_margin
    if margin is None:
        value = np.where(ok, q - rule.cost_weight * c, -np.inf)
        best = value.max(axis=1, keepdims=True)
        # Within float noise of the best counts as a tie, so a hand computation agrees.
        eligible = value >= best - 1e-12
    else:
        best = np.where(ok, q, -np.inf).max(axis=1, keepdims=True)
        eligible = ok & (q >= best - margin - 1e-12)
    # Among the eligible: the cheapest, then the first listed.
    masked_cost = np.where(eligible, c, np.inf)
    cheapest = masked_cost.min(axis=1, keepdims=True)
    first = eligible & (masked_cost <= cheapest)
    return first.argmax(axis=1)


def preference_order(
    qualities: np.ndarray, costs: np.ndarray, rule: ChoiceRule | None = None
) -> list[int]:
    """All models for one prompt (`qualities`, `costs` of length M), in the order the rule
    would pick them as each one before fails: the chosen model first, then fallbacks."""
    q = np.asarray(qualities, dtype=np.float64).reshape(1, -1)
    c = np.asarray(costs, dtype=np.float64).reshape(1, -1)
    left = np.ones(q.shape[1], bool)
    order: list[int] = []
    while left.any():
        pick = int(choose(q, c, rule, available=left[None, :])[0])
        order.append(pick)
        left[pick] = False
    return order
