"""Bradley-Terry ratings, tiers and strong/weak labels on synthetic battles."""

import numpy as np
import pandas as pd
import pytest

from routers.data.ratings import ELO_SCALE, bradley_terry, strong_weak_labels, tiers


def simulate(strengths: dict[str, float], n_per_pair: int, seed: int = 0) -> pd.DataFrame:
    """Battles between every pair, both orientations, outcomes drawn from Bradley-Terry."""
    rng = np.random.default_rng(seed)
    rows = []
    names = list(strengths)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            p = 1.0 / (1.0 + np.exp(-(strengths[a] - strengths[b])))
            for k in range(n_per_pair):
                x, y = (a, b) if k % 2 == 0 else (b, a)
                a_wins = rng.random() < p
                rows.append((f"prompt {a} {b} {k}", x, y, "a" if a_wins == (x == a) else "b"))
    df = pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner"])
    df["source"], df["weight"] = "synthetic", 1.0
    return df


def test_bradley_terry_recovers_known_order():
    strengths = {"m-best": 2.0, "m-good": 1.0, "m-mid": 0.0, "m-poor": -1.0, "m-worst": -2.0}
    ratings = bradley_terry(simulate(strengths, 400))
    assert list(ratings.index) == ["m-best", "m-good", "m-mid", "m-poor", "m-worst"]
    assert ratings.is_monotonic_decreasing
    assert ratings.mean() == pytest.approx(1000.0)
    # Elo scale: one logit unit is 400 / ln 10 ~ 174 points; adjacent models 1 logit apart.
    gaps = -np.diff(ratings.to_numpy())
    np.testing.assert_allclose(gaps, ELO_SCALE, rtol=0.25)


def test_bradley_terry_ties_and_weights():
    # x beats y once, then they tie once: x wins 1.5 of 2 games -> logit ln(3).
    battles = pd.DataFrame(
        {
            "prompt": ["p1", "p2"],
            "model_a": ["x", "y"],
            "model_b": ["y", "x"],
            "winner": ["a", "tie"],
            "weight": [1.0, 1.0],
        }
    )
    r = bradley_terry(battles, l2=0.0)
    assert r["x"] - r["y"] == pytest.approx(ELO_SCALE * np.log(3.0), rel=1e-3)
    # A weight of 3 on the win: 3.5 of 4 games -> logit ln(7).
    battles["weight"] = [3.0, 1.0]
    r = bradley_terry(battles, l2=0.0)
    assert r["x"] - r["y"] == pytest.approx(ELO_SCALE * np.log(7.0), rel=1e-3)


def test_bradley_terry_symmetric_results_give_equal_ratings():
    battles = pd.DataFrame(
        {
            "prompt": ["p"] * 4,
            "model_a": ["x", "y", "x", "y"],
            "model_b": ["y", "x", "y", "x"],
            "winner": ["a", "a", "b", "b"],
            "weight": 1.0,
        }
    )
    r = bradley_terry(battles)
    assert r["x"] == pytest.approx(1000.0, abs=1e-3)
    assert r["y"] == pytest.approx(1000.0, abs=1e-3)


def test_tiers_on_separated_clusters():
    ratings = pd.Series(
        {
            "low-1": 801.0,
            "top-1": 1300.0,
            "mid-1": 1052.0,
            "top-2": 1290.0,
            "low-2": 795.0,
            "mid-2": 1048.0,
            "top-3": 1310.0,
            "mid-3": 1050.0,
        },
        name="rating",
    )
    t = tiers(ratings, n_tiers=3)
    assert t.to_dict() == {
        "top-1": 1,
        "top-2": 1,
        "top-3": 1,
        "mid-1": 2,
        "mid-2": 2,
        "mid-3": 2,
        "low-1": 3,
        "low-2": 3,
    }
    # Ordered best first, like the ratings.
    assert t.is_monotonic_increasing
    assert t.index[0] == "top-3"


def test_tiers_uneven_clusters_and_more_tiers_than_models():
    ratings = pd.Series({"a": 1500.0, "b": 1000.0, "c": 990.0, "d": 1010.0, "e": 1005.0})
    t = tiers(ratings, n_tiers=2)
    assert t["a"] == 1
    assert (t.drop("a") == 2).all()
    # More tiers than models: each model alone, in rating order.
    t = tiers(ratings, n_tiers=10)
    assert t.to_dict() == {"a": 1, "d": 2, "e": 3, "b": 4, "c": 5}


def test_strong_weak_labels_orientation():
    model_tiers = pd.Series({"gpt-4": 1, "claude": 1, "mixtral": 2, "llama": 3})
    battles = pd.DataFrame(
        {
            "prompt": ["p0", "p1", "p2", "p3", "p4", "p5", "p6"],
            "model_a": ["gpt-4", "mixtral", "mixtral", "llama", "gpt-4", "mixtral", "unknown"],
            "model_b": ["mixtral", "gpt-4", "gpt-4", "claude", "claude", "llama", "gpt-4"],
            "winner": ["a", "a", "b", "tie", "a", "a", "a"],
            "source": ["s0", "s1", "s2", "s3", "s4", "s5", "s6"],
            "weight": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        }
    )
    labels = strong_weak_labels(battles, model_tiers)
    assert list(labels.columns) == ["prompt", "label", "source", "weight"]
    # p4 (tier 1 vs tier 1), p5 (2 vs 3) and p6 (an unrated model) are not strong-vs-weak.
    assert labels.to_dict("records") == [
        {"prompt": "p0", "label": "strong", "source": "s0", "weight": 1.0},
        # tier-1 model on side b: "a" won means the weak model won.
        {"prompt": "p1", "label": "weak", "source": "s1", "weight": 2.0},
        {"prompt": "p2", "label": "strong", "source": "s2", "weight": 3.0},
        {"prompt": "p3", "label": "tie", "source": "s3", "weight": 4.0},
    ]
