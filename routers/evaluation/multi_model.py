"""Judging an N-model router on labelled outcomes: RouterBench's cost-quality frontier and AIQ.

A labelled table in the long outcome format (`prompt, model, score`, optionally `id`: the
format of the outcome tables in `../shared/data/train`) becomes a true quality matrix, prompts
by models (`quality_matrix`). Every cost is the mean US dollars per prompt
(`routers.decision.choice.prompt_costs`), every quality the mean true score of the answers
served. On that matrix:

- each model alone is one point (`single_model_points`);
- the **zero router** (RouterBench) is the best fixed random mixture of models: the upper,
  non-decreasing convex hull of the single models' points (`upper_hull`);
- a router's points are its choices (`routers.decision.choice.choose`) over a sweep of rules,
  scored with the true qualities (`router_points`; `cost_weight_sweep` gives a default sweep
  from "the best model" to "every prompt to its cheapest model"); the **oracle** is the same
  with the true qualities as the prediction;
- **AIQ** (average improvement in quality, RouterBench) is the area under the non-decreasing
  convex hull of a curve's points over [cost_lo, cost_hi], the cheapest and the dearest single
  model's mean cost, divided by the width of that range (`aiq`).

`judge` does all of it and returns a `MultiModelReport`; `judge_table` does it for a router's
predictions on a labelled table and prices (what `routeray eval` and `simulate` run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from routers.data.model_names import normalize_model_name
from routers.decision.choice import ChoiceRule, choose, prompt_costs
from routers.prices import Prices

# A model is judged only if it labels at least this share of the table's prompts; a prompt
# only if every judged model labels it (a quality matrix with holes has no true frontier).
MIN_COVERAGE = 0.9
DEFAULT_SWEEP = 200
# The sweep's smallest positive cost weight trades at most this many quality points on any
# prompt: below it every choice is the best model's, as at 0.
_NEGLIGIBLE_QUALITY = 1e-3


@dataclass(frozen=True)
class QualityMatrix:
    """True quality (score in [0, 1]) of every kept model on every kept prompt."""

    keys: list[str]  # a prompt's `id`, else its text
    prompts: list[str]
    models: list[str]  # as the table spells them
    quality: np.ndarray  # (prompts, models)
    dropped_models: list[str] = field(default_factory=list)  # under MIN_COVERAGE
    dropped_prompts: int = 0  # some kept model has no score for them


def quality_matrix(table: pd.DataFrame, min_coverage: float = MIN_COVERAGE) -> QualityMatrix:
    """The true quality matrix of a long table (`prompt, model, score` [+ `id`]).

    Missing cells: a model that scores fewer than `min_coverage` of the prompts is left out,
    then every prompt some remaining model has no score for. Two rows for one prompt and one
    model (two spellings of one model under the name normaliser, say) are averaged.
    """
    missing = [c for c in ("prompt", "model", "score") if c not in table.columns]
    if missing:
        raise ValueError(
            f"a labelled N-model table needs the columns prompt, model, score; missing "
            f"{', '.join(missing)}"
        )
    frame = table.loc[table["score"].notna(), [c for c in ("id", "prompt", "model", "score")
                                               if c in table.columns]].copy()  # fmt: skip
    if frame.empty:
        raise ValueError("the labelled table has no scored rows")
    scores = frame["score"].astype(float)
    if ((scores < 0) | (scores > 1)).any():
        raise ValueError("scores must lie in [0, 1] (scale a grade before judging on it)")
    frame["score"] = scores
    frame["key"] = frame["id"].astype(str) if "id" in frame.columns else frame["prompt"]
    frame["canonical"] = frame["model"].astype(str).map(normalize_model_name)
    # The first spelling seen names the model in every report.
    spelling = frame.drop_duplicates("canonical").set_index("canonical")["model"].astype(str)
    wide = frame.pivot_table(index="key", columns="canonical", values="score", aggfunc="mean")
    coverage = wide.notna().mean(axis=0)
    kept = [m for m in spelling.index if coverage.get(m, 0.0) >= min_coverage]
    dropped = [str(spelling[m]) for m in spelling.index if m not in kept]
    if not kept:
        raise ValueError(f"no model scores at least {min_coverage:.0%} of the prompts")
    complete = wide[kept].dropna(axis=0, how="any")
    if complete.empty:
        raise ValueError("no prompt is scored by every model kept")
    text = frame.drop_duplicates("key").set_index("key")["prompt"]
    return QualityMatrix(
        keys=[str(k) for k in complete.index],
        prompts=[str(text[k]) for k in complete.index],
        models=[str(spelling[m]) for m in kept],
        quality=complete.to_numpy(dtype=np.float64),
        dropped_models=dropped,
        dropped_prompts=len(wide) - len(complete),
    )


def match_models(wanted: Sequence[str], available: Sequence[str]) -> list[int | None]:
    """For each name in `wanted`, the index of the same model in `available` under the name
    normaliser, or None."""
    index = {normalize_model_name(m): i for i, m in enumerate(available)}
    return [index.get(normalize_model_name(m)) for m in wanted]


def single_model_points(true_q: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each model alone: (mean cost per prompt, mean quality), two arrays of length M."""
    q = np.asarray(true_q, dtype=np.float64)
    c = np.broadcast_to(np.asarray(costs, dtype=np.float64), q.shape)
    return c.mean(axis=0), q.mean(axis=0)


