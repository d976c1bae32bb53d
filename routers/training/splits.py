"""How labelled rows divide into training and held-out parts: every copy of a prompt text on
one side, so that a score is never judged on a prompt the model has seen."""

from __future__ import annotations

import numpy as np
import pandas as pd


def grouped_split(prompts: pd.Series, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row masks (train, validation) with every copy of a prompt on one side, so that
    hyperparameters are judged on prompts the model has not seen."""
    unique = prompts.unique()
    rng = np.random.default_rng(seed)
    held = set(rng.choice(unique, size=max(1, int(len(unique) * holdout)), replace=False))
    validation = prompts.isin(held).to_numpy()
    return ~validation, validation


def prompt_folds(prompts: pd.Series, folds: int, seed: int) -> np.ndarray:
    """A fold per row; rows with the same prompt text share a fold."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    codes, uniques = pd.factorize(prompts)
    if len(uniques) < folds:
        raise ValueError(f"{len(uniques)} distinct prompts cannot fill {folds} folds")
    return np.random.default_rng(seed).permutation(len(uniques))[codes] % folds
