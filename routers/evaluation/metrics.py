"""Cost-quality evaluation of strong-vs-weak routers, as in the RouteLLM paper.

The curve construction follows ../shared/data/README.md ("How the paper draws the cost-quality
curve") so that our APGR / CPT numbers are comparable with the paper's tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

# numpy.trapezoid only exists from numpy 2.0; the project still admits numpy 1.26.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


@dataclass(frozen=True)
class Curve:
    """Points of a cost-quality curve, sorted by ``strong_fraction`` (0..1) ascending."""

    strong_fraction: np.ndarray
    quality: np.ndarray
    thresholds: np.ndarray


@dataclass
class Metrics:
    apgr: float
    cpt20: float
    cpt50: float
    cpt80: float
    auc: float
    # Percent of strong calls at which quality first reaches 95 % of the strong model's own
    # quality (the paper's headline operating point); 0 when the weak model already does.
    strong_at_95: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _as_arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float).ravel() for a in arrays]
    if len({a.size for a in out}) != 1 or out[0].size == 0:
        raise ValueError(f"need equal-length, non-empty arrays, got sizes {[a.size for a in out]}")
    if not all(np.isfinite(a).all() for a in out):
        raise ValueError("scores must be finite")
    return out


def cost_quality_curve(
    scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray
) -> Curve:
    """Decile-threshold curve: the higher a prompt's score, the likelier it goes strong."""
    scores, weak, strong = _as_arrays(scores, weak_scores, strong_scores)
    # duplicates="drop" matters for tied router scores (e.g. binary classifiers), where some
    # deciles coincide and pandas would otherwise raise.
    _, edges = pd.qcut(scores, 10, retbins=True, duplicates="drop")
    # The last edge is the maximum score, so ">=" there would still route the top prompt(s);
    # the paper uses ">" for it to get the all-weak (0 %) point. With a single edge (constant
    # scores) that edge must also serve as the ">=" (all-strong) point.
    ge_edges = edges[:-1] if len(edges) > 1 else edges
    cuts = [(t, scores >= t) for t in ge_edges] + [(edges[-1], scores > edges[-1])]
    thresholds = np.array([t for t, _ in cuts])
    routed = np.array([np.where(to_strong, strong, weak).mean() for _, to_strong in cuts])
    fraction = np.array([to_strong.mean() for _, to_strong in cuts])
    order = np.argsort(fraction, kind="stable")
    return Curve(fraction[order], routed[order], thresholds[order])


def auc(curve: Curve) -> float:
    return float(_trapezoid(curve.quality, curve.strong_fraction))


def apgr(curve: Curve, weak_mean: float, strong_mean: float) -> float:
    """Share of the weak-to-strong quality gap recovered, averaged over the curve's x points."""
    x = curve.strong_fraction
    auc_weak = _trapezoid(np.full_like(x, weak_mean), x)
    auc_strong = _trapezoid(np.full_like(x, strong_mean), x)
    return float((auc(curve) - auc_weak) / (auc_strong - auc_weak))


def cpt(curve: Curve, weak_mean: float, strong_mean: float, p: float) -> float:
    """Percent of strong calls needed to recover ``p`` (0..1) of the quality gap.

    The paper calls ``np.interp(target, quality, strong_percent)``, which silently returns
    nonsense when quality is not increasing (np.interp requires increasing xp), and real curves
    dip. We return the smallest strong share at which the piecewise-linear curve first reaches
    the target, i.e. interpolate on the first segment that crosses it. On an increasing curve
    this equals the paper's np.interp, clamping included (0 % below the first point, the last
    point's share if the target is never reached).
    """
    target = weak_mean + p * (strong_mean - weak_mean)
    x = curve.strong_fraction * 100.0
    q = curve.quality
    reached = np.flatnonzero(q >= target)
    if reached.size == 0:
        return float(x[-1])
    j = reached[0]
    if j == 0:
        return float(x[0])
    return float(np.interp(target, q[j - 1 : j + 1], x[j - 1 : j + 1]))


