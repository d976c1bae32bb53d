"""`routeray eval` on a hand-made outcome table: an N-model router's AIQ against the zero
router's and the oracle's, worked out by hand in tests/support/hand_outcomes.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routeray.cli import app
from tests.support import hand_outcomes as hand

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-multi")
    router, prompts = hand.router_and_prompts(root / "router")
    return {
        "router": router,
        "table": hand.write_table(root / "outcomes.parquet", prompts),
        "prices": hand.write_prices(root / "prices.yaml"),
    }


def invoke(*args: object):
    return runner.invoke(app, ["eval", *(str(a) for a in args)])


def test_eval_reports_router_zero_router_and_oracle_aiq(setup, tmp_path: Path):
    out = tmp_path / "eval"
    result = invoke(
        "--data", setup["table"], "--router", setup["router"], "--prices", setup["prices"],
        "--cost-weight", "20", "--output", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "zero router" in result.output and "cost_weight=20" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    ((name, m),) = metrics.items()
    assert name == setup["router"].name
    assert m["aiq"]["zero_router"] == pytest.approx(hand.ZERO_ROUTER_AIQ)
    assert m["aiq"]["oracle"] == pytest.approx(hand.ORACLE_AIQ)
    assert 0 < m["aiq"]["router"] <= m["aiq"]["oracle"] + 1e-12
    single = {r["model"]: (r["cost"], r["quality"]) for r in m["single_models"]}
    for model, point in zip(hand.MODELS, hand.SINGLE, strict=True):
        assert single[model] == pytest.approx(point)
    # The router's point at the one rule asked for is one of its swept points' kind.
    assert m["at_rule"]["rule"] == "cost_weight=20"
    assert hand.LO <= m["at_rule"]["cost"] <= hand.HI
    assert (out / "outcomes.png").stat().st_size > 0


def test_eval_on_an_outcome_table_needs_prices_and_an_n_model_router(setup, tmp_path: Path):
    no_prices = invoke("--data", setup["table"], "--router", setup["router"], "--output", tmp_path)
    assert no_prices.exit_code == 2 and "--prices" in no_prices.output
    two_model = invoke(
        "--data", setup["table"], "--router", "default", "--prices", setup["prices"],
        "--output", tmp_path,
    )  # fmt: skip
    assert two_model.exit_code == 2 and "chooses between two models" in two_model.output
    both = invoke(
        "--data", setup["table"], "--router", setup["router"], "--prices", setup["prices"],
        "--cost-weight", "1", "--margin", "0.1", "--output", tmp_path,
    )  # fmt: skip
    assert both.exit_code != 0 and "not both" in both.output
