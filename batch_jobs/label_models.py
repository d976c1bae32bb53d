"""Ray Data job: label prompts for an N-model router with an LLM judge.

`batch label` with a config that lists `backends:` (batch_jobs.label_config) runs this instead of
the two-model job (batch_jobs.label). Every sampled prompt is answered by every listed model,
and the judge grades each answer alone (single-answer grading, batch_jobs.judge: a 1-10 grade
over 10). The output is the long outcome format of the training data's outcome tables, one row
per (prompt, model):

    id, prompt, task, model, score    (plus every other input column)
    response, judge, judge_reply, grade, answer_cost_usd, judge_cost_usd, cost_usd, error

so `routers.data.user_labels.read_user_outcomes` reads it back as training rows. A row whose
answer or grade failed keeps the reason in `error` and no score; the job goes on.

Exactly once: the job first writes its own hidden inputs, `OUTPUT/.pairs/<file>`, one row per
(prompt, model) of the chosen rows (all, or the `--sample`), each file published whole. The
ordinary per-file commit (batch_jobs.commit) then runs on those, one output row per input row,
so a killed job that is run again labels every pair exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_jobs.answers import chat_stage, set_columns
from batch_jobs.inputs import InputFile, inspect_inputs
from batch_jobs.judge import VerdictError, single_conversation, single_score
from batch_jobs.label import (
    LabelActor,
    LabelRun,
    begin_job,
    label_files,
    open_inputs,
    row_counts,
    store_answers,
    with_label_columns,
)
from batch_jobs.label_config import BACKENDS_JUDGE_MODE, LabelConfig
from batch_jobs.label_cost import (
    ANSWER_COST_COLUMN,
    COST_COLUMN,
    JUDGE_COST_COLUMN,
    ModelsCostEstimate,
    add_cost,
    cost_totals,
    estimate_model_rows,
    estimate_plan,
    spent,
)
from batch_jobs.sample import SamplePlan, sampled_tables
from batch_jobs.storage import Location, write_table_atomic
from routers.prompts import ERROR_COLUMN, prompt_error

logger = logging.getLogger(__name__)

PAIRS_DIR = ".pairs"
# Rows per row group of a pairs file: each is one read task, so the pairs spread over the
# actors and stream through the stages instead of arriving as one block.
PAIR_ROW_GROUP = 64
ID_COLUMN = "id"
TASK_COLUMN = "task"
# The task of rows whose input names none: outcome tables group prompts by task.
DEFAULT_TASK = "user"
MODEL_COLUMN = "model"
SCORE_COLUMN = "score"
RESPONSE_COLUMN = "response"
JUDGE_COLUMN = "judge"
JUDGE_REPLY_COLUMN = "judge_reply"
GRADE_COLUMN = "grade"
# What the job adds to each pair (replacing input columns of the same names).
LABEL_COLUMNS = {
    RESPONSE_COLUMN: pa.string(),
    JUDGE_COLUMN: pa.string(),
    JUDGE_REPLY_COLUMN: pa.string(),
    GRADE_COLUMN: pa.float64(),
    SCORE_COLUMN: pa.float64(),
    ANSWER_COST_COLUMN: pa.float64(),
    JUDGE_COST_COLUMN: pa.float64(),
    COST_COLUMN: pa.float64(),
    ERROR_COLUMN: pa.string(),
}


# -- the hidden pairs ---------------------------------------------------------------------------


def expand(table: pa.Table, positions: np.ndarray, relative: str, models: list[str]) -> pa.Table:
    """Each row of `table` (rows `positions` of input file `relative`) once per model, in the
    models' order; an `id` ("<file>:<row>") and a `task` where the input has none."""
    n = len(models)
    pairs = table.drop_columns(
        [c for c in (MODEL_COLUMN, *LABEL_COLUMNS) if c in table.column_names]
    )
    pairs = pairs.take(pa.array(np.repeat(np.arange(len(table)), n), pa.int64()))
    if ID_COLUMN not in pairs.column_names:
        ids = [f"{relative}:{p}" for p in np.repeat(positions, n).tolist()]
        pairs = pairs.append_column(ID_COLUMN, pa.array(ids, pa.string()))
    if TASK_COLUMN not in pairs.column_names:
        pairs = pairs.append_column(TASK_COLUMN, pa.array([DEFAULT_TASK] * len(pairs), pa.string()))
    return pairs.append_column(MODEL_COLUMN, pa.array(models * len(table), pa.string()))