def _metrics(curve: Curve, weak_mean: float, strong_mean: float) -> Metrics:
    return Metrics(
        apgr=apgr(curve, weak_mean, strong_mean),
        cpt20=cpt(curve, weak_mean, strong_mean, 0.2),
        cpt50=cpt(curve, weak_mean, strong_mean, 0.5),
        cpt80=cpt(curve, weak_mean, strong_mean, 0.8),
        auc=auc(curve),
        strong_at_95=strong_share_for_quality(curve, weak_mean, strong_mean, 0.95),
    )


def strong_share_for_quality(
    curve: Curve, weak_mean: float, strong_mean: float, fraction: float
) -> float:
    """Percent of strong calls needed to reach `fraction` of the strong model's quality."""
    target = fraction * strong_mean
    if weak_mean >= target:
        return 0.0
    return cpt(curve, weak_mean, strong_mean, (target - weak_mean) / (strong_mean - weak_mean))


def cost_saving(strong_percent: float, weak_to_strong_cost: float) -> float:
    """Share of the all-strong bill saved when `strong_percent` of requests go to the strong
    model and a weak request costs `weak_to_strong_cost` of a strong one."""
    weak_share = 1.0 - strong_percent / 100.0
    return weak_share * (1.0 - weak_to_strong_cost)


def evaluate_scores(
    scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray
) -> tuple[Curve, Metrics]:
    scores, weak, strong = _as_arrays(scores, weak_scores, strong_scores)
    curve = cost_quality_curve(scores, weak, strong)
    return curve, _metrics(curve, weak.mean(), strong.mean())


def evaluate_random(
    weak_scores: np.ndarray, strong_scores: np.ndarray, runs: int = 10, seed: int = 0
) -> tuple[Curve, Metrics]:
    """The paper's random baseline: uniform scores, metrics and curve averaged over runs."""
    weak, strong = _as_arrays(weak_scores, strong_scores)
    rng = np.random.default_rng(seed)
    results = [evaluate_scores(rng.uniform(0.0, 1.0, weak.size), weak, strong) for _ in range(runs)]
    # Continuous scores give 11 distinct deciles, so point i means the same decile in every run.
    fields = ("strong_fraction", "quality", "thresholds")
    curve = Curve(*(np.mean([getattr(c, f) for c, _ in results], axis=0) for f in fields))
    dicts = [m.to_dict() for _, m in results]
    return curve, Metrics(**{k: float(np.mean([d[k] for d in dicts])) for k in dicts[0]})


def oracle_curve(
    weak_scores: np.ndarray, strong_scores: np.ndarray, max_points: int = 200
) -> Curve:
    """Best achievable curve: send prompts to strong in order of their quality gain.

    ``thresholds`` holds the gain of the last prompt sent strong (+inf for none).
    """
    weak, strong = _as_arrays(weak_scores, strong_scores)
    n = weak.size
    gain = np.sort(strong - weak)[::-1]
    quality = (weak.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    thresholds = np.concatenate([[np.inf], gain])
    # A per-prompt curve has a point per prompt; plotting only needs its shape.
    keep = np.unique(np.linspace(0, n, min(n + 1, max_points + 1)).round().astype(int))
    return Curve(keep / n, quality[keep], thresholds[keep])


def apgr_spread(
    scores: np.ndarray, weak_scores: np.ndarray, strong_scores: np.ndarray, runs: int = 200
) -> float:
    """The standard deviation of APGR over bootstrap resamples of the prompts: how much of a
    number is which prompts a source happened to hold."""
    scores, weak, strong = _as_arrays(scores, weak_scores, strong_scores)
    rng = np.random.default_rng(0)
    values = []
    for _ in range(runs):
        idx = rng.integers(0, len(scores), len(scores))
        values.append(evaluate_scores(scores[idx], weak[idx], strong[idx])[1].apgr)
    return float(np.std(values))
