"""The paper's baseline: a uniform score that ignores the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from routers.protocol import BaseRouter


class RandomRouter(BaseRouter):
    kind = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return self._rng.uniform(0.0, 1.0, size=len(prompts))

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], **overrides: Any
    ) -> RandomRouter:
        return cls(seed=overrides.get("seed", config.get("seed")))

    @classmethod
    def train(cls, battles: Any = None, *, seed: int = 0, **_: Any) -> RandomRouter:
        return cls(seed=seed)
