"""The N-model frontier and AIQ on hand-made tables, every number worked out by hand."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from routers.decision.choice import ChoiceRule
from routers.evaluation.multi_model import (
    aiq,
    cost_weight_sweep,
    hull_value,
    judge,
    match_models,
    quality_matrix,
    router_points,
    single_model_points,
    upper_hull,
)

MODELS = ["cheap", "mid", "dear"]
# USD per prompt on each model, the same for every prompt.
COSTS = np.array([0.001, 0.005, 0.02])
# True quality: p1 any model answers; p2 needs mid; p3 needs dear; p4 gets 0 / 0.5 / 1.
TRUE = np.array(
    [
        [1.0, 1.0, 1.0],
        [0.0, 1.0, 1.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.5, 1.0],
    ]
)
PREDICTED = np.array(
    [
        [0.9, 0.5, 0.6],
        [0.2, 0.8, 0.9],
        [0.1, 0.3, 0.95],
        [0.5, 0.55, 0.6],
    ]
)


def long_table(quality: np.ndarray, models: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": f"q{i}", "prompt": f"prompt {i}", "model": m, "score": quality[i, j]}
            for i in range(quality.shape[0])
            for j, m in enumerate(models)
        ]
    )


def test_upper_hull_drops_points_below_it_and_stops_at_the_best():
    # (2, .4) lies under the line from (1, .5) to (3, .9); (4, .8) costs more than the best.
    hc, hq = upper_hull([2, 1, 4, 3], [0.4, 0.5, 0.8, 0.9])
    assert hc.tolist() == [1, 3] and hq.tolist() == [0.5, 0.9]
    # (1, .2) is under the chord (0, 0)-(2, 1), which is at .5 there.
    hc, hq = upper_hull([0, 1, 2], [0, 0.2, 1])
    assert hc.tolist() == [0, 2] and hq.tolist() == [0, 1]
    # At one cost only the best point counts.
    hc, hq = upper_hull([1, 1, 2], [0.3, 0.6, 0.7])
    assert hc.tolist() == [1, 2] and hq.tolist() == [0.6, 0.7]


def test_hull_value_is_zero_left_linear_inside_flat_right():
    hc, hq = np.array([1.0, 3.0]), np.array([0.5, 0.9])
    assert hull_value(hc, hq, [0.5, 1.0, 2.0, 3.0, 10.0]) == pytest.approx(
        [0.0, 0.5, 0.7, 0.9, 0.9]
    )


def test_aiq_is_the_area_under_the_hull_over_the_range():
    costs, qualities = [2, 1, 4, 3], [0.4, 0.5, 0.8, 0.9]
    # [0, 1]: nothing that cheap, 0; [1, 3]: trapezoid 2 * (.5 + .9) / 2; [3, 5]: flat .9.
    assert aiq(costs, qualities, 0, 5) == pytest.approx((0 + 1.4 + 1.8) / 5)
    # Inside the hull only: [1.5, 2.5] is linear, its mean is the value at 2.
    assert aiq(costs, qualities, 1.5, 2.5) == pytest.approx(0.7)
    assert aiq(costs, qualities, 2, 2) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="empty"):
        aiq(costs, qualities, 3, 1)


def test_single_models_and_the_zero_router_by_hand():
    cost, quality = single_model_points(TRUE, COSTS)
    assert cost == pytest.approx(COSTS)
    assert quality == pytest.approx([1 / 4, 2.5 / 4, 4 / 4])
    # Slopes cheap->mid .375/.004 = 93.75 > mid->dear .375/.015 = 25: all three are vertices.
    hc, hq = upper_hull(cost, quality)
    assert hc == pytest.approx(COSTS) and hq == pytest.approx([0.25, 0.625, 1.0])


def test_choices_at_given_cost_weights_and_margins():
    def shares(rule: ChoiceRule) -> list[float]:
        row = router_points(PREDICTED, TRUE, COSTS, [rule], MODELS).iloc[0]
        return [row[f"share:{m}"] for m in MODELS]

    # lambda 0: the best predicted model: cheap, dear, dear, dear.
    assert shares(ChoiceRule(cost_weight=0)) == [0.25, 0, 0.75]
    # lambda 20 charges .02 / .1 / .4: p1 .88 .40 .20 cheap; p2 .18 .70 .50 mid;
    # p3 .08 .20 .55 dear; p4 .48 .45 .20 cheap.
    at20 = router_points(PREDICTED, TRUE, COSTS, [ChoiceRule(cost_weight=20)], MODELS).iloc[0]
    assert [at20[f"share:{m}"] for m in MODELS] == [0.5, 0.25, 0.25]
    assert at20["cost"] == pytest.approx((0.001 + 0.005 + 0.02 + 0.001) / 4)
    assert at20["quality"] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert at20["rule"] == "cost_weight=20"
    # lambda 100 charges .1 / .5 / 2: p1 cheap; p2 .1 .3 -1.1 mid; p3 0 -.2 cheap; p4 cheap.
    assert shares(ChoiceRule(cost_weight=100)) == [0.75, 0.25, 0]
    # margin .05: p1 cheap; p2 only dear within; p3 dear; p4 .55 within .05 of .6: mid.
    assert shares(ChoiceRule(margin=0.05)) == [0.25, 0.25, 0.5]
    # margin .15: p2 mid (.8 >= .75); p3 dear; p4 cheap (.5 >= .45).
    assert shares(ChoiceRule(margin=0.15)) == [0.5, 0.25, 0.25]


def test_the_default_sweep_runs_from_the_best_model_to_the_cheapest():
    rules = cost_weight_sweep(np.broadcast_to(COSTS, TRUE.shape))
    weights = [r.cost_weight for r in rules]
    assert weights[0] == 0 and weights == sorted(weights)
    # 1 / the smallest cost gap (cheap to mid, .004) outweighs any quality edge.
    assert weights[-1] == pytest.approx(1 / 0.004)
    last = router_points(TRUE, TRUE, COSTS, rules[-1:], MODELS).iloc[0]
    assert last["share:cheap"] == 1.0
    assert cost_weight_sweep(np.full((3, 2), 0.01)) == [ChoiceRule(cost_weight=0.0)]


def test_oracle_zero_router_and_aiq_by_hand():
    report = judge(PREDICTED, TRUE, COSTS, MODELS, rule=ChoiceRule(cost_weight=20))
    lo, hi = 0.001, 0.02
    assert (report.cost_lo, report.cost_hi) == pytest.approx((lo, hi))
    # Zero router: trapezoids cheap->mid and mid->dear.
    zero = (0.004 * (0.25 + 0.625) / 2 + 0.015 * (0.625 + 1.0) / 2) / (hi - lo)
    assert report.zero_router_aiq == pytest.approx(zero)
    assert report.zero_router["quality"].tolist() == pytest.approx([0.25, 0.625, 1.0])
    # Oracle: from all-cheap (.004, 1 summed over the four prompts), each prompt's upgrades in
    # order of quality per dollar: p2 cheap->mid (1 / .004 = 250), p4 cheap->mid
    # (.5 / .004 = 125), p3 cheap->dear (1 / .019 = 52.6), p4 mid->dear (.5 / .015 = 33.3).
    vertices = [(0.004, 1.0), (0.008, 2.0), (0.012, 2.5), (0.031, 3.5), (0.046, 4.0)]
    vertices = [(c / 4, q / 4) for c, q in vertices]
    oracle = {(round(c, 12), round(q, 12)) for c, q in report.oracle[["cost", "quality"]].values}
    assert oracle == {(round(c, 12), round(q, 12)) for c, q in vertices}
    area = sum((c1 - c0) * (q0 + q1) / 2 for (c0, q0), (c1, q1) in itertools.pairwise(vertices))
    area += (hi - vertices[-1][0]) * 1.0  # flat at the best quality up to the dearest model
    assert report.oracle_aiq == pytest.approx(area / (hi - lo))
    assert report.zero_router_aiq <= report.router_aiq <= report.oracle_aiq
    assert report.at_rule["cost"] == pytest.approx(0.027 / 4)
    assert report.at_rule["quality"] == pytest.approx(0.75)
    # Every oracle point is on its own hull; JSON carries it all.
    assert report.oracle["on_hull"].all()
    data = json.loads(json.dumps(report.as_dict()))
    assert data["aiq"]["oracle"] == pytest.approx(report.oracle_aiq)
    assert [m["model"] for m in data["single_models"]] == MODELS
    frontier = report.frontier()
    assert set(frontier["curve"]) == {"model", "zero router", "router", "oracle"}


def test_quality_matrix_keeps_well_covered_models_and_complete_prompts():
    rng = np.random.default_rng(0)
    quality = rng.uniform(size=(10, 3)).round(2)
    table = long_table(quality, ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1", "rare"])
    table = table[~((table["model"] == "rare") & (table["id"] > "q1"))]  # 2 of 10 prompts
    # Mixtral misses one prompt: 90 % kept, that prompt left out.
    table = table[~((table["model"] == "mixtral-8x7b-instruct-v0.1") & (table["id"] == "q3"))]
    # A second spelling of GPT-4 Turbo on q0 is averaged with the first.
    extra = {"id": "q0", "prompt": "prompt 0", "model": "openai/gpt-4-1106-preview", "score": 1.0}
    table = pd.concat([table, pd.DataFrame([extra])], ignore_index=True)
    matrix = quality_matrix(table)
    assert matrix.models == ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    assert matrix.dropped_models == ["rare"] and matrix.dropped_prompts == 1
    assert "q3" not in matrix.keys and len(matrix.keys) == 9
    row = matrix.keys.index("q0")
    assert matrix.quality[row, 0] == pytest.approx((quality[0, 0] + 1.0) / 2)
    assert matrix.prompts[row] == "prompt 0"
    assert match_models(["Mixtral-8x7B-Instruct-v0.1", "claude-2"], matrix.models) == [1, None]


def test_quality_matrix_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="missing model"):
        quality_matrix(pd.DataFrame({"prompt": ["a"], "score": [1.0]}))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quality_matrix(pd.DataFrame({"prompt": ["a"], "model": ["m"], "score": [7.0]}))
