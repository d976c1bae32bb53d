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

import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_jobs.answers import ChatActor, chat_stage, set_columns
from batch_jobs.commit import SUMMARY_FILE, open_job, record_job, run_files
from batch_jobs.inputs import READ_CPUS, InputError, InputFile, inspect_inputs
from batch_jobs.judge import VerdictError, single_conversation, single_score
from batch_jobs.label_config import BACKENDS_JUDGE_MODE, LabelConfig
from batch_jobs.label_cost import ModelsCostEstimate, estimate_model_rows
from batch_jobs.sample import SamplePlan, plan_sample, sampled_tables
from batch_jobs.storage import Location, locate, write_table_atomic
from routers.prices import ModelPrice
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
ANSWER_COST_COLUMN = "answer_cost_usd"
JUDGE_COST_COLUMN = "judge_cost_usd"
COST_COLUMN = "cost_usd"
COST_COLUMNS = (ANSWER_COST_COLUMN, JUDGE_COST_COLUMN, COST_COLUMN)
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
ESTIMATE_ROWS = 2000


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
    table = table.drop_columns([c for c in LABEL_COLUMNS if c in table.column_names])
    for name, kind in LABEL_COLUMNS.items():
        values = pa.nulls(len(table), kind)
        if name in COST_COLUMNS:
            values = pa.array(np.zeros(len(table)), kind)
        elif name == ERROR_COLUMN:
            values = pa.array(errors, kind)
        table = table.append_column(name, values)
    return table


def _add_cost(columns: dict[str, list[Any]], row: int, column: str, usd: float) -> None:
    columns[column][row] += usd
    columns[COST_COLUMN][row] += usd


def _usable(table: pa.Table) -> np.ndarray:
    return pc.is_null(table.column(ERROR_COLUMN)).to_numpy(zero_copy_only=False)


class ModelAnswerBatch(ChatActor):
    """Ray Data actor: its model answers the usable pairs that name it; every other row passes
    through unchanged."""

    def __init__(
        self,
        backend: dict[str, Any],
        prompt_column: str,
        price: dict[str, Any],
        max_tokens: int,
        temperature: float,
        requests_per_s: float | None = None,
        concurrency: int = 64,
    ) -> None:
        super().__init__(backend, requests_per_s, concurrency, who="model")
        self.prompt_column = prompt_column
        self.price = ModelPrice.model_validate(price)
        self.max_tokens = max_tokens
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
        names = (RESPONSE_COLUMN, ERROR_COLUMN, *COST_COLUMNS)
        columns = {name: table.column(name).to_pylist() for name in names}
        for i, reply in zip(rows, replies, strict=True):
            if reply.error is not None:
                columns[ERROR_COLUMN][i] = reply.error
                continue
            columns[RESPONSE_COLUMN][i] = reply.text
            _add_cost(columns, i, ANSWER_COST_COLUMN, reply.cost(self.price))
        return set_columns(table, columns)


