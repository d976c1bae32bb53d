"""Scores that are probabilities: the isotonic curve, its storage in a router directory, and
the thresholds recorded per strong share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from routers import load_router, router_path, save_router
from routers.checkpoint import CheckpointError, read_config, update_config
from routers.decision.probability import (
    CalibratedRouter,
    ProbabilityCurve,
    fit_isotonic,
    uncalibrated,
    win_labels,
)
from routers.evaluation.calibration import (
    calibration_labels,
    expected_calibration_error,
    fit_probability,
    leave_one_source_out,
    reliability,
    share_thresholds,
    trained_sources,
)
from routers.evaluation.metrics import evaluate_scores
from routers.kinds.mf import MFRouter
from routers.shipped import SHIPPED
from routers.thresholds import recorded_share_thresholds, resolve_threshold


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores in a narrow band (as the shipped routers give) whose true win probability
    is a steep logistic of the score."""
    rng = np.random.default_rng(seed)
    raw = 0.69 + 0.02 * rng.standard_normal(n)
    truth = 1.0 / (1.0 + np.exp(-(raw - 0.69) / 0.01))
    return raw, (rng.random(n) < truth).astype(float)


def test_isotonic_curve_makes_a_narrow_band_into_probabilities():
    raw, wins = _synthetic(10_000, seed=0)
    curve = fit_isotonic(raw, wins)
    fresh_raw, fresh_wins = _synthetic(10_000, seed=1)
    # Raw scores all read about 0.69 whatever the win rate; calibrated ones match it.
    assert expected_calibration_error(fresh_raw, fresh_wins) > 0.15
    assert expected_calibration_error(curve(fresh_raw), fresh_wins) < 0.03
    assert np.all(np.diff(curve.raw) > 0) and np.all(np.diff(curve.probability) > 0)
    assert 0.0 < curve.probability[0] < 0.1 and 0.9 < curve.probability[-1] < 1.0


def test_curve_keeps_every_ranking_and_so_apgr():
    raw, wins = _synthetic(5_000, seed=2)
    curve = fit_isotonic(raw, wins)
    rng = np.random.default_rng(3)
    # Inside the knots, between them, and far beyond both ends (the tails).
    scores = np.concatenate([rng.uniform(-5.0, 5.0, 2_000), rng.uniform(0.6, 0.8, 2_000)])
    calibrated = curve(scores)
    assert np.all((calibrated > 0.0) & (calibrated < 1.0))
    order = np.argsort(scores, kind="stable")
    np.testing.assert_array_equal(order, np.argsort(calibrated, kind="stable"))
    assert np.all(np.diff(calibrated[order]) > 0)
    weak, strong = rng.random(scores.size), rng.random(scores.size)
    assert evaluate_scores(calibrated, weak, strong)[1] == evaluate_scores(scores, weak, strong)[1]


def test_small_end_blocks_are_pooled():
    # Two prompts above everything else, both won: alone they would be a knot at p = 1.
    raw = np.r_[np.linspace(0.0, 1.0, 1_000), 2.0, 2.1]
    wins = np.r_[np.random.default_rng(4).random(1_000) < np.linspace(0.2, 0.6, 1_000), 1, 1]
    assert fit_isotonic(raw, wins, min_block=0.0).probability[-1] > 0.99
    pooled = fit_isotonic(raw, wins, min_block=0.05)
    assert pooled.probability[-1] < 0.8
    assert len(pooled.raw) <= 20


def test_scores_that_rank_nothing_are_refused():
    with pytest.raises(ValueError, match="do not rank the wins"):
        fit_isotonic(np.linspace(0, 1, 100), np.r_[np.ones(50), np.zeros(50)])


@pytest.mark.parametrize(
    "raw, probability",
    [([0.1, 0.1], [0.2, 0.3]), ([0.1, 0.2], [0.3, 0.3]), ([0.1, 0.2], [0.0, 0.5]), ([0.1], [0.5])],
)
def test_curve_that_is_not_strictly_increasing_is_refused(raw, probability):
    with pytest.raises(ValueError):
        ProbabilityCurve(raw=raw, probability=probability)


