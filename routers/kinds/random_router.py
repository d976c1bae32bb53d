"""The paper's baseline: a uniform score that ignores the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from routers.protocol import BaseRouter, LoadOptions


class RandomLoadOptions(LoadOptions):
    """Another seed for the scores' generator than the trained one."""

    seed: int | None = None


class RandomRouter(BaseRouter):
    kind = "random"
    load_options: ClassVar[type[LoadOptions]] = RandomLoadOptions

    @classmethod
    def scores_lightly(cls, config: dict[str, Any]) -> bool:
        return True

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return self._rng.uniform(0.0, 1.0, size=len(prompts))

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: RandomLoadOptions
    ) -> RandomRouter:
        return cls(seed=config.get("seed") if options.seed is None else options.seed)

    @classmethod
    def train(cls, table: pd.DataFrame | None = None, *, seed: int = 0) -> RandomRouter:
        """Nothing to learn: the table is ignored and `seed` seeds the scores."""
        return cls(seed=seed)
