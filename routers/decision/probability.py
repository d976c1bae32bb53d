"""Scores that are probabilities: a monotone map from a router's raw score to P(strong wins).

A router kind's own output ranks prompts, but its level need not mean anything (the shipped
routers squeeze every prompt into a band around 0.69). A `ProbabilityCurve` fitted by isotonic
regression on labelled prompts the router never trained on turns the raw score into the
observed rate at which the strong model wins. It is stored as plain lists in the router
directory's config.json (`"probability"`), and `routers.checkpoint.load_router` wraps the
router in a `CalibratedRouter` so that `score()` returns the probability.

The curve is strictly increasing everywhere (linear between the isotonic blocks' centres,
exponential tails beyond the outer knots), so the order of any two distinct scores, and
therefore every ranking metric (APGR, CPT), is exactly what the raw router gives.

A win is the strong side's outcome strictly better than the weak side's on the prompt
(`win_labels`): a tie is not a win, since the weak model did as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from routers.protocol import BaseRouter, LoadOptions

# Probabilities are kept off 0 and 1: a block of only wins (or losses) says "rarely lost",
# not "never", and the tails need room to keep rising.
MARGIN = 1e-3
METHOD = "isotonic"
# The least share of the fitting weight one knot stands for.
MIN_BLOCK = 0.05


class ProbabilityCurve(BaseModel):
    """Knots of a strictly increasing piecewise-linear map from raw score to probability."""

    model_config = ConfigDict(extra="forbid")

    raw: list[float] = Field(description="raw scores at the knots, strictly increasing")
    probability: list[float] = Field(description="P(strong wins) at the knots, in (0, 1)")
    method: str = METHOD
    fitted_on: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _strictly_increasing(self) -> ProbabilityCurve:
        x, y = np.asarray(self.raw, float), np.asarray(self.probability, float)
        if x.size < 2 or x.size != y.size:
            raise ValueError("a probability curve needs at least two knots, as many x as y")
        if not (np.all(np.isfinite(x)) and np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)):
            raise ValueError("a probability curve's knots must be finite and strictly increasing")
        if not (y[0] > 0.0 and y[-1] < 1.0):
            raise ValueError("a probability curve's values must lie strictly between 0 and 1")
        return self

    def __call__(self, scores: np.ndarray | Sequence[float]) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        x, y = np.asarray(self.raw), np.asarray(self.probability)
        out = np.interp(scores, x, y)
        # Beyond the outer knots, tails that leave them with the outer segments' slopes and
        # approach 0 and 1 hyperbolically: strictly increasing, bounded, and slow enough that
        # no two distinct scores far out underflow to the same value.
        low_slope = (y[1] - y[0]) / (x[1] - x[0])
        high_slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
        below, above = scores < x[0], scores > x[-1]
        out[below] = y[0] / (1.0 + (x[0] - scores[below]) * low_slope / y[0])
        out[above] = 1.0 - (1.0 - y[-1]) / (
            1.0 + (scores[above] - x[-1]) * high_slope / (1.0 - y[-1])
        )
        return out


def win_labels(weak_q: np.ndarray, strong_q: np.ndarray) -> np.ndarray:
    """1.0 where the strong side's outcome is strictly better than the weak side's, else 0.0
    (`routers.data.prompt_labels`' `weak_q`, `strong_q`)."""
    return (np.asarray(strong_q, float) > np.asarray(weak_q, float)).astype(np.float64)


def fit_isotonic(
    scores: np.ndarray,
    wins: np.ndarray,
    weights: np.ndarray | None = None,
    fitted_on: Mapping[str, Any] | None = None,
    min_block: float = MIN_BLOCK,
) -> ProbabilityCurve:
    """The isotonic fit of `wins` (0/1, or a win probability) on raw `scores`, as the knots
    of its blocks: each block's weighted mean score and its win rate. A block holding less
    than `min_block` of the total weight is pooled with a neighbour (the end blocks of an
    isotonic fit are often a handful of prompts that all won or all lost, which says little),
    as long as two blocks remain.
    ValueError when the scores do not rank the wins at all (one block: no curve can rise)."""
    from sklearn.isotonic import IsotonicRegression

    scores = np.asarray(scores, dtype=np.float64)
    wins = np.asarray(wins, dtype=np.float64)
    weights = np.ones_like(scores) if weights is None else np.asarray(weights, np.float64)
    keep = np.isfinite(scores) & np.isfinite(wins) & (weights > 0)
    scores, wins, weights = scores[keep], wins[keep], weights[keep]
    order = np.argsort(scores, kind="stable")
    scores, wins, weights = scores[order], wins[order], weights[order]
    fitted = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(
        scores, wins, sample_weight=weights
    )
    level = fitted.predict(scores)
    # A block: a run of equal fitted values (equal neighbours are one block, not two).
    starts = np.flatnonzero(np.r_[True, np.diff(level) != 0])
    blocks = [
        [float(w), float(wx), float(wy)]
        for w, wx, wy in zip(
            np.add.reduceat(weights, starts),
            np.add.reduceat(weights * scores, starts),
            np.add.reduceat(weights * level, starts),
            strict=True,
        )
    ]
    blocks = _pooled(blocks, min_block * float(weights.sum()))
    knots_x = np.array([wx / w for w, wx, _ in blocks])
    knots_y = np.array([wy / w for w, _, wy in blocks])
    if knots_x.size < 2:
        raise ValueError(
            f"the scores do not rank the wins ({scores.size} prompts, one isotonic block): "
            "no increasing curve fits"
        )
    knots_y = MARGIN + (1.0 - 2.0 * MARGIN) * knots_y
    return ProbabilityCurve(
        raw=knots_x.tolist(),
        probability=knots_y.tolist(),
        method=METHOD,
        fitted_on=dict(fitted_on or {}),
    )


def _pooled(blocks: list[list[float]], least: float) -> list[list[float]]:
    """Blocks ([weight, weight x score, weight x level]) with the lightest one below `least`
    pooled into its lighter neighbour until none is, or two are left (a curve needs two
    knots): pooling neighbours of an increasing sequence keeps it increasing."""
    while len(blocks) > 2:
        lightest = min(range(len(blocks)), key=lambda i: blocks[i][0])
        if blocks[lightest][0] >= least:
            break
        neighbours = [i for i in (lightest - 1, lightest + 1) if 0 <= i < len(blocks)]
        other = min(neighbours, key=lambda i: blocks[i][0])
        first, second = sorted((lightest, other))
        blocks[first] = [a + b for a, b in zip(blocks[first], blocks[second], strict=True)]
        del blocks[second]
    return blocks


class CalibratedRouter(BaseRouter):
    """A router whose `score` is its raw score mapped through a `ProbabilityCurve`.

    Everything else (its kind, config, weights, attributes such as `strong_model`) is the
    wrapped router's, so saving it writes the same directory plus the curve."""

    def __init__(self, raw: BaseRouter, probability: ProbabilityCurve) -> None:
        self.raw = raw
        self.probability = probability
        self.kind = raw.kind  # type: ignore[misc]  # the wrapped kind, per instance
        self.trains_on = raw.trains_on  # type: ignore[misc]

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return self.probability(self.raw.score(prompts))

    def config(self) -> dict[str, Any]:
        return self.raw.config()

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.raw.tensors()

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this wrapper does not define: the wrapped router's attributes.
        if name in ("raw", "probability"):
            raise AttributeError(name)
        return getattr(self.raw, name)

    @classmethod
    def train(cls, table: Any, *, seed: int = 0, **options: Any) -> BaseRouter:
        raise TypeError("train the router kind itself; calibrate it afterwards")

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: LoadOptions
    ) -> BaseRouter:
        raise TypeError("routers.checkpoint.load_router builds a CalibratedRouter")


def uncalibrated(router: BaseRouter) -> BaseRouter:
    """The router's raw scorer: what a probability curve is fitted on."""
    return router.raw if isinstance(router, CalibratedRouter) else router


def probability_curve(router: BaseRouter) -> ProbabilityCurve | None:
    return router.probability if isinstance(router, CalibratedRouter) else None