def test_a_tie_is_not_a_win():
    np.testing.assert_array_equal(
        win_labels(np.array([0.0, 1.0, 0.5, 0.2]), np.array([1.0, 1.0, 0.5, 0.3])), [1, 0, 0, 1]
    )


def test_reliability_table_and_ece_by_hand():
    predicted = np.array([0.05, 0.15, 0.15, 0.95])
    observed = np.array([0.0, 0.0, 1.0, 1.0])
    table = reliability(predicted, observed)
    assert table["bin"].tolist() == ["0.0-0.1", "0.1-0.2", "0.9-1.0"]
    assert table["count"].tolist() == [1, 2, 1]
    assert table["observed"].tolist() == [0.0, 0.5, 1.0]
    # (1 x 0.05 + 2 x 0.35 + 1 x 0.05) / 4
    assert expected_calibration_error(predicted, observed) == pytest.approx(0.2)


def test_share_thresholds_hit_every_share():
    scores = np.random.default_rng(5).random(1_000)
    table = share_thresholds(scores)
    assert list(table) == [f"{s / 100:.2f}" for s in range(1, 100)]
    for key, threshold in table.items():
        assert np.mean(scores >= threshold) == pytest.approx(float(key))


def test_leave_one_source_out_never_uses_the_source_it_scores():
    rng = np.random.default_rng(6)
    raw = rng.random(600)
    labels = pd.DataFrame(
        {"source": np.repeat(["a", "b", "c"], 200), "win": (rng.random(600) < raw).astype(float)}
    )
    held = leave_one_source_out(raw, labels)
    # Flip every label of source "c": its held-out probabilities do not move.
    flipped = labels.assign(win=np.where(labels["source"] == "c", 1 - labels["win"], labels["win"]))
    again = leave_one_source_out(raw, flipped)
    c = (labels["source"] == "c").to_numpy()
    np.testing.assert_array_equal(held[c], again[c])
    assert not np.array_equal(held[~c], again[~c])


# -- in a router directory -------------------------------------------------------------------


@pytest.fixture()
def router_dir(tmp_path: Path, tiny_router_dir: Path) -> Path:
    directory = tmp_path / "router"
    shutil.copytree(tiny_router_dir, directory)
    return directory


PROMPTS = [f"question {i}: explain topic {i % 7} in detail" for i in range(60)]


def test_a_directory_without_a_curve_loads_as_before(router_dir: Path):
    assert "probability" not in read_config(router_dir)
    assert isinstance(load_router(router_dir), MFRouter)


def test_load_applies_the_curve_and_save_keeps_it(router_dir: Path, tmp_path: Path):
    raw_scores = load_router(router_dir).score(PROMPTS)
    wins = (raw_scores >= np.median(raw_scores)).astype(float)
    wins[::5] = 1 - wins[::5]  # not perfectly separable, so the curve has inner knots
    curve = fit_isotonic(raw_scores, wins, fitted_on={"what": "a test"}, min_block=0.1)
    weights = (router_dir / "model.safetensors").read_bytes()
    update_config(router_dir, probability=curve, metadata={"note": "kept"})
    assert (router_dir / "model.safetensors").read_bytes() == weights
    document = json.loads((router_dir / "config.json").read_text())
    assert document["probability"]["raw"] == curve.raw
    assert document["probability"]["fitted_on"] == {"what": "a test"}
    assert document["metadata"]["note"] == "kept"
    assert document["metadata"]["default_threshold"] == 0.5  # merged, not replaced

    loaded = load_router(router_dir)
    assert isinstance(loaded, CalibratedRouter) and loaded.kind == "mf"
    np.testing.assert_allclose(loaded.score(PROMPTS), curve(raw_scores))
    np.testing.assert_array_equal(uncalibrated(loaded).score(PROMPTS), raw_scores)
    assert loaded.pair == uncalibrated(loaded).pair  # the wrapped router's attributes

    again = save_router(loaded, tmp_path / "again", read_config(router_dir)["metadata"])
    assert read_config(again)["probability"] == document["probability"]
    np.testing.assert_allclose(load_router(again).score(PROMPTS), curve(raw_scores))


