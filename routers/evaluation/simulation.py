"""What a router would have cost and delivered on historical traffic, at every threshold.

Every row has a cost and a quality under each model. Routing at threshold t sends the rows with
score >= t to the strong model, which is a prefix of the rows sorted by score, so the whole
sweep is one sort and two cumulative sums; each threshold is then a binary search.

Quality per row is the quality of the answer served:
- with `strong_score` / `weak_score` labels, that model's score (for example correctness);
- with a judged `winner` ("strong", "weak" or "tie"), 1 for the better answer, 0 for the worse,
  0.5 each for a tie;
- with no labels, the router's own belief: its score p = P(strong wins) if the row goes strong,
  1 - p if it goes weak. That is an estimate and is reported as one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from routers.evaluation.calibration import thresholds_for_shares

WINNER_QUALITY = {"strong": 1.0, "weak": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    strong_share: float
    cost: float
    cost_per_request: float
    saving: float  # against sending everything to the strong model
    saving_vs_weak: float  # negative: what routing costs over all-weak
    quality: float
    quality_vs_strong: float  # quality as a fraction of all-strong quality
    quality_is_estimate: bool

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def quality_labels(
    scores: np.ndarray,
    strong_score: np.ndarray | None = None,
    weak_score: np.ndarray | None = None,
    winner: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-row quality if served by the strong and by the weak model, and whether it is an
    estimate. Rows whose labels are missing fall back to the router's belief."""
    estimate_strong = np.asarray(scores, dtype=float)
    q_strong, q_weak = estimate_strong.copy(), 1.0 - estimate_strong
    labelled = np.zeros(len(q_strong), dtype=bool)
    if strong_score is not None and weak_score is not None:
        s, w = np.asarray(strong_score, float), np.asarray(weak_score, float)
        ok = ~(np.isnan(s) | np.isnan(w))
        q_strong[ok], q_weak[ok], labelled[ok] = s[ok], w[ok], True
    elif winner is not None:
        judged = np.array([WINNER_QUALITY.get(str(v).lower(), np.nan) for v in winner])
        ok = ~np.isnan(judged)
        q_strong[ok], q_weak[ok], labelled[ok] = judged[ok], 1.0 - judged[ok], True
    return q_strong, q_weak, not bool(labelled.all())


def thresholds_for(scores: np.ndarray, count: int) -> np.ndarray:
    """`count` thresholds whose strong shares spread evenly from 0 to 1 on these scores."""
    shares = np.linspace(0.0, 1.0, count)
    return thresholds_for_shares(scores, shares)


def sweep(
    scores: np.ndarray,
    thresholds: np.ndarray,
    cost_strong: np.ndarray,
    cost_weak: np.ndarray,
    quality_strong: np.ndarray,
    quality_weak: np.ndarray,
    quality_is_estimate: bool,
) -> list[CurvePoint]:
    """Cost and quality at every threshold: one sort, cumulative sums, binary searches."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    descending = scores[order]
    extra_cost = np.concatenate([[0.0], np.cumsum((cost_strong - cost_weak)[order])])
    extra_quality = np.concatenate([[0.0], np.cumsum((quality_strong - quality_weak)[order])])
    all_weak, all_strong = float(np.sum(cost_weak)), float(np.sum(cost_strong))
    weak_quality, strong_quality = float(np.sum(quality_weak)), float(np.sum(quality_strong))
    # Rows with score >= t are the first k of the descending order.
    ks = np.searchsorted(-descending, -np.asarray(thresholds, dtype=float), side="right")
    points = []
    for threshold, k in zip(thresholds, ks, strict=True):
        cost = all_weak + extra_cost[k]
        quality = weak_quality + extra_quality[k]
        points.append(
            CurvePoint(
                threshold=float(threshold),
                strong_share=k / n if n else 0.0,
                cost=cost,
                cost_per_request=cost / n if n else 0.0,
                saving=1.0 - cost / all_strong if all_strong else 0.0,
                saving_vs_weak=1.0 - cost / all_weak if all_weak else 0.0,
                quality=quality / n if n else 0.0,
                quality_vs_strong=quality / strong_quality if strong_quality else 0.0,
                quality_is_estimate=quality_is_estimate,
            )
        )
    return points


def pareto_front(costs: np.ndarray, qualities: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both cost (lower) and quality (higher)."""
    costs, qualities = np.asarray(costs, float), np.asarray(qualities, float)
    order = np.lexsort((-qualities, costs))  # cheapest first, best quality first among ties
    front = np.zeros(len(costs), dtype=bool)
    best = -np.inf
    for i in order:
        if qualities[i] > best:
            front[i] = True
            best = qualities[i]
    return front


def recommend(
    points: list[tuple[str, CurvePoint]],
    budget: float | None = None,
    quality_target: float | None = None,
) -> tuple[str, CurvePoint] | None:
    """The best (router, point) for a budget (highest quality within it) or a quality target
    (cheapest reaching that fraction of all-strong quality); None if nothing qualifies."""
    if (budget is None) == (quality_target is None):
        raise ValueError("give exactly one of a budget and a quality target")
    if budget is not None:
        within = [p for p in points if p[1].cost <= budget]
        return max(within, key=lambda p: (p[1].quality, -p[1].cost), default=None)
    reaching = [p for p in points if p[1].quality_vs_strong >= quality_target - 1e-12]
    return min(reaching, key=lambda p: (p[1].cost, -p[1].quality), default=None)
