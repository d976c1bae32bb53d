"""Prices and a simple token estimate, for cost figures that need no tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field


class ModelPrice(BaseModel):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    mean_output_tokens: float = Field(default=300.0, ge=0)

    def cost(self, input_tokens: np.ndarray, output_tokens: np.ndarray | float | None = None):
        out = self.mean_output_tokens if output_tokens is None else output_tokens
        return (
            np.asarray(input_tokens) * self.input_per_million + out * self.output_per_million
        ) / 1e6


class Prices(BaseModel):
    """USD per million tokens. Defaults are GPT-4-Turbo-like and Mixtral-like list prices."""

    strong: ModelPrice = ModelPrice(input_per_million=10.0, output_per_million=30.0)
    weak: ModelPrice = ModelPrice(input_per_million=0.6, output_per_million=0.6)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Prices:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


def estimate_tokens(prompts: list[str] | np.ndarray) -> np.ndarray:
    """About four characters a token for English text; good enough for a cost estimate."""
    return np.array([max(1, len(p) // 4) if isinstance(p, str) else 0 for p in prompts])
