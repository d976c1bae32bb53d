"""An N-model router's rows, without Ray: the quality columns, the model the one rule picks,
its quality and cost, bad rows, and the per-model totals of a routed file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from batch_jobs.route import (
    COST_COLUMN,
    MODEL_COLUMN,
    QUALITY_COLUMN,
    ROUTE_COLUMN,
    ModelChoice,
    RouteStats,
    choose_table,
    route_table,
    summarize_models,
)
from routers.decision.choice import ChoiceRule, choose, prompt_costs
from routers.prices import ModelPrice, Prices, estimate_tokens
from routers.prompts import ERROR_COLUMN, quality_table
from routers.protocol import is_multi

MODELS = ["big-model", "mid-model", "small-model"]
PRICES = Prices(
    models={
        "big-model": ModelPrice(input_per_million=10.0, output_per_million=30.0),
        "mid-model": ModelPrice(input_per_million=1.0, output_per_million=2.0),
        "small-model": ModelPrice(input_per_million=0.1, output_per_million=0.2),
    }
)


class HandMadeQualities:
    """An N-model router whose qualities follow from the prompt's text (different per prompt
    and per model), so that the rules pick different models on different rows."""

    def __init__(self, models: Sequence[str]) -> None:
        self.models = list(models)
        self.calls = 0

    def qualities(self, prompts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        seeds = np.array([sum(map(ord, p)) for p in prompts], dtype=np.float64)
        columns = [(np.sin(seeds * (m + 1.7)) + 1.0) / 2.0 for m in range(len(self.models))]
        return np.stack(columns, axis=1).reshape(len(prompts), len(self.models))

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        q = self.qualities(prompts)
        return 0.5 + 0.5 * (q[:, 0] - q[:, -1])


def _prompts(n: int) -> list[str]:
    return [
        f"question {i}: " + "why " * (i % 9) + "is the sky blue?" * (1 + i % 3) for i in range(n)
    ]


def _table(prompts: list[str | None]) -> pa.Table:
    return pa.table({"id": list(range(len(prompts))), "prompt": prompts})


def test_the_hand_made_router_is_an_n_model_router():
    assert is_multi(HandMadeQualities(MODELS))


def test_quality_columns_follow_the_router_models_and_bad_rows_are_null():
    prompts: list[str | None] = _prompts(12)
    prompts[3], prompts[7] = None, "  "
    router = HandMadeQualities(["small-model", "big-model"])
    table = quality_table(router, _table(prompts))

    assert table.column_names == [
        "id",
        "prompt",
        "quality:small-model",
        "quality:big-model",
        "error",
    ]
    good = [i for i in range(12) if i not in (3, 7)]
    expected = router.qualities([prompts[i] for i in good])
    got = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names[2:4]]
    )
    np.testing.assert_allclose(got[good], expected)
    assert table.column("quality:big-model").null_count == 2
    errors = table.column(ERROR_COLUMN).to_pylist()
    assert (errors[3], errors[7]) == ("prompt is null", "prompt is empty")


def test_a_router_that_gives_the_wrong_shape_is_an_error():
    class Short(HandMadeQualities):
        def qualities(self, prompts: Sequence[str]) -> np.ndarray:
            return super().qualities(prompts)[:, :1]

    with pytest.raises(ValueError, match="shape"):
        quality_table(Short(MODELS), _table(_prompts(3)))


@pytest.mark.parametrize(
    "rule",
    [
        ChoiceRule(),
        ChoiceRule(margin=0.0),
        ChoiceRule(margin=0.3),
        ChoiceRule(cost_weight=0.0),
        ChoiceRule(cost_weight=200.0),
        ChoiceRule(cost_weight=1e6),
    ],
    ids=lambda r: r.describe(),
)
def test_each_row_goes_to_the_model_choose_picks(rule: ChoiceRule):
    prompts: list[str | None] = _prompts(40)
    prompts[11] = None
    router = HandMadeQualities(MODELS)
    choice = ModelChoice.of(MODELS, PRICES, rule)
    routed = choose_table(router, _table(prompts), "prompt", choice)

    good = [i for i in range(40) if i != 11]
    texts = [prompts[i] for i in good]
    q = router.qualities(texts)
    costs = prompt_costs(PRICES.for_models(MODELS), texts)
    picks = choose(q, costs, rule)
    chosen = routed.column(MODEL_COLUMN).to_pylist()
    assert [chosen[i] for i in good] == [MODELS[k] for k in picks]
    assert routed.column(ROUTE_COLUMN).to_pylist() == chosen
    rows = np.arange(len(good))
    quality = routed.column(QUALITY_COLUMN).to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(quality[good], q[rows, picks])
    cost = routed.column(COST_COLUMN).to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(cost[good], costs[rows, picks])
    # The bad row: no model, no quality, no cost, and the reason.
    assert chosen[11] is None and routed.column(COST_COLUMN)[11].as_py() is None
    assert routed.column(ERROR_COLUMN)[11].as_py() == "prompt is null"
    # The quality columns only when asked for.
    assert not any(c.startswith("quality:") for c in routed.column_names)


def test_the_rules_spread_rows_over_models_and_a_high_cost_weight_picks_the_cheapest():
    router, table = HandMadeQualities(MODELS), _table(_prompts(60))
    best = choose_table(
        router, table, "prompt", ModelChoice.of(MODELS, PRICES, ChoiceRule(margin=0))
    )
    assert len(set(best.column(MODEL_COLUMN).to_pylist())) == 3
    cheap = ModelChoice.of(MODELS, PRICES, ChoiceRule(cost_weight=1e6))
    assert set(choose_table(router, table, "prompt", cheap).column(MODEL_COLUMN).to_pylist()) == {
        "small-model"
    }


def test_quality_columns_on_request_and_an_empty_table_has_the_same_columns():
    choice = ModelChoice.of(MODELS, PRICES, quality_columns=True)
    routed = choose_table(HandMadeQualities(MODELS), _table(_prompts(5)), "prompt", choice)
    assert routed.column_names == [
        "id", "prompt", "quality:big-model", "quality:mid-model", "quality:small-model",
        "error", "model", "route", "quality", "estimated_cost",
    ]  # fmt: skip
    # A file without rows is written without loading a router, with the same schema.
    empty = route_table(None, _table([]).cast(routed.select(["id", "prompt"]).schema), None,
                        "prompt", PRICES, choice)  # fmt: skip
    assert empty.schema == routed.schema and empty.num_rows == 0


def test_every_model_needs_a_price():
    prices = Prices(models={"big-model": PRICES.models["big-model"]})
    with pytest.raises(ValueError, match=r"no price for model 'mid-model'.*models:"):
        ModelChoice.of(MODELS, prices)


def test_a_price_is_found_under_any_spelling_of_the_model():
    prices = Prices(models={"mixtral-8x7b-instruct-v0.1": PRICES.models["mid-model"]})
    choice = ModelChoice.of(["mistralai/Mixtral-8x7B-Instruct-v0.1"], prices)
    assert choice.prices == [PRICES.models["mid-model"]]
    assert choice.models == ["mistralai/Mixtral-8x7B-Instruct-v0.1"]


def test_the_totals_count_rows_and_cost_per_model():
    prompts: list[str | None] = _prompts(30)
    prompts[0] = None
    choice = ModelChoice.of(MODELS, PRICES, ChoiceRule(margin=0.1))
    routed = choose_table(HandMadeQualities(MODELS), _table(prompts), "prompt", choice)
    stats = RouteStats("prompt", PRICES, choice)(routed)
    summary = summarize_models(stats, choice, "out/")

    chosen = routed.column(MODEL_COLUMN).to_pylist()
    cost = routed.column(COST_COLUMN).to_pylist()
    assert (summary["rows"], summary["errors"]) == (30, 1)
    tokens = estimate_tokens(prompts[1:])
    for model, price in zip(MODELS, PRICES.for_models(MODELS), strict=True):
        row = summary["models"][model]
        assert row["rows"] == chosen.count(model)
        assert row["share"] == pytest.approx(chosen.count(model) / 29)
        mine = sum(c for m, c in zip(chosen, cost, strict=True) if m == model)
        assert row["estimated_cost_usd"] == pytest.approx(mine)
        assert row["cost_if_all_usd"] == pytest.approx(price.cost(tokens).sum())
    assert sum(r["rows"] for r in summary["models"].values()) == 29
    assert summary["estimated_cost_usd"] == pytest.approx(sum(c for c in cost if c is not None))
    assert summary["rule"] == "margin=0.1"