def _pair_tables(file: InputFile, positions: np.ndarray, models: list[str]) -> Iterator[pa.Table]:
    """The pairs of the rows at `positions` (ascending), one input row group at a time."""
    bounds = np.cumsum((0, *file.row_groups))
    groups = np.searchsorted(bounds, positions, side="right") - 1
    with file.location.fs.open_input_file(file.location.path) as handle:
        parquet = pq.ParquetFile(handle)
        for group in np.unique(groups):
            picked = positions[groups == group]
            rows = parquet.read_row_group(int(group)).take(pa.array(picked - bounds[group]))
            pairs = expand(rows, picked, file.relative, models)
            for start in range(0, len(pairs), PAIR_ROW_GROUP):
                yield pairs.slice(start, PAIR_ROW_GROUP)


def write_pairs(
    files: list[InputFile], plan: SamplePlan, models: list[str], output: Location
) -> Location:
    """The hidden input files of (prompt, model) pairs under `output` (those a previous run
    wrote are kept: the plan and the models, checked through the job record, are the same);
    returns their root."""
    root = output.join(PAIRS_DIR)
    written = 0
    for file in files:
        target = root.join(file.relative)
        if file.relative not in plan.rows or target.exists():
            continue
        with file.location.fs.open_input_file(file.location.path) as handle:
            empty = pq.ParquetFile(handle).schema_arrow.empty_table()
        schema = expand(empty, np.array([], np.int64), file.relative, models).schema
        write_table_atomic(target, _pair_tables(file, plan.rows[file.relative], models), schema)
        written += 1
    if written:
        logger.info("wrote the (prompt, model) pairs of %d files", written)
    return root


def all_rows(files: list[InputFile]) -> SamplePlan:
    return SamplePlan({f.relative: np.arange(f.num_rows) for f in files})


# -- the stages ---------------------------------------------------------------------------------


def prepare_pairs(table: pa.Table, prompt_column: str) -> pa.Table:
    """The output columns on a block of pairs: bad prompts get their `error`, costs start at
    0, the rest is null."""
    prompts = table.column(prompt_column).to_pylist()
    errors = [prompt_error(p) for p in prompts]
    return with_label_columns(table, LABEL_COLUMNS, errors)


def _usable(table: pa.Table) -> np.ndarray:
    return pc.is_null(table.column(ERROR_COLUMN)).to_numpy(zero_copy_only=False)


class ModelAnswerBatch(LabelActor):
    """Ray Data actor: its model answers the usable pairs that name it; every other row passes
    through unchanged."""

    def __init__(self, temperature: float, **actor: Any) -> None:
        super().__init__(**actor)
        self.temperature = temperature

    def __call__(self, table: pa.Table) -> pa.Table:
        mine = pc.equal(table.column(MODEL_COLUMN), self.model).fill_null(False)
        todo = mine.to_numpy(zero_copy_only=False) & _usable(table)
        rows = np.flatnonzero(todo).tolist()
        if not rows:
            return table
        prompts = table.column(self.prompt_column).to_pylist()
        asks = [[{"role": "user", "content": prompts[i]}] for i in rows]
        replies = self.ask(asks, self.max_tokens, self.temperature)
        return store_answers(table, rows, replies, RESPONSE_COLUMN, self.price)