class GradeBatch(ChatActor):
    """Ray Data actor: the judge grades every answered pair alone; writes the grade, the score
    (grade over 10), the judge's reply and the judging cost. A reply without exactly one grade
    1-10 makes the pair an error row that keeps the reply."""

    def __init__(
        self,
        backend: dict[str, Any],
        prompt_column: str,
        price: dict[str, Any],
        max_tokens: int,
        requests_per_s: float | None = None,
        concurrency: int = 64,
    ) -> None:
        super().__init__(backend, requests_per_s, concurrency, who="judge model")
        self.prompt_column = prompt_column
        self.price = ModelPrice.model_validate(price)
        self.max_tokens = max_tokens

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
            _add_cost(columns, i, JUDGE_COST_COLUMN, reply.cost(self.price))
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
        scores = table.column(SCORE_COLUMN)
        totals = {
            "rows": table.num_rows,
            "labeled": int(pc.sum(pc.is_valid(scores)).as_py() or 0),
            "errors": int(pc.sum(pc.is_valid(table.column(ERROR_COLUMN))).as_py() or 0),
        }
        models = table.column(MODEL_COLUMN)
        for model in pc.unique(models).to_pylist():
            mine = table.filter(pc.equal(models, model)).column(SCORE_COLUMN)
            totals[f"labeled:{model}"] = int(pc.sum(pc.is_valid(mine)).as_py() or 0)
            totals[f"score_sum:{model}"] = float(pc.sum(mine).as_py() or 0.0)
        for column in COST_COLUMNS:
            totals[column] = float(pc.sum(table.column(column)).as_py() or 0.0)
        return totals


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
        "cost_usd": {
            "answers": totals.get(ANSWER_COST_COLUMN, 0.0),
            "judge": totals.get(JUDGE_COST_COLUMN, 0.0),
            "total": totals.get(COST_COLUMN, 0.0),
        },
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
    """The whole run's estimate: over the sampled rows, or over a sample of the archive scaled
    up to all of its rows."""
    scale = 1.0
    if plan is None:
        total = sum(f.num_rows for f in files)
        plan = plan_sample(files, min(ESTIMATE_ROWS, total), seed)
        scale = total / plan.size if plan.size else 0.0
    estimate = ModelsCostEstimate()
    for _, table in sampled_tables(files, plan, [prompt_column]):
        estimate += estimate_model_rows(config, table.column(prompt_column).to_pylist())
    return estimate.scaled(scale)


def run(
    input_path: str,
    output_path: str,
    config: LabelConfig,
    *,
    sample: int | None = None,
    seed: int = 0,
    prompt_column: str = "prompt",
    s3_endpoint: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Label every row of the archive, or a sample of `sample` rows, with every listed model;
    with `dry_run`, only estimate the cost."""
    if not config.backends:
        raise ValueError("N-model labelling needs `backends:` in the label config")
    if config.judge_mode != "single":
        raise ValueError(BACKENDS_JUDGE_MODE)
    if sample is not None and sample < 1:
        raise ValueError(f"--sample takes a number of rows (at least 1), got {sample}")
    if prompt_column in (MODEL_COLUMN, *LABEL_COLUMNS):
        raise InputError(f"the prompt column cannot be named {prompt_column!r}: the job writes it")
    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    plan = plan_sample(files, sample, seed) if sample is not None else None
    if plan is not None and not plan.size:
        raise InputError(f"no rows to sample under {source.uri}")
    estimate = estimate_cost(files, plan, config, prompt_column, seed)
    logger.info("%s", estimate.describe())
    if dry_run:
        return {"dry_run": True, "estimated_cost_usd": estimate.as_dict()}

    models = config.models
    identity = {
        "job": "label",
        "input": input_path.rstrip("/"),
        "config_sha256": config.fingerprint(),
        "prompt_column": prompt_column,
        "judge_mode": "single",
        "models": models,
        "sample": sample,
        **({"seed": seed, "sample_sha256": plan.digest()} if plan is not None else {}),
    }
    if open_job(output, identity, overwrite) is None:
        record_job(output, identity, estimated_cost_usd=estimate.as_dict())
    pairs = write_pairs(files, plan or all_rows(files), models, output)
    files = inspect_inputs(pairs, prompt_column)
    judge_price = config.backends_judge_price.model_dump()

    def pipeline(dataset: Any) -> Any:
        # As light as the read it follows, so Ray Data fuses the two into one task.
        dataset = dataset.map_batches(
            prepare_pairs,
            fn_kwargs={"prompt_column": prompt_column},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=READ_CPUS,
        )
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

    def empty(table: pa.Table) -> pa.Table:
        return prepare_pairs(table, prompt_column)

    totals, timing = run_files(files, output, pipeline, PairStats(), empty)
    summary = summarize(totals, config, estimate, output_path) | timing.summary()
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
