"""Prices and a simple token estimate, for cost figures that need no tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field

from routers.data.model_names import normalize_model_name


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
    """USD per million tokens. `strong` and `weak` price the two models a two-model router
    chooses between (defaults: GPT-4-Turbo-like and Mixtral-like list prices); `models` prices
    any model by name, for N-model routing (a name is matched under the one model-name
    normaliser, so `mistralai/Mixtral-8x7B-Instruct-v0.1` finds `mixtral-8x7b-instruct-v0.1`)."""

    strong: ModelPrice = ModelPrice(input_per_million=10.0, output_per_million=30.0)
    weak: ModelPrice = ModelPrice(input_per_million=0.6, output_per_million=0.6)
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    def for_model(self, name: str) -> ModelPrice:
        """The price of the model `name` (any spelling); ValueError naming what is priced."""
        if name in self.models:
            return self.models[name]
        wanted = normalize_model_name(name)
        for priced, price in self.models.items():
            if normalize_model_name(priced) == wanted:
                return price
        known = ", ".join(self.models) or "none"
        raise ValueError(
            f"no price for model {name!r}: add it under `models:` in prices.yaml "
            f"(USD per million tokens: input_per_million, output_per_million); priced: {known}"
        )

    def for_models(self, names: list[str]) -> list[ModelPrice]:
        return [self.for_model(n) for n in names]

    @classmethod
    def from_yaml(cls, path: str | Path) -> Prices:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


def estimate_tokens(prompts: list[str] | np.ndarray) -> np.ndarray:
    """About four characters a token for English text; good enough for a cost estimate."""
    return np.array([max(1, len(p) // 4) if isinstance(p, str) else 0 for p in prompts])
