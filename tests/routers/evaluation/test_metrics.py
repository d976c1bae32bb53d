"""Metric code pinned on tiny hand-computed curves; needs no shared data."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from routers.evaluation.benchmarks import load_benchmark
from routers.evaluation.metrics import (
    Curve,
    apgr,
    auc,
    cost_quality_curve,
    cpt,
    evaluate_random,
    evaluate_scores,
    oracle_curve,
)
from routers.evaluation.plots import plot_curves

# Ten prompts. gain = strong - weak = [1, 1, 1, 0, 0, 0, 0, 0, -1, 0];
# weak mean 0.5, strong mean 0.7.
WEAK = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0], dtype=float)
STRONG = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 0], dtype=float)
# Distinct scores 0..9 give qcut edges 0, 0.9, ..., 8.1, 9: ">=" on the first ten sends the top
# 10, 9, ..., 1 prompts strong and "> 9" sends none, so the curve has x = 0, 0.1, ..., 1.
# Perfect order: the three +1 gains first, the -1 gain (prompt 8) last.
PERFECT = np.array([9, 8, 7, 6, 5, 4, 3, 2, 0, 1], dtype=float)


def test_perfect_router_curve_and_metrics():
    curve, m = evaluate_scores(PERFECT, WEAK, STRONG)
    # k strong prompts: quality 0.5 + 0.1 * (gains of the top k) = .5 .6 .7 .8 (x6) .7
    expected_q = [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7]
    assert curve.strong_fraction == pytest.approx(np.arange(11) / 10)
    assert curve.quality == pytest.approx(expected_q)
    # AUC = 0.1 * ((0.5 + 0.7) / 2 + 0.6 + 0.7 + 7 * 0.8) = 0.75
    assert m.auc == pytest.approx(0.75)
    # APGR = (0.75 - 0.5) / (0.7 - 0.5) = 1.25: above 1 because skipping the -1 prompt beats
    # the strong model.
    assert m.apgr == pytest.approx(1.25)
    # targets 0.54 / 0.6 / 0.66 all lie on the first two segments (0 -> 0.6 -> 0.7)
    assert m.cpt20 == pytest.approx(4.0)
    assert m.cpt50 == pytest.approx(10.0)
    assert m.cpt80 == pytest.approx(16.0)
    # 95 % of the strong model's 0.7 is 0.665: on the segment 0.6 (10 %) -> 0.7 (20 %).
    assert m.strong_at_95 == pytest.approx(16.5)
    # With one prompt per decile the oracle is the same curve.
    assert apgr(oracle_curve(WEAK, STRONG), 0.5, 0.7) == pytest.approx(m.apgr)


def test_inverted_router_is_worse_than_random():
    curve, m = evaluate_scores(-PERFECT, WEAK, STRONG)
    # The -1 gain goes first: .5 .4 (x7) .5 .6 .7
    assert curve.quality == pytest.approx([0.5] + [0.4] * 7 + [0.5, 0.6, 0.7])
    # AUC = 0.1 * (0.6 + 7 * 0.4 + 0.5 + 0.6) = 0.45 -> APGR = -0.05 / 0.2 = -0.25
    assert m.auc == pytest.approx(0.45)
    assert m.apgr == pytest.approx(-0.25)
    assert m.apgr < 0.5
    # target 0.6 is first reached at x = 90 %
    assert m.cpt50 == pytest.approx(90.0)


def test_last_cut_point_is_strict_so_zero_point_exists():
    # Binary scores: qcut edges 0, 0.5, 1 (duplicates dropped). ">= 1" would still send the
    # five score-1 prompts strong and lose the all-weak point; "> 1" sends none.
    scores = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=float)
    curve = cost_quality_curve(scores, WEAK, STRONG)
    assert curve.strong_fraction == pytest.approx([0.0, 0.5, 1.0])
    assert curve.thresholds == pytest.approx([1.0, 0.5, 0.0])
    # prompts 0-4 weak (1 correct) + prompts 5-9 strong (3 correct) = 0.4
    assert curve.quality == pytest.approx([0.5, 0.4, 0.7])


def test_constant_scores_give_the_two_end_points():
    curve, m = evaluate_scores(np.full(10, 0.3), WEAK, STRONG)
    assert curve.strong_fraction == pytest.approx([0.0, 1.0])
    assert curve.quality == pytest.approx([0.5, 0.7])
    # The straight line is exactly the random router's expectation.
    assert m.apgr == pytest.approx(0.5)
    assert m.cpt50 == pytest.approx(50.0)


def test_cpt_takes_the_first_crossing_on_a_dipping_curve():
    curve = Curve(np.array([0, 0.1, 0.2, 0.3]), np.array([0.5, 0.7, 0.6, 0.8]), np.zeros(4))
    # Target 0.75 is only reached on the last segment 0.6 -> 0.8 (at 27.5 %); interpolating on
    # the running maximum (0.7 at 20 %) would claim 25 %, where the curve is still at 0.7.
    assert cpt(curve, 0.5, 1.0, 0.5) == pytest.approx(27.5)
    # Target 0.65 is crossed three times (7.5 %, 15 %, 22.5 %); the smallest share counts.
    assert cpt(curve, 0.5, 0.8, 0.5) == pytest.approx(7.5)
    # Unreachable target: clamp to the last point, as np.interp does.
    assert cpt(curve, 0.5, 1.0, 1.0) == pytest.approx(30.0)


def test_auc_and_apgr_on_a_hand_curve():
    curve = Curve(np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.8, 1.0]), np.zeros(3))
    # 0.5 * (0.2 + 0.8) / 2 + 0.5 * (0.8 + 1.0) / 2 = 0.25 + 0.45 = 0.7
    assert auc(curve) == pytest.approx(0.7)
    assert apgr(curve, 0.2, 1.0) == pytest.approx((0.7 - 0.2) / 0.8)


def test_random_router_apgr_is_about_one_half():
    rng = np.random.default_rng(1)
    n = 20_000
    weak = (rng.random(n) < 0.6).astype(float)
    strong = (rng.random(n) < 0.8).astype(float)
    curve, m = evaluate_random(weak, strong, runs=10, seed=0)
    # Expected curve is the straight weak-strong line (APGR 0.5). The deviation is a Brownian
    # bridge: one run's APGR has sd sqrt(var(gain) / (12 n gap^2)) = sqrt(0.4 / (12 * 2e4 *
    # 0.04)) ~ 0.0065, ten runs ~ 0.002, so 0.01 is a 5-sigma band.
    assert m.apgr == pytest.approx(0.5, abs=0.01)
    assert m.cpt50 == pytest.approx(50.0, abs=3.0)
    assert len(curve.strong_fraction) == 11
    assert curve.strong_fraction[[0, -1]] == pytest.approx([0.0, 1.0])
    assert set(m.to_dict()) == {"apgr", "cpt20", "cpt50", "cpt80", "auc", "strong_at_95"}
    # Same seed, same answer; another seed differs.
    assert evaluate_random(weak, strong, seed=0)[1] == m
    assert evaluate_random(weak, strong, seed=1)[1].apgr != m.apgr


def test_oracle_is_downsampled_and_bounds_every_router():
    rng = np.random.default_rng(2)
    weak = (rng.random(1000) < 0.5).astype(float)
    strong = (rng.random(1000) < 0.7).astype(float)
    oracle = oracle_curve(weak, strong)
    assert len(oracle.strong_fraction) <= 201
    assert oracle.strong_fraction[[0, -1]] == pytest.approx([0.0, 1.0])
    assert oracle.quality[[0, -1]] == pytest.approx([weak.mean(), strong.mean()])
    assert oracle.quality.max() == pytest.approx(np.maximum(weak, strong).mean())
    curve, _ = evaluate_scores(rng.random(1000), weak, strong)
    assert np.all(
        curve.quality
        <= np.interp(curve.strong_fraction, oracle.strong_fraction, oracle.quality) + 1e-9
    )


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        evaluate_scores(np.zeros(3), np.zeros(4), np.zeros(4))


def test_plot_curves_writes_png(tmp_path: Path):
    curve, _ = evaluate_scores(PERFECT, WEAK, STRONG)
    path = tmp_path / "curve.png"
    plot_curves({"perfect": curve}, 0.5, 0.7, oracle_curve(WEAK, STRONG), "toy", path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_load_benchmark(tmp_path: Path):
    pd.DataFrame(
        {
            "id": ["gsm8k/0", "gsm8k/1", "gsm8k/2"],
            "prompt": ["a", "b", "c"],
            "category": ["x"] * 3,
            "weak_score": [0, 1, 1],
            "strong_score": [1, 1, 0],
            "contaminated": [False, True, False],
        }
    ).to_parquet(tmp_path / "gsm8k.parquet")
    df = load_benchmark("gsm8k", tmp_path)
    assert list(df.columns) == ["id", "prompt", "weak_score", "strong_score"]
    assert df["id"].tolist() == ["gsm8k/0", "gsm8k/2"]
    assert df.index.tolist() == [0, 1]
    assert df["weak_score"].dtype == float
    assert df.attrs["contaminated_dropped"] == 1
    with pytest.raises(ValueError, match="mt-bench"):
        load_benchmark("humaneval", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mmlu\.parquet"):
        load_benchmark("mmlu", tmp_path)


def test_cost_saving_at_a_strong_share():
    from routers.evaluation.metrics import cost_saving

    assert cost_saving(100.0, 0.05) == pytest.approx(0.0)
    assert cost_saving(40.0, 0.05) == pytest.approx(0.6 * 0.95)
