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
            "--controller", "strong_share=0.3,window=20,min_scores=10",
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

    # The controller replay, in timestamp order (two hours apart: 118 hours).
    replayed = json.loads((out / "controller.json").read_text())
    assert replayed["timing"] == "timestamp column"
    assert replayed["tiny-mf"]["requests"] == 59
    assert replayed["tiny-mf"]["hours"] == pytest.approx(118)
    assert summary["controller"]["tiny-mf"]["spend"] == replayed["tiny-mf"]["spend"]
    assert 0.1 < replayed["tiny-mf"]["strong_share"] < 0.5
    assert (out / "controller.png").stat().st_size > 1000
    assert pd.read_csv(out / "controller.csv")["requests"].sum() == 59


def drifting_traffic(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Scored traffic whose first half scores low and second half high, stored shuffled (as
    Ray Data may hand it back) with the file and row each request came from."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.beta(2, 5, n // 2), rng.beta(5, 2, n - n // 2)])
    frame = pd.DataFrame(
        {
            "score:r": scores,
            "error": None,
            "input_tokens": rng.integers(10, 1000, n),
            "__routeray_source": "day.parquet",
            "__routeray_row": np.arange(n),
        }
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_controller_replay_holds_the_share_in_file_order_and_writes_share_and_spend(
    tmp_path: Path,
):
    from batch_jobs.controller_replay import controller_replay, load_target, write_controller_report
    from batch_jobs.simulate import request_costs

    good = drifting_traffic()
    cost_strong, cost_weak = request_costs(good, PRICES)
    target = load_target("strong_share=0.3,window=200")
    result = controller_replay(good, ["r"], cost_strong, cost_weak, target, replay_hours=24)
    summary = result["summary"]
    assert summary["timing"] == "file order, spread evenly over 24 h"
    timeline = result["timeline"]
    assert len(timeline) == 48 and timeline["requests"].sum() == 2000
    assert timeline["start_hour"].iloc[-1] == pytest.approx(23.5, abs=0.01)
    # The scores jump at the middle of the file (hour 12); replayed shuffled, they would not.
    second_half = timeline[timeline["start_hour"] >= 12]
    assert second_half["threshold"].iloc[-1] > timeline["threshold"].iloc[10] + 0.2
    late = timeline[timeline["start_hour"] >= 15]
    share = (late["strong_share"] * late["requests"]).sum() / late["requests"].sum()
    assert share == pytest.approx(0.3, abs=0.03)
    r = summary["r"]
    assert r["requests"] == 2000 and r["hours"] == pytest.approx(24, rel=0.01)
    # Spend is the cost of the model each request went to, between all-weak and all-strong.
    assert cost_weak.sum() < r["spend"] < cost_strong.sum()
    assert timeline["spend"].sum() == pytest.approx(r["spend"])
    assert r["spend_per_hour"] == pytest.approx(r["spend"] / r["hours"])

    write_controller_report(tmp_path, result)
    assert json.loads((tmp_path / "controller.json").read_text())["r"]["requests"] == 2000
    assert len(pd.read_csv(tmp_path / "controller.csv")) == 48
    assert (tmp_path / "controller.png").stat().st_size > 1000


def test_controller_replay_follows_timestamps_and_a_spend_target(tmp_path: Path):
    from batch_jobs.controller_replay import controller_replay, load_target
    from batch_jobs.simulate import request_costs

    good = drifting_traffic()
    # Timestamps run backwards through the file: the high scores arrive first.
    good["timestamp"] = pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(
        (2000 - good["__routeray_row"]) * 36, unit="s"
    )
    cost_strong, cost_weak = request_costs(good, PRICES)
    # 100 requests an hour: $0.5/hour is about a fifth of all-strong's spend rate.
    budget = 0.2 * cost_strong.mean() * 100
    spec = tmp_path / "target.yaml"
    spec.write_text(yaml.safe_dump({"spend_usd_per_hour": float(budget), "window": 300}))
    target = load_target(str(spec))
    result = controller_replay(good, ["r"], cost_strong, cost_weak, target)
    assert result["summary"]["timing"] == "timestamp column"
    timeline = result["timeline"]
    assert timeline["threshold"].iloc[5] > timeline["threshold"].iloc[-1]
    steady = timeline[timeline["start_hour"] >= 5]
    spend = steady["spend"].sum() / (len(steady) * 20 / 48)
    assert spend == pytest.approx(budget, rel=0.10)


@pytest.mark.parametrize("spec", ["strong_share", "strong_share=0.3,spend_usd_per_hour=1", "x=1"])
def test_controller_spec_is_refused_with_a_reason(spec: str):
    from batch_jobs.controller_replay import load_target

    with pytest.raises(ValueError):
        load_target(spec)


def test_a_controller_spec_that_is_not_yaml_is_a_value_error(tmp_path: Path):
    """The command line turns a ValueError into a one-line error; a YAML parser's own
    exception would be a traceback."""
    from batch_jobs.controller_replay import load_target

    broken = tmp_path / "target.yaml"
    broken.write_text("strong_share: [0.3\n")
    for spec in (str(broken), "strong_share=[0.3"):
        with pytest.raises(ValueError, match="not valid YAML"):
            load_target(spec)
