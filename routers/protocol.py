"""The one contract every router honours, and the only one serve_app and batch_jobs use.

`Router` is what scoring needs. `BaseRouter` is what the library's router kinds share: how one
is trained (`train` and its options), saved (`config`, `tensors`) and loaded again
(`from_checkpoint` with `LoadOptions`), and one error, `OptionError`, for an option a kind does
not take or a value it cannot use, worded the same way for every kind.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    import pandas as pd


@runtime_checkable
class Router(Protocol):
    """Anything that turns a batch of prompts into P(strong model wins)."""

    def score(self, prompts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class MultiRouter(Protocol):
    """An N-model router: each prompt's predicted quality (in [0, 1]) on every model it knows,
    in the order of `models` (names as configured). Which one answers is decided by
    `routers.decision.choice.choose` from these and the models' prices. Its `score` is the
    two-model view: P(the first model beats the last)."""

    models: list[str]

    def qualities(self, prompts: Sequence[str]) -> np.ndarray: ...

    def score(self, prompts: Sequence[str]) -> np.ndarray: ...


def is_multi(router: object) -> bool:
    """Whether `router` predicts the quality of N models (MultiRouter), not one score."""
    return isinstance(router, MultiRouter)


def route(router: Router, prompts: Sequence[str], threshold: float) -> np.ndarray:
    """True where the prompt goes to the strong model: score >= threshold."""
    return router.score(prompts) >= threshold


class OptionError(ValueError):
    """An option a router kind does not take, or a value it cannot use."""


class LoadOptions(BaseModel):
    """Inference-time (load-time) choices: what may differ between loads of one checkpoint,
    such as the device or, for routers trained on every model, the routed pair.

    Each router kind declares its own subclass as `BaseRouter.load_options`; this base takes
    none. A field left at None means "not given": the checkpoint's own value holds.
    """

    model_config = ConfigDict(extra="forbid")


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _unknown_message(kind: str, what: str, unknown: Sequence[str], known: Sequence[str]) -> str:
    plural = "s" if len(unknown) > 1 else ""
    takes = f"it takes: {', '.join(known)}" if known else f"it takes no {what} options"
    return f"router kind {kind!r} has no {what} option{plural} {_names(unknown)}; {takes}"


class BaseRouter(ABC):
    """Shared behaviour of the library's routers: training, saving, loading and `route`.

    A subclass names itself in `kind`, holds its hyperparameters in `config()` (JSON-able)
    and its weights in `tensors()`; `from_checkpoint` rebuilds it from exactly those two and
    the load options its `load_options` model accepts.
    """

    kind: ClassVar[str]
    # The training table `train` takes: "battles" (routers.data.battles.load_battles) or
    # "prompt_labels" (routers.data.prompt_labels.load_prompt_labels).
    trains_on: ClassVar[str] = "battles"
    # The load options this kind accepts (see LoadOptions).
    load_options: ClassVar[type[LoadOptions]] = LoadOptions

    @abstractmethod
    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """P(strong wins) in [0, 1] for every prompt, as float64."""

    def route(self, prompts: Sequence[str], threshold: float) -> np.ndarray:
        return route(self, prompts, threshold)

    @classmethod
    def scores_lightly(cls, config: dict[str, Any]) -> bool:
        """Whether a router of this kind, with this saved config, scores a prompt in well
        under a millisecond on one CPU core (a table lookup, no transformer pass): such a router
        may score in the process that takes the request, without a batched deployment of its
        own. Kinds that can say so override this; the default is the safe answer."""
        return False

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything but the weights needed to rebuild the router."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    # -- training -----------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def train(cls, table: pd.DataFrame, *, seed: int = 0, **options: Any) -> BaseRouter:
        """A router trained on `table`, the training table `trains_on` names (battles or
        per-prompt labels, as `routers.data.tables.load_training_table` builds them).

        The same `seed` gives the same router. `options` are the kind's own keyword
        parameters (`train_option_names`); callers that take them from a user check them
        first with `check_train_options`.
        """

    @classmethod
    def train_option_names(cls) -> list[str]:
        """The keyword options the kind's `train` takes, besides the table and `seed`."""
        parameters = list(inspect.signature(cls.train).parameters.values())
        return [
            p.name
            for p in parameters[1:]
            if p.name != "seed" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    @classmethod
    def check_train_options(cls, options: Mapping[str, Any]) -> None:
        """OptionError naming every option in `options` that `train` does not take (a `train`
        with a **kwargs catch-all takes anything)."""
        parameters = inspect.signature(cls.train).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            return
        known = cls.train_option_names()
        unknown = [name for name in options if name not in known]
        if unknown:
            raise OptionError(_unknown_message(cls.kind, "training", unknown, known))

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def parse_load_options(cls, options: Mapping[str, Any]) -> LoadOptions:
        """`options` read by the kind's `load_options` model; None values count as not given.

        OptionError for an option the kind does not take or a value it cannot use.
        """
        if isinstance(options, cls.load_options):
            return options
        if isinstance(options, LoadOptions):  # another kind's: read its fields as given
            options = dict(options)
        given = {name: value for name, value in options.items() if value is not None}
        try:
            return cls.load_options.model_validate(given)
        except ValidationError as exc:
            known = list(cls.load_options.model_fields)
            unknown, problems = [], []
            for error in exc.errors():
                name = str(error["loc"][0]) if error["loc"] else ""
                if error["type"] == "extra_forbidden":
                    unknown.append(name)
                else:
                    message = str(error["msg"]).removeprefix("Value error, ")
                    problems.append(cls.option_error(name, given.get(name), message))
            messages = [_unknown_message(cls.kind, "load", unknown, known)] if unknown else []
            raise OptionError("; ".join(messages + [str(p) for p in problems])) from None

    @classmethod
    def option_error(cls, name: str, value: Any, reason: str) -> OptionError:
        """The OptionError for a load option whose value this router cannot use."""
        return OptionError(
            f"router kind {cls.kind!r} cannot use load option {name}={value!r}: {reason}"
        )

    @classmethod
    @abstractmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: LoadOptions
    ) -> BaseRouter:
        """Rebuild from `config()` and `tensors()`; `options` (an instance of the kind's
        `load_options`) may change inference-time choices."""