def upper_hull(costs: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The vertices, cheapest first, of the upper non-decreasing convex hull of the points:
    the best quality any random mixture of them reaches at each cost, up to the best point
    (spending more than that buys nothing: `hull_value` holds it flat to the right)."""
    c, q = np.asarray(costs, np.float64), np.asarray(qualities, np.float64)
    ok = np.isfinite(c) & np.isfinite(q)
    c, q = c[ok], q[ok]
    if not len(c):
        raise ValueError("no points to take the hull of")
    hull: list[tuple[float, float]] = []
    for i in np.lexsort((-q, c)):  # cheapest first; at one cost, the best quality first
        x, y = float(c[i]), float(q[i])
        if hull and x == hull[-1][0]:
            continue
        # Andrew's monotone chain: drop the last vertex while it does not turn clockwise.
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0:
                hull.pop()
            else:
                break
        hull.append((x, y))
    hc, hq = np.array(hull).T
    top = int(np.argmax(hq))  # a concave chain rises to its first maximum, then falls
    return hc[: top + 1], hq[: top + 1]


def hull_value(hull_c: np.ndarray, hull_q: np.ndarray, at: Sequence[float] | float) -> np.ndarray:
    """The hull as a function of cost: linear between vertices, flat at the best quality to
    the right of the last vertex (a bigger budget may buy the best point), and 0 to the left of
    the first (no point is that cheap: nothing is answered)."""
    x = np.atleast_1d(np.asarray(at, np.float64))
    value = np.interp(x, hull_c, hull_q)
    value[x < hull_c[0]] = 0.0
    return value


def aiq(
    costs: Sequence[float], qualities: Sequence[float], cost_lo: float, cost_hi: float
) -> float:
    """RouterBench's AIQ: the area under the points' upper non-decreasing convex hull
    (`hull_value`: 0 left of the cheapest point, flat at the best quality right of the best
    point) over [cost_lo, cost_hi], divided by cost_hi - cost_lo; the hull's value at cost_lo
    when the range is a single cost."""
    if cost_hi < cost_lo:
        raise ValueError(f"cost range [{cost_lo}, {cost_hi}] is empty")
    hc, hq = upper_hull(costs, qualities)
    if cost_hi == cost_lo:
        return float(hull_value(hc, hq, cost_lo)[0])
    edges = np.unique(np.clip(np.concatenate([hc, [cost_lo, cost_hi]]), cost_lo, cost_hi))
    # No vertex lies inside a piece, so the hull is linear on it and its midpoint gives the
    # exact area (and steps over the jump from 0 at the first vertex).
    middles = (edges[:-1] + edges[1:]) / 2
    area = float(np.sum(np.diff(edges) * hull_value(hc, hq, middles)))
    return area / (cost_hi - cost_lo)


def cost_weight_sweep(costs: np.ndarray, count: int = DEFAULT_SWEEP) -> list[ChoiceRule]:
    """Cost weights from 0 (the best model) up to one at which every prompt goes to its
    cheapest model, geometrically spaced in between (`count` rules in all).

    Qualities lie in [0, 1], so a weight of 1 / (the smallest cost gap between a prompt's
    cheapest model and another) outweighs any quality edge; the smallest positive weight
    trades at most _NEGLIGIBLE_QUALITY quality points on any prompt.
    """
    c = np.atleast_2d(np.asarray(costs, np.float64))
    gaps = c - c.min(axis=1, keepdims=True)
    positive = gaps[gaps > 0]
    if not positive.size or count < 2:
        return [ChoiceRule(cost_weight=0.0)]
    top = 1.0 / float(positive.min())
    low = min(_NEGLIGIBLE_QUALITY / float(positive.max()), top)
    weights = np.unique(np.concatenate([[0.0], np.geomspace(low, top, count - 1)]))
    return [ChoiceRule(cost_weight=float(w)) for w in weights]


def router_points(
    predicted: np.ndarray,
    true_q: np.ndarray,
    costs: np.ndarray,
    rules: Sequence[ChoiceRule],
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per rule: the rule, the mean cost and true quality of the models it chooses
    from the `predicted` qualities, and each model's share of the prompts (`share:<model>`)."""
    q = np.asarray(true_q, np.float64)
    p = np.asarray(predicted, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"predicted qualities {p.shape} and true qualities {q.shape} differ")
    c = np.broadcast_to(np.asarray(costs, np.float64), q.shape)
    names = list(models) if models is not None else [str(i) for i in range(q.shape[1])]
    rows = np.arange(q.shape[0])
    out = []
    for rule in rules:
        chosen = choose(p, c, rule)
        shares = np.bincount(chosen, minlength=q.shape[1]) / len(chosen)
        out.append(
            {
                "rule": rule.describe(),
                "cost_weight": rule.cost_weight,
                "margin": rule.effective_margin,
                "cost": float(c[rows, chosen].mean()),
                "quality": float(q[rows, chosen].mean()),
                **{f"share:{m}": float(s) for m, s in zip(names, shares, strict=True)},
            }
        )
    return pd.DataFrame(out)


def _on_hull(points: pd.DataFrame) -> np.ndarray:
    hc, hq = upper_hull(points["cost"], points["quality"])
    vertices = set(zip(hc.tolist(), hq.tolist(), strict=True))
    return np.array(
        [(c, q) in vertices for c, q in zip(points["cost"], points["quality"], strict=True)]
    )


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        return None if isinstance(value, float) and np.isnan(value) else value

    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


@dataclass
class MultiModelReport:
    """An N-model router judged on one labelled table (see the module docstring)."""

    models: list[str]
    prompts: int
    single: pd.DataFrame  # model, cost, quality
    cost_lo: float
    cost_hi: float
    zero_router: pd.DataFrame  # cost, quality: the hull's vertices
    router: pd.DataFrame  # router_points over the sweep, plus on_hull
    oracle: pd.DataFrame  # the same with the true qualities as the prediction
    router_aiq: float
    zero_router_aiq: float
    oracle_aiq: float
    at_rule: dict[str, Any] | None = None  # the router's point at one given rule

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: numbers as floats, a rule's unused parameter as None."""
        return {
            "models": self.models,
            "prompts": self.prompts,
            "cost_range": [self.cost_lo, self.cost_hi],
            "aiq": {
                "router": self.router_aiq,
                "zero_router": self.zero_router_aiq,
                "oracle": self.oracle_aiq,
            },
            "at_rule": self.at_rule,
            "single_models": _records(self.single),
            "zero_router": _records(self.zero_router),
            "router": _records(self.router),
            "oracle": _records(self.oracle),
        }

    def frontier(self) -> pd.DataFrame:
        """Every point in one long table: `curve` is "model", "zero router", "router" or
        "oracle"; `name` the model for single-model rows."""
        parts = [
            self.single.assign(curve="model", name=self.single["model"]).drop(columns="model"),
            self.zero_router.assign(curve="zero router", name="zero router", on_hull=True),
            self.router.assign(curve="router", name="router"),
            self.oracle.assign(curve="oracle", name="oracle"),
        ]
        frame = pd.concat(parts, ignore_index=True)
        first = ["curve", "name", "rule", "cost_weight", "margin", "cost", "quality", "on_hull"]
        return frame[[c for c in first if c in frame] + [c for c in frame if c not in first]]


def judge(
    predicted: np.ndarray,
    true_q: np.ndarray,
    costs: np.ndarray,
    models: Sequence[str],
    rules: Sequence[ChoiceRule] | None = None,
    rule: ChoiceRule | None = None,
) -> MultiModelReport:
    """Router, zero router and oracle AIQ and every model's point. `rules` is the sweep
    (default `cost_weight_sweep(costs)`), used for the router and the oracle alike; `rule`, if
    given, adds the router's point at that one rule."""
    q = np.asarray(true_q, np.float64)
    c = np.broadcast_to(np.asarray(costs, np.float64), q.shape)
    rules = list(rules) if rules is not None else cost_weight_sweep(c)
    single_c, single_q = single_model_points(q, c)
    lo, hi = float(single_c.min()), float(single_c.max())
    single = pd.DataFrame({"model": list(models), "cost": single_c, "quality": single_q})
    zc, zq = upper_hull(single_c, single_q)
    router = router_points(predicted, q, c, rules, models)
    oracle = router_points(q, q, c, rules, models)
    router["on_hull"], oracle["on_hull"] = _on_hull(router), _on_hull(oracle)
    at_rule = None
    if rule is not None:
        at_rule = _records(router_points(predicted, q, c, [rule], models))[0]
    return MultiModelReport(
        models=list(models),
        prompts=q.shape[0],
        single=single,
        cost_lo=lo,
        cost_hi=hi,
        zero_router=pd.DataFrame({"cost": zc, "quality": zq}),
        router=router,
        oracle=oracle,
        router_aiq=aiq(router["cost"], router["quality"], lo, hi),
        zero_router_aiq=aiq(single_c, single_q, lo, hi),
        oracle_aiq=aiq(oracle["cost"], oracle["quality"], lo, hi),
        at_rule=at_rule,
    )


def judge_table(
    table: pd.DataFrame,
    router_models: Sequence[str],
    predict: Callable[[list[str]], np.ndarray],
    prices: Prices,
    *,
    rule: ChoiceRule | None = None,
    sweep_size: int | None = None,
) -> tuple[MultiModelReport, dict[str, Any]]:
    """Judge a router on a labelled long table: `predict(prompts)` gives its (prompts,
    router_models) qualities, `prices` each model's price. Only the models both the table
    (`quality_matrix`) and the router know are judged, the router choosing among them alone;
    costs are estimated from each prompt's text (`prompt_costs`). Returns the report and what
    was left out of it."""
    matrix = quality_matrix(table)
    columns = match_models(router_models, matrix.models)
    common = [(m, c) for m, c in zip(router_models, columns, strict=True) if c is not None]
    if len(common) < 2:
        raise ValueError(
            f"the table and the router share {len(common)} model(s); judging needs two. "
            f"Router: {', '.join(router_models)}; table: {', '.join(matrix.models)}"
        )
    models = [m for m, _ in common]
    true_q = matrix.quality[:, [c for _, c in common]]
    keep = [i for i, c in enumerate(columns) if c is not None]
    # Prices first: a missing one is an error before any prompt is scored.
    costs = prompt_costs(prices.for_models(models), matrix.prompts)
    predicted = np.asarray(predict(matrix.prompts), np.float64)[:, keep]
    rules = cost_weight_sweep(costs, sweep_size) if sweep_size else None
    report = judge(predicted, true_q, costs, models, rules=rules, rule=rule)
    judged = {c for _, c in common}
    left_out = {
        "table_models_under_coverage": matrix.dropped_models,
        "prompts_missing_a_score": matrix.dropped_prompts,
        "router_models_not_in_table": [
            m for m, c in zip(router_models, columns, strict=True) if c is None
        ],
        "table_models_router_lacks": [m for i, m in enumerate(matrix.models) if i not in judged],
    }
    return report, left_out