class GradeBatch(LabelActor):
    """Ray Data actor: the judge grades every answered pair alone; writes the grade, the score
    (grade over 10), the judge's reply and the judging cost. A reply without exactly one grade
    1-10 makes the pair an error row that keeps the reply."""

    WHO = "judge model"

    def __call__(self, table: pa.Table) -> pa.Table:
        answered = pc.is_valid(table.column(RESPONSE_COLUMN)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(answered & _usable(table)).tolist()
        if not rows:
            return table
        prompts = table.column(self.prompt_column).to_pylist()
        answers = table.column(RESPONSE_COLUMN).to_pylist()
        asks = [single_conversation(prompts[i], answers[i]) for i in rows]
        replies = self.ask(asks, self.max_tokens, temperature=0.0)
        columns = {name: table.column(name).to_pylist() for name in LABEL_COLUMNS}
        for i, reply in zip(rows, replies, strict=True):
            columns[JUDGE_COLUMN][i] = self.model
            add_cost(columns, i, JUDGE_COST_COLUMN, reply.cost(self.price))
            if reply.error is not None:
                columns[ERROR_COLUMN][i] = reply.error
                continue
            columns[JUDGE_REPLY_COLUMN][i] = reply.text
            try:
                score = single_score(reply.text or "")
            except VerdictError as exc:
                columns[ERROR_COLUMN][i] = str(exc)
                continue
            columns[SCORE_COLUMN][i] = score
            columns[GRADE_COLUMN][i] = score * 10
        return set_columns(table, columns)


# -- totals, the estimate and the job -----------------------------------------------------------


class PairStats:
    """Totals of one labelled output file, per model too (the job summary adds them up)."""

    def __call__(self, table: pa.Table) -> dict[str, float]:
        totals = row_counts(table, table.column(SCORE_COLUMN))
        models = table.column(MODEL_COLUMN)
        for model in pc.unique(models).to_pylist():
            mine = table.filter(pc.equal(models, model)).column(SCORE_COLUMN)
            totals[f"labeled:{model}"] = int(pc.sum(pc.is_valid(mine)).as_py() or 0)
            totals[f"score_sum:{model}"] = float(pc.sum(mine).as_py() or 0.0)
        return totals | cost_totals(table)


def summarize(
    totals: dict[str, float], config: LabelConfig, estimate: ModelsCostEstimate, output: str
) -> dict[str, Any]:
    per_model = {}
    for model in config.models:
        labeled = int(totals.get(f"labeled:{model}", 0))
        mean = totals.get(f"score_sum:{model}", 0.0) / labeled if labeled else None
        per_model[model] = {"labeled": labeled, "mean_score": mean}
    return {
        "rows": int(totals.get("rows", 0)),
        "prompts": int(totals.get("rows", 0)) // len(config.models),
        "labeled": int(totals.get("labeled", 0)),
        "errors": int(totals.get("errors", 0)),
        "judge_mode": "single",
        "judge": config.judge_backend.model,
        "models": per_model,
        "cost_usd": spent(totals),
        "estimated_cost_usd": estimate.as_dict(),
        "output": output,
    }


def estimate_cost(
    files: list[InputFile],
    plan: SamplePlan | None,
    config: LabelConfig,
    prompt_column: str,
    seed: int,
) -> ModelsCostEstimate:
    """The whole run's estimate (batch_jobs.label_cost.estimate_plan says over which rows)."""
    plan, scale = estimate_plan(files, plan, seed)
    estimate = ModelsCostEstimate()
    for _, table in sampled_tables(files, plan, [prompt_column]):
        estimate += estimate_model_rows(config, table.column(prompt_column).to_pylist())
    return estimate.scaled(scale)


def run(job: LabelRun, config: LabelConfig) -> dict[str, Any]:
    """Label every row of the archive, or a sample of `job.sample` rows, with every listed
    model; with `job.dry_run`, only estimate the cost. `batch_jobs.label.run` calls this for a
    config with `backends:`."""
    if not config.backends:
        raise ValueError("N-model labelling needs `backends:` in the label config")
    if config.judge_mode != "single":
        raise ValueError(BACKENDS_JUDGE_MODE)
    prompt_column = job.prompt_column
    output, files, plan = open_inputs(job, reserved=(MODEL_COLUMN, *LABEL_COLUMNS))
    estimate = estimate_cost(files, plan, config, prompt_column, job.seed)
    logger.info("%s", estimate.describe())
    if job.dry_run:
        return {"dry_run": True, "estimated_cost_usd": estimate.as_dict()}

    models = config.models
    begin_job(job, config, {"judge_mode": "single", "models": models}, output, plan, estimate)
    pairs = write_pairs(files, plan or all_rows(files), models, output)
    files = inspect_inputs(pairs, prompt_column)
    judge_price = config.backends_judge_price.model_dump()

    def stages(dataset: Any) -> Any:
        for backend in config.backends:
            dataset = chat_stage(
                dataset,
                ModelAnswerBatch,
                backend,
                config.stage_for(backend),
                prompt_column=prompt_column,
                price=config.prices.for_model(backend.model).model_dump(),
                max_tokens=config.max_tokens,
                temperature=config.temperature,
            )
        return chat_stage(
            dataset,
            GradeBatch,
            config.judge_backend,
            config.judge_stage,
            prompt_column=prompt_column,
            price=judge_price,
            max_tokens=config.judge_max_tokens,
        )

    return label_files(
        files,
        output,
        prepare_pairs,
        {"prompt_column": prompt_column},
        stages,
        PairStats(),
        lambda totals: summarize(totals, config, estimate, job.output_path),
    )
