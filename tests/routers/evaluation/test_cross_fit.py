"""Cross-fitting: no prompt is ever scored by a router that saw it, whatever else it trains on
and however many labels each fold may use."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from routers.evaluation.cross_fit import cross_fit_scores
from routers.protocol import BaseRouter, LoadOptions


class Memorising(BaseRouter):
    """Scores 1 for a prompt it was trained on, 0 otherwise: any leak shows up as a 1."""

    kind = "memorising"
    seen_tables: ClassVar[list[pd.DataFrame]] = []

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen

    @classmethod
    def train(cls, battles: pd.DataFrame, **_: object) -> Memorising:
        cls.seen_tables.append(battles)
        return cls(set(battles["prompt"]))

    def score(self, prompts):
        return np.array([float(p in self.seen) for p in prompts])

    def config(self):
        return {}

    @classmethod
    def from_checkpoint(cls, config, tensors, options: LoadOptions):
        raise NotImplementedError


def test_cross_fit_never_scores_a_prompt_with_a_router_that_saw_it():
    benchmark = pd.DataFrame(
        {
            "prompt": [f"question {i % 15}" for i in range(20)],  # five prompts occur twice
            "weak_score": np.tile([0.0, 1.0], 10),
            "strong_score": np.ones(20),
        }
    )
    training = pd.DataFrame(
        {"prompt": ["train only"], "model_a": ["x"], "model_b": ["y"], "winner": ["a"]}
    ).assign(source="t", weight=1.0)
    Memorising.seen_tables.clear()
    scores = cross_fit_scores(Memorising, benchmark, "bench", training, folds=4)
    assert (scores == 0).all()
    assert len(Memorising.seen_tables) == 4
    for table in Memorising.seen_tables:
        assert "train only" in set(table["prompt"])
        golden = table[table["source"] == "golden:bench"]
        assert set(golden["model_a"]) == {"gpt-4-1106-preview"}
        # Every benchmark prompt is in training for all folds but its own.
        assert 0 < golden["prompt"].nunique() < 15
    counts = pd.concat(Memorising.seen_tables)["prompt"].value_counts()
    assert all(counts[f"question {i}"] == 3 * (2 if i < 5 else 1) for i in range(15))


def _benchmark(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [f"question {i}" for i in range(n)],
            "weak_score": np.tile([0.0, 1.0], n // 2),
            "strong_score": np.ones(n),
        }
    )


def test_labels_per_fold_caps_the_in_domain_prompts_each_router_sees():
    Memorising.seen_tables.clear()
    scores = cross_fit_scores(Memorising, _benchmark(), "bench", None, folds=4, labels_per_fold=7)
    assert (scores == 0).all()
    for table in Memorising.seen_tables:
        # Only the user's own rows: no shared training table was given.
        assert set(table["source"]) == {"golden:bench"}
        assert table["prompt"].nunique() == 7
    drawn = [set(t["prompt"]) for t in Memorising.seen_tables]
    assert len(set(map(frozenset, drawn))) == 4  # each fold draws its own
