"""Cross-fitted scores: the paper's in-distribution (golden-label) setting without leakage.

The benchmark is cut into K folds with every copy of a prompt text in one fold; for each fold a
router is trained on the training data plus the other folds' golden labels and scores only
that fold, so no prompt is scored by a router that saw it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from routers.data.tables import golden_table
from routers.protocol import BaseRouter
from routers.training.splits import prompt_folds

logger = logging.getLogger(__name__)


def cross_fit_scores(
    cls: type[BaseRouter],
    benchmark: pd.DataFrame,
    name: str,
    training: pd.DataFrame | None,
    *,
    folds: int = 5,
    seed: int = 0,
    labels_per_fold: int | None = None,
    **train_options: Any,
) -> np.ndarray:
    """Each benchmark row's score from a router that never saw its prompt; `training` (None:
    none) is added to every fold's labels.

    `labels_per_fold` (None: all) caps the in-domain labelled prompts each fold's router
    trains on, drawn at random (seeded) from the other folds: how many labels a user needs.
    `train_options` go to every fold's `cls.train`; an option the kind does not take is an
    OptionError before any training starts."""
    cls.check_train_options(train_options)
    fold = prompt_folds(benchmark["prompt"], folds, seed)
    golden = golden_table(cls, benchmark, name)
    scores = np.full(len(benchmark), np.nan)
    for f in range(folds):
        held = fold == f
        labelled = ~held
        if labels_per_fold is not None:
            labelled &= _sample_prompts(benchmark["prompt"], labelled, labels_per_fold, seed + f)
        logger.info(
            f"cross-fit fold {f + 1}/{folds}: training on {int(labelled.sum())} benchmark rows"
        )
        parts = [golden[labelled]] if training is None else [training, golden[labelled]]
        table = pd.concat(parts, ignore_index=True)
        router = cls.train(table, seed=seed, **train_options)
        scores[held] = router.score(benchmark.loc[held, "prompt"].tolist())
    return scores


def _sample_prompts(prompts: pd.Series, allowed: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows of `n` distinct prompts drawn from the `allowed` rows (all copies of a prompt)."""
    pool = prompts[allowed].unique()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(n, len(pool)), replace=False)
    return prompts.isin(set(chosen)).to_numpy()
