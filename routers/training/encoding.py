"""Battles as index tensors over a table of unique prompts and models, for routers that fit
pairwise models by gradient descent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from routers.data.ratings import WINNER_TARGET


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
