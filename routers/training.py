"""Pieces every trainable router shares: splits, battle encoding and a progress bar."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from routers.ratings import WINNER_TARGET


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


@dataclass
class EncodedBattles:
    """Battles as index tensors over a table of unique prompts and models."""

    prompt_idx: torch.Tensor
    model_a: torch.Tensor
    model_b: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor

    def subset(self, rows: np.ndarray | torch.Tensor) -> EncodedBattles:
        """The battles at these row indices, in that order."""
        keep = torch.as_tensor(rows, dtype=torch.long)
        return EncodedBattles(*(t[keep] for t in self.__dict__.values()))

    def __len__(self) -> int:
        return len(self.target)


def encode_battles(battles: pd.DataFrame, models: list[str]) -> tuple[list[str], EncodedBattles]:
    """Unique prompts (in first-seen order) and the battles as tensors."""
    prompt_codes, unique_prompts = pd.factorize(battles["prompt"])
    index = pd.Index(models)
    return list(unique_prompts), EncodedBattles(
        prompt_idx=torch.from_numpy(prompt_codes.astype(np.int64)),
        model_a=torch.from_numpy(index.get_indexer(battles["model_a"]).astype(np.int64)),
        model_b=torch.from_numpy(index.get_indexer(battles["model_b"]).astype(np.int64)),
        target=_tensor(battles["winner"].map(WINNER_TARGET)),
        weight=_tensor(battles["weight"]),
    )


def _tensor(values: pd.Series) -> torch.Tensor:
    # A view of a reversed or sliced frame can have negative strides, which torch refuses.
    return torch.from_numpy(np.ascontiguousarray(values.to_numpy(dtype=np.float32)))


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False)
