"""A user's per-model labels (what `batch label` writes with `backends:`), read strictly as the
long (prompt, model, score) training rows of an N-model router."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from routers.data.model_outcomes import OUTCOME_COLUMNS
from routers.data.user_labels import OUTCOME_LABEL_COLUMNS, UserLabelError, read_user_outcomes


def test_pairs_become_normalised_training_rows(caplog: pytest.LogCaptureFixture):
    frame = pd.DataFrame(
        {
            "id": ["f:0", "f:0", "f:0", "f:1", "f:1", "f:2", "f:3", "f:4"],
            "prompt": ["a", "a", "a", "b", "b", None, "d", "e"],
            "model": [
                "gpt-4o",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
                # Another spelling of the same model on the same prompt (a second label run).
                "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF",
                "gpt-4o",
                "claude-v1",  # RouterBench's spelling
                "gpt-4o",
                None,
                "gpt-4o",
            ],
            "score": [0.9, 0.2, 0.6, 1.0, 0.5, 0.7, 0.3, None],
            "weight": [1.0, 2.0, 4.0, None, 1.0, 1.0, 1.0, 1.0],
            "judge": "grader",
        }
    )
    with caplog.at_level(logging.INFO, logger="routers"):
        rows = read_user_outcomes(frame, "labels")
    assert list(rows.columns) == [*OUTCOME_LABEL_COLUMNS, "id"]
    # What training reads of the shared outcomes (their `task` is for licences only).
    assert set(OUTCOME_COLUMNS) - {"task"} <= set(rows.columns)
    assert rows[["prompt", "model"]].values.tolist() == [
        ["a", "gpt-4o"],
        ["a", "mixtral-8x7b-instruct-v0.1"],
        ["b", "gpt-4o"],
        ["b", "claude-1"],
    ]
    # The two Mixtral labels are one row: mean score 0.4, mean weight 3.
    assert rows["score"].tolist() == pytest.approx([0.9, 0.4, 1.0, 0.5])
    assert rows["weight"].tolist() == [1.0, 3.0, 1.0, 1.0]
    assert (rows["source"] == "labels").all()
    assert rows["id"].tolist() == ["f:0", "f:0", "f:1", "f:1"]
    assert (
        "left out 1 rows without a usable prompt, 1 without a model and 1 without a score"
        in caplog.text
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"prompt": ["a"], "score": [1.0]}), "no `model` column"),
        (pd.DataFrame({"text": ["a"], "model": ["m"]}), "no `prompt`, `score` column"),
        (
            pd.DataFrame({"prompt": ["a", "b"], "model": ["m", "m"], "score": [0.5, 7.0]}),
            r"1 rows have a score outside \[0, 1\] \(first at row 1\)",
        ),
        (pd.DataFrame({"prompt": ["a"], "model": ["m"], "score": [1], "weight": [-1]}), "weights"),
        (pd.DataFrame({"prompt": ["a"], "model": ["m"], "score": [None]}), "no row has"),
    ],
)
def test_unusable_tables_are_refused_with_the_reason(frame: pd.DataFrame, message: str):
    with pytest.raises(UserLabelError, match=message):
        read_user_outcomes(frame, "mine")


def test_the_rows_train_an_n_model_router():
    from routers.kinds.multi import MultiModelRouter
    from tests.support.multi_router import topic_prompts

    # Labels as `batch label` writes them: on each topic one model is graded 9, the others 2.
    best = {"cooking": "alpha", "maths": "beta", "travel": "gamma"}
    pairs = [
        {"id": f"{topic}:{i}", "prompt": prompt, "model": model,
         "score": 0.9 if model == winner else 0.2}
        for topic, winner in best.items()
        for i, prompt in enumerate(topic_prompts(topic, 30))
        for model in ("alpha", "beta", "gamma")
    ]  # fmt: skip
    rows = read_user_outcomes(pd.DataFrame(pairs), "labels")
    router = MultiModelRouter.train(rows, recipe="mf", min_labels=10, max_epochs=40)
    unseen = {topic: topic_prompts(topic, 3, offset=40) for topic in best}
    for topic, winner in best.items():
        qualities = router.qualities(unseen[topic])
        assert [router.models[i] for i in qualities.argmax(axis=1)] == [winner] * 3
