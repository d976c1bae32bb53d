"""A user's own labels: one schema (scores or a judged winner), read strictly, trained on and
kept apart from what they evaluate."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from routers.data.tables import golden_table, training_table
from routers.data.user_labels import UserLabelError, read_user_labels
from routers.kinds.mf import MFRouter
from routers.kinds.quality_gap import QualityGapRouter


def test_scores_winners_and_weights_become_one_table(caplog: pytest.LogCaptureFixture):
    frame = pd.DataFrame(
        {
            "prompt": ["a", "b", "c", "d", None, "f", "g"],
            "strong_score": [1.0, 0.2, None, None, 1.0, None, 0.7],
            "weak_score": [0.0, 0.9, None, None, 0.0, None, 0.3],
            "winner": [None, "strong", "Weak", "tie", "strong", None, "weak"],
            "weight": [1.0, 2.0, None, 0.5, 1.0, 1.0, 1.0],
            "id": range(7),
        }
    )
    with caplog.at_level(logging.INFO, logger="routers"):
        labels = read_user_labels(frame, "mine")
    # Scores win over a winner on the same row; a winner fills rows without scores.
    assert labels["prompt"].tolist() == ["a", "b", "c", "d", "g"]
    assert labels["strong_score"].tolist() == [1.0, 0.2, 0.0, 0.5, 0.7]
    assert labels["weak_score"].tolist() == [0.0, 0.9, 1.0, 0.5, 0.3]
    assert labels["weight"].tolist() == [1.0, 2.0, 1.0, 0.5, 1.0]
    assert labels["id"].tolist() == [0, 1, 2, 3, 6]
    assert "left out 1 rows without a usable prompt and 1 without a label" in caplog.text


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"text": ["a"], "winner": ["strong"]}), "no `prompt` column"),
        (pd.DataFrame({"prompt": ["a"], "strong_score": [1.0]}), "no labels"),
        (
            pd.DataFrame({"prompt": ["a", "b"], "strong_score": [1.0, 7.0], "weak_score": [0, 1]}),
            r"1 rows have a score outside \[0, 1\]",
        ),
        (pd.DataFrame({"prompt": ["a"], "winner": ["gpt-4"]}), "strong, weak or tie"),
        (pd.DataFrame({"prompt": ["a"], "winner": ["tie"], "weight": [-1]}), "weights"),
        (pd.DataFrame({"prompt": [" "], "winner": ["tie"]}), "no row has both"),
    ],
)
def test_unusable_tables_are_refused_with_the_reason(frame: pd.DataFrame, message: str):
    with pytest.raises(UserLabelError, match=message):
        read_user_labels(frame, "mine")


def _labels(n: int = 6) -> pd.DataFrame:
    return read_user_labels(
        pd.DataFrame(
            {
                "prompt": [f"user prompt {i}" for i in range(n)],
                "winner": ["strong", "weak"] * (n // 2),
                "weight": [1.0, 3.0] * (n // 2),
            }
        ),
        "mine",
    )


def test_extra_rows_carry_their_weight_for_both_kinds_of_training_table():
    battles = golden_table(MFRouter, _labels(), "mine", weight=2.0)
    assert set(battles["source"]) == {"golden:mine"}
    assert battles["winner"].tolist()[:2] == ["a", "b"]
    assert battles["weight"].tolist() == [2.0, 6.0] * 3
    labels = golden_table(QualityGapRouter, _labels(), "mine", weight=2.0)
    assert labels["weight"].tolist() == [2.0, 6.0] * 3
    assert labels["pair_gap"].tolist() == [1.0, -1.0] * 3


def test_training_table_without_shared_data_and_with_exclusions(tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    for name in ("mt_bench", "mmlu", "gsm8k"):
        pd.DataFrame({"prompt": ["User prompt 0"]}).to_parquet(eval_dir / f"{name}.parquet")
    table = training_table(
        MFRouter,
        None,
        eval_dir,
        extra=[("mine", _labels())],
        exclude_prompts=["user prompt 1"],
    )
    # Prompt 0 equals a benchmark prompt (after case folding), prompt 1 is the user's own eval.
    assert sorted(table["prompt"]) == [f"user prompt {i}" for i in range(2, 6)]
    with pytest.raises(ValueError, match="nothing to train on"):
        training_table(MFRouter, None, eval_dir)
    with pytest.raises(ValueError, match=">= 0"):
        training_table(MFRouter, None, None, extra=[("mine", _labels())], extra_weight=-1)


def test_quality_gap_weighs_rows_by_their_weight():
    """A prompt family labelled both ways: its rows' weights decide which label the router
    believes."""

    def trained(weight_strong: float, weight_weak: float) -> float:
        family = [f"Tell me about topic {i}" for i in range(30)]
        other = [f"Compute {i} times {i + 7}" for i in range(30)]
        frame = pd.DataFrame(
            {
                "prompt": family * 2 + other,
                "strong_score": np.r_[np.ones(30), np.zeros(30), np.full(30, 0.5)],
                "weak_score": np.r_[np.zeros(30), np.ones(30), np.full(30, 0.5)],
                "weight": np.r_[np.full(30, weight_strong), np.full(30, weight_weak), np.ones(30)],
            }
        )
        table = golden_table(QualityGapRouter, read_user_labels(frame, "mine"), "mine")
        router = QualityGapRouter.train(table, folds=2, seed=0)
        return float(router.score(["Tell me about topic 3"])[0])

    assert trained(weight_strong=5.0, weight_weak=0.2) > trained(weight_strong=0.2, weight_weak=5.0)
