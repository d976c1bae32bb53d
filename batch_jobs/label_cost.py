"""What a label run costs. Before any model is called, an estimate: the answers still to write
and the judge calls, priced from the config with a four-characters-a-token estimate of each
prompt and answer, and each price's `mean_output_tokens` for text not yet written. While it
runs, what each row spent, in the cost columns that both label jobs (two-model and N-model)
write and add up the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_jobs.inputs import InputFile
from batch_jobs.judge import PAIRWISE_SYSTEM, PAIRWISE_USER, SINGLE_SYSTEM, SINGLE_USER
from batch_jobs.label_config import LabelConfig
from batch_jobs.sample import SamplePlan, plan_sample
from routers.prices import estimate_tokens
from routers.prompts import prompt_error

if TYPE_CHECKING:
    from typing_extensions import Self

ANSWER_COST_COLUMN = "answer_cost_usd"
JUDGE_COST_COLUMN = "judge_cost_usd"
COST_COLUMN = "cost_usd"
COST_COLUMNS = (ANSWER_COST_COLUMN, JUDGE_COST_COLUMN, COST_COLUMN)
# Rows read to estimate the cost of labelling a whole archive (scaled up to all its rows).
ESTIMATE_ROWS = 2000


def add_cost(columns: dict[str, list[Any]], row: int, column: str, usd: float) -> None:
    """Charge `usd` to one row's `column` (answer or judge) and to its total."""
    columns[column][row] += usd
    columns[COST_COLUMN][row] += usd


def cost_totals(table: pa.Table) -> dict[str, float]:
    """Each cost column's sum over a labelled output file (the file's stats)."""
    return {c: float(pc.sum(table.column(c)).as_py() or 0.0) for c in COST_COLUMNS}


def spent(totals: dict[str, float]) -> dict[str, float]:
    """The job summary's `cost_usd`, from the totals of all output files."""
    return {
        "answers": totals.get(ANSWER_COST_COLUMN, 0.0),
        "judge": totals.get(JUDGE_COST_COLUMN, 0.0),
        "total": totals.get(COST_COLUMN, 0.0),
    }


def estimate_plan(
    files: list[InputFile], plan: SamplePlan | None, seed: int
) -> tuple[SamplePlan, float]:
    """The rows a run's estimate reads and the factor that scales their cost to the run: the
    sampled rows as they are, or (no sample: every row is labelled) a sample of the archive
    scaled up to all of its rows."""
    if plan is not None:
        return plan, 1.0
    total = sum(f.num_rows for f in files)
    plan = plan_sample(files, min(ESTIMATE_ROWS, total), seed)
    return plan, total / plan.size if plan.size else 0.0


class _Sums:
    """Counts and USD amounts that add up over blocks of rows and scale to a whole archive;
    fields ending in `_usd` are money, the others counts (rounded when reported)."""

    # Fields every estimate has (declared by each dataclass, in its own order: `as_dict` keeps
    # it); named here for `_describe`. Not a dataclass itself, so these make no fields.
    rows: float
    judge_calls: float
    judge_usd: float

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

    def _describe(self, unit: str, answers: list[tuple[str, float, float]]) -> str:
        """The log line of an estimate with `rows`, `judge_usd` and `judge_calls`: the total,
        then each kind of answer (name, USD, count) and the judge."""
        parts = [f"{name} ${usd:.4f} for {round(count)}" for name, usd, count in answers]
        parts.append(f"judge ${self.judge_usd:.4f} for {round(self.judge_calls)} calls")
        total = f"${self.total_usd:.4f} for {round(self.rows)} {unit}"
        return f"estimated cost: {total} ({', '.join(parts)})"


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
        answers = [
            ("weak answers", self.weak_usd, self.weak_answers),
            ("strong answers", self.strong_usd, self.strong_answers),
        ]
        return self._describe("rows", answers)


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
        return self._describe("prompts", [("answers", self.answers_usd, self.answers)])


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