def test_a_broken_curve_is_a_checkpoint_error(router_dir: Path):
    document = json.loads((router_dir / "config.json").read_text())
    document["probability"] = {"raw": [0.2, 0.1], "probability": [0.3, 0.4]}
    (router_dir / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="probability curve"):
        load_router(router_dir)


# -- the shipped routers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fast", "minilm"])
def test_shipped_routers_record_a_curve_and_thresholds_by_share(name: str):
    directory = router_path(name)
    document = read_config(directory)
    curve = ProbabilityCurve.model_validate(document["probability"])
    assert curve.fitted_on["sources"] and not set(curve.fitted_on["sources"]) & trained_sources(
        directory
    )
    table = recorded_share_thresholds(directory)
    assert sorted(table) == pytest.approx([s / 100 for s in range(1, 100)])
    assert np.all(np.diff([table[s] for s in sorted(table)]) <= 0)
    metadata = document["metadata"]
    assert metadata["calibration"]["strong_pct"] == 0.3
    assert metadata["calibration"]["scores"] == "probabilities"
    assert resolve_threshold(directory) == metadata["share_thresholds"]["0.30"]
    assert resolve_threshold(directory, strong_pct=0.3) == resolve_threshold(directory)
    assert SHIPPED[name] == directory


@pytest.mark.parametrize("name", ["fast", "minilm"])
def test_shipped_curve_keeps_the_routers_ranking(name: str):
    router = load_router(router_path(name))
    assert isinstance(router, CalibratedRouter)
    topics = ["hello there", "the capital of France", "a proof that sqrt(2) is irrational",
              "a Go function that retries an HTTP call", "a haiku about rain",
              "the derivative of x^3 sin x", "a SQL query for the top customers"]  # fmt: skip
    prompts = [f"{verb} {topic}" for verb in ("Tell me", "Explain", "Write") for topic in topics]
    raw = uncalibrated(router).score(prompts)
    calibrated = router.score(prompts)
    assert np.all((calibrated > 0) & (calibrated < 1))
    np.testing.assert_array_equal(np.argsort(raw), np.argsort(calibrated))


@pytest.mark.shared_data
def test_fast_default_threshold_sends_the_recorded_share_of_real_prompts(shared_data_dir: Path):
    """The recorded default sends 30 % of the real user mix it was calibrated on strong."""
    corpora = shared_data_dir.parent / "corpora"
    files = [
        corpora / "real_user_prompts.parquet",
        shared_data_dir / "train" / "arena_bench_v1_scores.parquet",
        shared_data_dir / "train" / "alpaca_eval_pairwise.parquet",
    ]
    prompts = pd.concat([pd.read_parquet(f, columns=["prompt"]) for f in files])["prompt"]
    prompts = list(dict.fromkeys(prompts))
    scores = load_router(router_path("fast")).score(prompts)
    assert np.mean(scores >= resolve_threshold(router_path("fast"))) == pytest.approx(
        0.3, abs=0.005
    )


@pytest.mark.shared_data
def test_unseen_sources_are_the_outcome_tables(shared_data_dir: Path):
    labels = calibration_labels(
        shared_data_dir / "train", None, trained_sources(router_path("fast"))
    )
    assert not {"mmlu_pro", "arena_hard", "alpaca_eval"} & set(labels["source"])
    assert "/" not in "".join(labels["source"])  # no share-alike check rows
    assert set(labels["win"].unique()) <= {0.0, 1.0}
    curve = fit_probability(np.arange(len(labels), dtype=float), labels)
    assert curve.fitted_on["prompts"] == len(labels)
