"""What a label run will cost, before any model is called: the answers still to write and the
judge calls, priced from the config with a four-characters-a-token estimate of each prompt and
answer, and each price's `mean_output_tokens` for text not yet written."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from batch_jobs.judge import PAIRWISE_SYSTEM, PAIRWISE_USER, SINGLE_SYSTEM, SINGLE_USER
from batch_jobs.label_config import LabelConfig
from routers.prices import estimate_tokens
from routers.prompts import prompt_error

if TYPE_CHECKING:
    from typing_extensions import Self


class _Sums:
    """Counts and USD amounts that add up over blocks of rows and scale to a whole archive;
    fields ending in `_usd` are money, the others counts (rounded when reported)."""

    @property
    def total_usd(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self) if f.name.endswith("_usd"))

    def __add__(self, other: Self) -> Self:
        return type(self)(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, factor: float) -> Self:
        return type(self)(*(getattr(self, f.name) * factor for f in fields(self)))

    def as_dict(self) -> dict[str, Any]:
        values = {k: v if k.endswith("_usd") else round(v) for k, v in asdict(self).items()}
        return {**values, "total_usd": self.total_usd}


@dataclass
class CostEstimate(_Sums):
    rows: float = 0.0  # rows that will be judged (usable prompts with both answers to hand)
    weak_answers: float = 0.0
    strong_answers: float = 0.0
    judge_calls: float = 0.0
    weak_usd: float = 0.0
    strong_usd: float = 0.0
    judge_usd: float = 0.0

    def describe(self) -> str:
        return (
            f"estimated cost: ${self.total_usd:.4f} for {round(self.rows)} rows "
            f"(weak answers ${self.weak_usd:.4f} for {round(self.weak_answers)}, strong answers "
            f"${self.strong_usd:.4f} for {round(self.strong_answers)}, judge "
            f"${self.judge_usd:.4f} for {round(self.judge_calls)} calls)"
        )


def _template_tokens(mode: str) -> int:
    system, user = (
        (PAIRWISE_SYSTEM, PAIRWISE_USER) if mode == "pairwise" else (SINGLE_SYSTEM, SINGLE_USER)
    )
    empty = user.format(question="", answer="", answer_a="", answer_b="")
    return int(estimate_tokens([system + empty])[0])


def estimate_rows(
    config: LabelConfig,
    prompts: list[Any],
    strong_answers: list[str | None],
    weak_answers: list[str | None],
) -> CostEstimate:
    """The cost of labelling these rows; an answer already given costs nothing to write but
    its length counts in the judge's input."""
    usable = np.array([prompt_error(p) is None for p in prompts], dtype=bool)
    prompt_tokens = estimate_tokens(prompts)
    answers = {"strong": strong_answers, "weak": weak_answers}
    present = {s: np.array([a is not None for a in given], bool) for s, given in answers.items()}
    for side in answers:
        if config.backend(side) is None:
            usable &= present[side]  # else an error row: nothing is answered or judged
    estimate = CostEstimate()
    answer_tokens = {}
    for side, given in answers.items():
        price = getattr(config.prices, side)
        write = usable & ~present[side]
        answer_tokens[side] = np.where(
            present[side], estimate_tokens(given), price.mean_output_tokens
        )
        setattr(estimate, f"{side}_answers", float(write.sum()))
        cost = price.cost(prompt_tokens[write]).sum() if write.any() else 0.0
        setattr(estimate, f"{side}_usd", float(cost))
    # The answers each judge call reads (pairwise: both, in either order; single: one each).
    # A row whose answer fails during the run is never judged, but is counted here.
    pairwise = config.judge_mode == "pairwise"
    calls = [("strong", "weak")] * 2 if pairwise else [("strong",), ("weak",)]
    overhead = _template_tokens(config.judge_mode)
    judge_price = config.prices.judge_price
    for sides in calls:
        tokens = overhead + prompt_tokens + sum(answer_tokens[s] for s in sides)
        estimate.judge_usd += float(judge_price.cost(tokens[usable]).sum())
    estimate.rows = float(usable.sum())
    estimate.judge_calls = float(usable.sum() * len(calls))
    return estimate


@dataclass
class ModelsCostEstimate(_Sums):
    """N-model labelling: every usable prompt answered by each listed model, each answer graded
    alone by the judge."""

    rows: float = 0.0  # prompts that will be answered and judged
    answers: float = 0.0
    judge_calls: float = 0.0
    answers_usd: float = 0.0
    judge_usd: float = 0.0

    def describe(self) -> str:
        return (
            f"estimated cost: ${self.total_usd:.4f} for {round(self.rows)} prompts (answers "
            f"${self.answers_usd:.4f} for {round(self.answers)}, judge ${self.judge_usd:.4f} "
            f"for {round(self.judge_calls)} calls)"
        )


def estimate_model_rows(config: LabelConfig, prompts: list[Any]) -> ModelsCostEstimate:
    """The cost of labelling these prompts with every listed model; an answer not yet written
    counts its price's `mean_output_tokens`, in the answer and in the judge call reading it."""
    usable = np.array([prompt_error(p) is None for p in prompts], dtype=bool)
    tokens = estimate_tokens(prompts)[usable]
    overhead = _template_tokens("single")
    judge = config.backends_judge_price
    estimate = ModelsCostEstimate(rows=float(usable.sum()))
    for price in config.prices.for_models(config.models):
        estimate.answers += float(usable.sum())
        estimate.judge_calls += float(usable.sum())
        if len(tokens):
            estimate.answers_usd += float(price.cost(tokens).sum())
            read = overhead + tokens + price.mean_output_tokens
            estimate.judge_usd += float(judge.cost(read).sum())
    return estimate
