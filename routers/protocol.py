"""The one contract every router honours, and the only one serve_app and batch_jobs use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Router(Protocol):
    """Anything that turns a batch of prompts into P(strong model wins)."""

    def score(self, prompts: Sequence[str]) -> np.ndarray: ...


def route(router: Router, prompts: Sequence[str], threshold: float) -> np.ndarray:
    """True where the prompt goes to the strong model: score >= threshold."""
    return router.score(prompts) >= threshold


class BaseRouter(ABC):
    """Shared behaviour of the library's routers: saving, loading and `route`.

    A subclass names itself in `kind`, holds its hyperparameters in `config()` (JSON-able)
    and its weights in `tensors()`; `from_checkpoint` rebuilds it from exactly those two.
    """

    kind: ClassVar[str]
    # The training table `train` takes: "battles" (routers.data.battles.load_battles) or
    # "prompt_labels" (routers.data.prompt_labels.load_prompt_labels).
    trains_on: ClassVar[str] = "battles"

    @abstractmethod
    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """P(strong wins) in [0, 1] for every prompt, as float64."""

    def route(self, prompts: Sequence[str], threshold: float) -> np.ndarray:
        return route(self, prompts, threshold)

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything but the weights needed to rebuild the router."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    @abstractmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], **overrides: Any
    ) -> BaseRouter:
        """Rebuild from `config()` and `tensors()`; overrides may change inference choices."""
