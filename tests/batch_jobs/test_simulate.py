"""The simulate job: costs and quality worked out by hand, then the whole job on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from batch_jobs.simulate import simulate_frame
from routers.prices import ModelPrice, Prices

PRICES = Prices(
    strong=ModelPrice(input_per_million=10.0, output_per_million=30.0, mean_output_tokens=100),
    weak=ModelPrice(input_per_million=1.0, output_per_million=2.0, mean_output_tokens=100),
)


def hand_traffic() -> pd.DataFrame:
    """Four usable requests over two days and one unusable one; costs worked out below."""
    return pd.DataFrame(
        {
            "score:r": [0.9, 0.6, 0.4, 0.1, np.nan],
            "error": [None, None, None, None, "prompt is empty"],
            "input_tokens": [1000, 2000, 1000, 4000, 0],
            "output_tokens": [500, 500, 1000, 0, 0],
            "winner": ["strong", "tie", "weak", "strong", None],
            "timestamp": pd.to_datetime(
                [
                    "2026-10-01 09:00",
                    "2026-10-01 17:00",
                    "2026-10-02 08:00",
                    "2026-10-02 23:59",
                    "2026-10-02 23:59",
                ],
                utc=True,
            ),
        }
    )


def test_sweep_matches_costs_worked_out_by_hand():
    # strong: (in*10 + out*30)/1e6 = .025 .035 .040 .040 -> .140 all strong
    # weak:   (in*1  + out*2 )/1e6 = .002 .003 .003 .004 -> .012 all weak
    result = simulate_frame(
        hand_traffic(), ["r"], PRICES, strong_pct_grid=[0.0, 0.5, 1.0], budget=0.07
    )
    summary = result["summary"]
    assert summary["all_strong_cost"] == pytest.approx(0.140)
    assert summary["all_weak_cost"] == pytest.approx(0.012)
    assert (summary["rows"], summary["bad_rows"]) == (5, 1)
    assert summary["bad_row_reasons"] == {"prompt is empty": 1}
    none, half, every = summary["curve"]["r"]
    assert (none["strong_share"], half["strong_share"], every["strong_share"]) == (0, 0.5, 1)
    assert none["cost"] == pytest.approx(0.012)
    # Rows 0 and 1 strong, 2 and 3 weak: .025 + .035 + .003 + .004.
    assert half["threshold"] == 0.6 and half["cost"] == pytest.approx(0.067)
    assert half["saving"] == pytest.approx(1 - 0.067 / 0.140)
    assert half["saving_vs_weak"] == pytest.approx(1 - 0.067 / 0.012)
    assert half["cost_per_request"] == pytest.approx(0.067 / 4)
    assert every["cost"] == pytest.approx(0.140) and every["saving"] == pytest.approx(0.0)
    # Judged winners strong, tie, weak, strong: serving the winner scores 1, a tie 0.5.
    assert none["quality"] == pytest.approx((0 + 0.5 + 1 + 0) / 4)
    assert half["quality"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert half["quality_vs_strong"] == pytest.approx(1.0)
    assert not half["quality_is_estimate"]

    # $0.07 buys the half-strong point; the day-by-day view is at its threshold.
    assert summary["recommendation"]["threshold"] == 0.6
    day1, day2 = summary["daily"]
    assert (day1["day"], day1["requests"], day1["strong_share"]) == ("2026-10-01", 2, 1.0)
    assert day1["cost"] == pytest.approx(0.060) and day1["saving"] == pytest.approx(0.0)
    assert day2["cost"] == pytest.approx(0.007)
    assert day2["saving"] == pytest.approx(1 - 0.007 / 0.080)

    target = simulate_frame(
        hand_traffic(), ["r"], PRICES, strong_pct_grid=[0.0, 0.5, 1.0], quality_target=0.95
    )
    assert target["summary"]["recommendation"]["cost"] == pytest.approx(0.067)
    tight = simulate_frame(hand_traffic(), ["r"], PRICES, strong_pct_grid=[0.5], budget=0.01)
    assert tight["summary"]["recommendation"] is None


def test_missing_output_tokens_use_the_per_model_mean_and_no_labels_mean_an_estimate():
    frame = hand_traffic().drop(columns=["output_tokens", "winner"])
    summary = simulate_frame(frame, ["r"], PRICES, strong_pct_grid=[1.0])["summary"]
    # 8,000 input tokens and 4 x 100 output tokens at strong prices.
    assert summary["all_strong_cost"] == pytest.approx((8000 * 10 + 400 * 30) / 1e6)
    (point,) = summary["curve"]["r"]
    assert point["quality_is_estimate"] and summary["quality_is_estimate"]
    # Estimated from the scores: all strong serves P(strong wins) on every row.
    assert point["quality"] == pytest.approx(np.mean([0.9, 0.6, 0.4, 0.1]))


@pytest.mark.slow
def test_simulate_job_on_ray_writes_every_output(local_ray, tmp_path: Path, tiny_router_dir: Path):
    from typer.testing import CliRunner

    from routeray.cli import app
    from routeray.demo.prompts import generate_prompts

    prompts: list[str | None] = generate_prompts(60, seed=2)
    prompts[7] = None
    tokens = [100 + i for i in range(60)]
    traffic = tmp_path / "traffic"
    traffic.mkdir()
    pq.write_table(
        pa.table(
            {
                "prompt": prompts,
                "input_tokens": tokens,
                "timestamp": pd.date_range("2026-10-01", periods=60, freq="2h", tz="UTC"),
            }
        ),
        traffic / "day.parquet",
        row_group_size=25,
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(PRICES.model_dump()))
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        [
            "simulate", "--input", str(traffic), "--prices", str(prices), "--output", str(out),
            "--router", str(tiny_router_dir), "--thresholds", "11", "--quality-target", "0.9",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    good = [t for i, t in enumerate(tokens) if i != 7]
    assert summary["all_strong_cost"] == pytest.approx((sum(good) * 10 + 59 * 100 * 30) / 1e6)
    assert summary["bad_rows"] == 1 and summary["rows"] == 60
    curve = summary["curve"]["tiny-mf"]
    assert len(curve) == 11 and curve[0]["strong_share"] == 0 and curve[-1]["strong_share"] == 1
    costs = [p["cost"] for p in curve]
    assert costs == sorted(costs)  # more strong calls never cost less
    assert curve[-1]["cost"] == pytest.approx(summary["all_strong_cost"])
    assert all(p["quality_is_estimate"] for p in curve)
    assert summary["recommendation"]["quality_vs_strong"] >= 0.9
    assert sum(day["requests"] for day in summary["daily"]) == 59

    table = pq.read_table(out / "curve.parquet").to_pandas()
    assert len(table) == 11 and table["pareto"].any()
    report = (out / "report.md").read_text()
    assert "## Recommendation" in report and "cost_quality.png" in report
    assert (out / "cost_quality.png").stat().st_size > 1000
