"""The table a router kind trains on, from the training sources or a benchmark's own labels.

Routers learn from one of two views of the same data (`BaseRouter.trains_on`): battles
(pairwise outcomes, for MF, SW ranking and the classifiers) or per-prompt labels (for the
quality-gap router). Both can take a benchmark's golden labels, which is how `routeray eval
--cross-fit` trains in the paper's augmented, in-distribution setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from routers.data.battles import BATTLE_COLUMNS, load_battles
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.data.prompt_labels import golden_labels, load_prompt_labels
from routers.evaluation.benchmarks import SCORE_SCALE
from routers.protocol import BaseRouter

GOLDEN_PREFIX = "golden:"


def load_training_table(
    cls: type[BaseRouter],
    data_dir: str | Path,
    eval_dir: str | Path | None,
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """The kind's training table (`cls.trains_on`), decontaminated against `eval_dir`."""
    if cls.trains_on == "prompt_labels":
        return load_prompt_labels(data_dir, eval_dir)
    return load_battles(data_dir, eval_dir, seed=seed)


def golden_table(cls: type[BaseRouter], benchmark: pd.DataFrame, name: str) -> pd.DataFrame:
    """A benchmark's rows (prompt, weak_score, strong_score) as training rows of source
    `golden:<name>`: battles of the routed pair, or per-prompt labels."""
    scale = SCORE_SCALE.get(name, 1.0)
    weak = benchmark["weak_score"].to_numpy(float) / scale
    strong = benchmark["strong_score"].to_numpy(float) / scale
    source = GOLDEN_PREFIX + name
    if cls.trains_on == "prompt_labels":
        return golden_labels(benchmark["prompt"], weak, strong, source)
    return pd.DataFrame(
        {
            "prompt": benchmark["prompt"].to_numpy(),
            "model_a": STRONG_MODEL,
            "model_b": WEAK_MODEL,
            "winner": np.select([strong > weak, strong < weak], ["a", "b"], "tie"),
            "source": source,
            "weight": 1.0,
        }
    )[BATTLE_COLUMNS]
