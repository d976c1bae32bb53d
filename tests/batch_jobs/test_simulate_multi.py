"""`routeray simulate` with an N-model router: its frontier on a hand-made outcome table,
on Ray, through the command line; the zero router and the oracle are worked out by hand in
tests/support/hand_outcomes.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.support import hand_outcomes as hand


def _points(rows) -> set[tuple[float, float]]:
    return {(round(r["cost"], 12), round(r["quality"], 12)) for r in rows}


def test_simulate_draws_the_frontier_against_every_model_the_zero_router_and_the_oracle(
    local_ray, tmp_path: Path
):
    from routeray.cli import app

    router, prompts = hand.router_and_prompts(tmp_path / "router")
    table = hand.write_table(tmp_path / "outcomes.parquet", prompts)
    prices = hand.write_prices(tmp_path / "prices.yaml")
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--router",
            str(router),
            "--input",
            str(table),
            "--prices",
            str(prices),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "zero router" in result.output and "oracle" in result.output

    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "multi" and summary["prompts"] == 4
    single = {r["model"]: (r["cost"], r["quality"]) for r in summary["single_models"]}
    assert set(single) == set(hand.MODELS)
    for model, (cost, quality) in zip(hand.MODELS, hand.SINGLE, strict=True):
        assert single[model] == pytest.approx((cost, quality))
    assert summary["cost_range"] == pytest.approx([hand.LO, hand.HI])
    assert _points(summary["zero_router"]) == _points(
        [{"cost": c, "quality": q} for c, q in hand.SINGLE]
    )
    assert _points(summary["oracle"]) == _points(
        [{"cost": c, "quality": q} for c, q in hand.ORACLE]
    )
    assert summary["aiq"]["zero_router"] == pytest.approx(hand.ZERO_ROUTER_AIQ)
    assert summary["aiq"]["oracle"] == pytest.approx(hand.ORACLE_AIQ)
    # Whatever the router predicts, its choices are assignments the oracle's hull bounds.
    assert summary["aiq"]["router"] <= summary["aiq"]["oracle"] + 1e-12
    router_rows = summary["router"]
    assert router_rows[0]["cost_weight"] == 0
    # The sweep ends where every prompt goes to the cheapest model.
    assert router_rows[-1][f"share:{hand.MODELS[0]}"] == 1.0

    frontier = pd.read_csv(out / "frontier.csv")
    assert set(frontier["curve"]) == {"model", "zero router", "router", "oracle"}
    assert set(frontier.loc[frontier["curve"] == "model", "name"]) == set(hand.MODELS)
    assert (out / "cost_quality.png").stat().st_size > 0


def test_an_n_model_simulate_refuses_two_model_options(tmp_path: Path):
    from batch_jobs.simulate import run
    from routers import Prices

    router, prompts = hand.router_and_prompts(tmp_path / "router")
    table = hand.write_table(tmp_path / "outcomes.parquet", prompts)
    with pytest.raises(ValueError, match="two-model routers"):
        run(str(table), str(tmp_path / "o"), prices=Prices(), routers=[str(router)], budget=1.0)
    with pytest.raises(ValueError, match="no price for model"):
        run(str(table), str(tmp_path / "o"), prices=Prices(), routers=[str(router)])
