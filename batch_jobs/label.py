"""Ray Data job: label prompts for router training with an LLM judge.

For each prompt (all rows, or a reproducible `--sample` spread across the archive's files) the
weak and the strong model answer through the generate job's answering stage (or the input's
`weak_response` / `strong_response` are used as they are), then a judge compares the two
answers (batch_jobs.judge) and the row gets `strong_score`, `weak_score` and `winner` in the
training schema, the judge's raw replies, and what it all cost. Rows that cannot be labelled
(a bad prompt, a failed call, a verdict that cannot be parsed) get the reason in `error`; the
job goes on. Results are committed per input file like the other jobs', so a killed job that
is run again labels every row exactly once. A config that lists `backends:` instead of a strong
and a weak model labels for an N-model router (batch_jobs.label_models); what both forms of the
job share (the run's checks and job record, the label columns, the actors' base, the commit and
summary) is defined here once.

    routeray batch label --input prompts/ --output labels/ --config label.yaml --sample 2000
    ray job submit -- routeray batch label --input ... --output ... --config ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_jobs.answers import AnswerActor, ChatActor, Reply, chat_stage, set_columns
from batch_jobs.commit import SUMMARY_FILE, open_job, record_job, run_files
from batch_jobs.inputs import FOOTER_THREADS, READ_CPUS, InputError, InputFile, inspect_inputs
from batch_jobs.judge import VerdictError, judge_conversations, label
from batch_jobs.label_config import LabelConfig
from batch_jobs.label_cost import (
    ANSWER_COST_COLUMN,
    COST_COLUMN,
    COST_COLUMNS,
    JUDGE_COST_COLUMN,
    CostEstimate,
    ModelsCostEstimate,
    add_cost,
    cost_totals,
    estimate_plan,
    estimate_rows,
    spent,
)
from batch_jobs.sample import SamplePlan, plan_sample, sampled_tables, write_sample
from batch_jobs.storage import Location, locate
from routers.prices import ModelPrice
from routers.prompts import ERROR_COLUMN, score_table

logger = logging.getLogger(__name__)

RESPONSE_COLUMNS = {"weak": "weak_response", "strong": "strong_response"}
VERDICTS_COLUMN = "judge_verdicts"
STRONG_SCORE_COLUMN = "strong_score"
WEAK_SCORE_COLUMN = "weak_score"
WINNER_COLUMN = "winner"
# What the job adds (replacing input columns of the same names); responses are added only
# where the input lacks them.
LABEL_COLUMNS = {
    VERDICTS_COLUMN: pa.list_(pa.string()),
    STRONG_SCORE_COLUMN: pa.float64(),
    WEAK_SCORE_COLUMN: pa.float64(),
    WINNER_COLUMN: pa.string(),
    ANSWER_COST_COLUMN: pa.float64(),
    JUDGE_COST_COLUMN: pa.float64(),
    COST_COLUMN: pa.float64(),
    ERROR_COLUMN: pa.string(),
}


class _Unscored:
    """A router that scores nothing: lets `score_table` apply the one definition of a usable
    prompt (routers.prompts) without a model."""

    def score(self, prompts: list[str]) -> np.ndarray:
        return np.zeros(len(prompts))


# -- what both forms of the job share (the N-model one, batch_jobs.label_models, too) -----------


@dataclass(frozen=True)
class LabelRun:
    """What one `batch label` run is asked to do, whichever form of the job does it (the
    arguments of `run`, in its order)."""

    input_path: str
    output_path: str
    sample: int | None
    seed: int
    prompt_column: str
    s3_endpoint: str | None
    overwrite: bool
    dry_run: bool


def with_label_columns(
    table: pa.Table, label_columns: dict[str, pa.DataType], errors: list[str | None]
) -> pa.Table:
    """`table` with the job's output columns (replacing input columns of the same names) as a
    row starts: costs 0, `error` from `errors`, the rest null."""
    table = table.drop_columns([c for c in label_columns if c in table.column_names])
    for name, kind in label_columns.items():
        values = pa.nulls(len(table), kind)
        if name in COST_COLUMNS:
            values = pa.array(np.zeros(len(table)), kind)
        elif name == ERROR_COLUMN:
            values = pa.array(errors, kind)
        table = table.append_column(name, values)
    return table


class LabelActor(ChatActor):
    """Base of the label stages' actors: asks `backend` about the prompts in `prompt_column`,
    at most `max_tokens` a reply, priced at `price` (a ModelPrice's fields: actors get plain
    arguments). WHO names the stage in row errors."""

    WHO: ClassVar[str] = "model"

    def __init__(
        self,
        backend: dict[str, Any],
        prompt_column: str,
        price: dict[str, Any],
        max_tokens: int,
        requests_per_s: float | None = None,
        concurrency: int = 64,
    ) -> None:
        super().__init__(backend, requests_per_s, concurrency, who=self.WHO)
        self.prompt_column = prompt_column
        self.price = ModelPrice.model_validate(price)
        self.max_tokens = max_tokens


def store_answers(
    table: pa.Table, rows: list[int], replies: list[Reply], response_column: str, price: ModelPrice
) -> pa.Table:
    """`table` with the model's replies to `rows`: each answer in `response_column`, charged as
    answering at `price`, or a failed call's reason in `error` (the row is not judged)."""
    names = (response_column, ERROR_COLUMN, ANSWER_COST_COLUMN, COST_COLUMN)
    columns = {name: table.column(name).to_pylist() for name in names}
    for i, reply in zip(rows, replies, strict=True):
        if reply.error is not None:
            columns[ERROR_COLUMN][i] = reply.error
            continue
        columns[response_column][i] = reply.text
        add_cost(columns, i, ANSWER_COST_COLUMN, reply.cost(price))
    return set_columns(table, columns)


def row_counts(table: pa.Table, labels: pa.ChunkedArray) -> dict[str, float]:
    """The first stats of a labelled output file: its rows, those with a label (`labels`
    valid) and those with an error."""
    return {
        "rows": table.num_rows,
        "labeled": int(pc.sum(pc.is_valid(labels)).as_py() or 0),
        "errors": int(pc.sum(pc.is_valid(table.column(ERROR_COLUMN))).as_py() or 0),
    }


def open_inputs(
    job: LabelRun,
    check: Callable[[list[InputFile]], None] = lambda files: None,
    reserved: Iterable[str] = (),
) -> tuple[Location, list[InputFile], SamplePlan | None]:
    """The output, the input files and the sample's plan (None: every row), after the checks
    that stop a run before any work: the sample size, a prompt column the job would overwrite
    (`reserved`), the inputs' prompts and the form's own `check` of the files."""
    sample, prompt_column = job.sample, job.prompt_column
    if sample is not None and sample < 1:
        raise ValueError(f"--sample takes a number of rows (at least 1), got {sample}")
    if prompt_column in reserved:
        raise InputError(f"the prompt column cannot be named {prompt_column!r}: the job writes it")
    source = locate(job.input_path, job.s3_endpoint)
    output = locate(job.output_path, job.s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    check(files)
    plan = plan_sample(files, sample, job.seed) if sample is not None else None
    if plan is not None and not plan.size:
        raise InputError(f"no rows to sample under {source.uri}")
    return output, files, plan


def begin_job(
    job: LabelRun,
    config: LabelConfig,
    form: dict[str, Any],
    output: Location,
    plan: SamplePlan | None,
    estimate: CostEstimate | ModelsCostEstimate,
) -> None:
    """Claim `output` for this job (batch_jobs.commit): what identifies it is the input, the
    config, the prompt column, the `form`'s fields (judge mode, models) and the sample."""
    identity = {
        "job": "label",
        "input": job.input_path.rstrip("/"),
        "config_sha256": config.fingerprint(),
        "prompt_column": job.prompt_column,
        **form,
        "sample": job.sample,
        **({"seed": job.seed, "sample_sha256": plan.digest()} if plan is not None else {}),
    }
    if open_job(output, identity, job.overwrite) is None:
        record_job(output, identity, estimated_cost_usd=estimate.as_dict())


def label_files(
    files: list[InputFile],
    output: Location,
    prepare: Callable[..., pa.Table],
    prepare_kwargs: dict[str, Any],
    stages: Callable[[Any], Any],
    stats: Callable[[pa.Table], dict[str, float]],
    summarize: Callable[[dict[str, float]], dict[str, Any]],
) -> dict[str, Any]:
    """Run `prepare` and then the model `stages` over every input file not yet committed,
    write the job summary (`summarize` of all files' stats, and this run's timing) and return
    it."""

    def pipeline(dataset: Any) -> Any:
        # As light as the read it follows, so Ray Data fuses the two into one task.
        dataset = dataset.map_batches(
            prepare,
            fn_kwargs=prepare_kwargs,
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=READ_CPUS,
        )
        return stages(dataset)

    def empty(table: pa.Table) -> pa.Table:
        return prepare(table, **prepare_kwargs)

    totals, timing = run_files(files, output, pipeline, stats, empty)
    summary = summarize(totals) | timing.summary()
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# -- the two-model form -------------------------------------------------------------------------


def prepare_rows(table: pa.Table, prompt_column: str, configured: list[str]) -> pa.Table:
    """The output columns on a block of input rows: bad prompts and rows missing an answer that
    no configured model can write get their `error`, costs start at 0, the rest is null."""
    for column in RESPONSE_COLUMNS.values():
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(len(table), pa.string()))
    errors = score_table(_Unscored(), table, prompt_column).column(ERROR_COLUMN).to_pylist()
    for side, column in RESPONSE_COLUMNS.items():
        if side in configured:
            continue
        missing = pc.is_null(table.column(column)).to_pylist()
        reason = f"no {side} answer: {column} is null and the config has no {side} model"
        errors = [e or (reason if m else None) for e, m in zip(errors, missing, strict=True)]
    return with_label_columns(table, LABEL_COLUMNS, errors)


class PairAnswerBatch(AnswerActor):
    """Ray Data actor: writes its side's answer (`weak_response` or `strong_response`) for
    every usable row that has none yet."""

    def rows_to_answer(self, table: pa.Table) -> list[int]:
        needed = pc.and_(
            pc.is_null(table.column(ERROR_COLUMN)),
            pc.is_null(table.column(RESPONSE_COLUMNS[self.side])),
        )
        return np.flatnonzero(needed.to_numpy(zero_copy_only=False)).tolist()

    def store(self, table: pa.Table, rows: list[int], replies: list[Reply]) -> pa.Table:
        return store_answers(table, rows, replies, RESPONSE_COLUMNS[self.side], self.price)


class JudgeBatch(LabelActor):
    """Ray Data actor: asks the judge about every row that has both answers and no error, and
    writes the verdicts, the labels and the judging cost."""

    WHO = "judge model"

    def __init__(self, mode: str, **actor: Any) -> None:
        super().__init__(**actor)
        self.mode = mode

    def __call__(self, table: pa.Table) -> pa.Table:
        usable = pc.is_null(table.column(ERROR_COLUMN)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(usable).tolist()
        if not rows:
            return table
        prompts = table.column(self.prompt_column).to_pylist()
        strong = table.column(RESPONSE_COLUMNS["strong"]).to_pylist()
        weak = table.column(RESPONSE_COLUMNS["weak"]).to_pylist()
        asks = [judge_conversations(self.mode, prompts[i], strong[i], weak[i]) for i in rows]
        flat = self.ask([c for calls in asks for c in calls], self.max_tokens, temperature=0.0)
        columns = {name: table.column(name).to_pylist() for name in LABEL_COLUMNS}
        per_row = len(asks[0])
        for n, i in enumerate(rows):
            replies = flat[n * per_row : (n + 1) * per_row]
            columns[VERDICTS_COLUMN][i] = [r.text for r in replies]
            add_cost(columns, i, JUDGE_COST_COLUMN, sum(r.cost(self.price) for r in replies))
            failed = next((r.error for r in replies if r.error is not None), None)
            if failed is not None:
                columns[ERROR_COLUMN][i] = failed
                continue
            try:
                verdict = label(self.mode, [r.text or "" for r in replies])
            except VerdictError as exc:
                columns[ERROR_COLUMN][i] = str(exc)
                continue
            columns[STRONG_SCORE_COLUMN][i] = verdict.strong_score
            columns[WEAK_SCORE_COLUMN][i] = verdict.weak_score
            columns[WINNER_COLUMN][i] = verdict.winner
        return set_columns(table, columns)


class LabelStats:
    """Totals of one labelled output file (the job summary adds them up)."""

    def __call__(self, table: pa.Table) -> dict[str, float]:
        winners = table.column(WINNER_COLUMN)
        totals = row_counts(table, winners)
        totals["strong_score_sum"] = float(pc.sum(table.column(STRONG_SCORE_COLUMN)).as_py() or 0.0)
        for winner in ("strong", "weak", "tie"):
            totals[f"winner_{winner}"] = int(pc.sum(pc.equal(winners, winner)).as_py() or 0)
        return totals | cost_totals(table)


def summarize(
    totals: dict[str, float], config: LabelConfig, estimate: CostEstimate, output: str
) -> dict[str, Any]:
    labeled = int(totals.get("labeled", 0))
    return {
        "rows": int(totals.get("rows", 0)),
        "labeled": labeled,
        "errors": int(totals.get("errors", 0)),
        "judge_mode": config.judge_mode,
        "winners": {w: int(totals.get(f"winner_{w}", 0)) for w in ("strong", "weak", "tie")},
        "mean_strong_score": totals.get("strong_score_sum", 0.0) / labeled if labeled else None,
        "cost_usd": spent(totals),
        "estimated_cost_usd": estimate.as_dict(),
        "output": output,
    }


def check_answer_columns(files: list[InputFile], config: LabelConfig) -> None:
    """Stop before any work when a side has no model and a file lacks its answers, or when
    given answers are not text."""
    for file in files:
        columns = dict(file.columns)
        for side, column in RESPONSE_COLUMNS.items():
            if column in columns and columns[column] not in ("string", "large_string"):
                raise InputError(
                    f"{file.location.uri}: column {column!r} holds {columns[column]}, not text"
                )
            if column not in columns and config.backend(side) is None:
                raise InputError(
                    f"{file.location.uri}: no column {column!r} and no {side} model in the "
                    "config to write the answers"
                )


def _answers_complete(file: InputFile, column: str) -> bool:
    """Whether the footer shows an answer in every row (no statistics: assume not)."""
    if column not in dict(file.columns):
        return False
    with file.location.fs.open_input_file(file.location.path) as handle:
        metadata = pq.ParquetFile(handle).metadata
    index = metadata.schema.to_arrow_schema().get_field_index(column)
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return False
    return True


def sides_to_answer(files: list[InputFile], config: LabelConfig) -> list[str]:
    """The sides with a model and at least one row without its answer: only those get an
    answering stage (a vLLM engine takes a while to start, and GPUs)."""
    sides = []
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        for side, column in RESPONSE_COLUMNS.items():
            if config.backend(side) is None:
                continue
            if not all(pool.map(_answers_complete, files, [column] * len(files))):
                sides.append(side)
    return sides


def estimate_cost(
    files: list[InputFile],
    plan: SamplePlan | None,
    config: LabelConfig,
    prompt_column: str,
    seed: int,
) -> CostEstimate:
    """The whole run's estimate (batch_jobs.label_cost.estimate_plan says over which rows)."""
    plan, scale = estimate_plan(files, plan, seed)
    estimate = CostEstimate()
    columns = [prompt_column, RESPONSE_COLUMNS["strong"], RESPONSE_COLUMNS["weak"]]
    for _, table in sampled_tables(files, plan, columns):
        prompts, strong, weak = (_values(table, c) for c in columns)
        estimate += estimate_rows(config, prompts, strong, weak)
    return estimate.scaled(scale)


def _values(table: pa.Table, column: str) -> list[Any]:
    """A column's values, or nulls where the file has no such column."""
    if column in table.column_names:
        return table.column(column).to_pylist()
    return [None] * len(table)


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
    """Label every row of the archive, or a sample of `sample` rows; with `dry_run`, only
    estimate the cost and return {"dry_run": True, "estimated_cost_usd": ...}. A config that
    lists `backends:` labels for an N-model router instead (batch_jobs.label_models)."""
    job = LabelRun(
        input_path, output_path, sample, seed, prompt_column, s3_endpoint, overwrite, dry_run
    )
    if config.backends:
        from batch_jobs import label_models

        return label_models.run(job, config)
    return _run_pairs(job, config)


def _run_pairs(job: LabelRun, config: LabelConfig) -> dict[str, Any]:
    """The two-model job: a strong and a weak answer per row, compared by the judge."""
    prompt_column = job.prompt_column
    output, files, plan = open_inputs(job, lambda files: check_answer_columns(files, config))
    estimate = estimate_cost(files, plan, config, prompt_column, job.seed)
    logger.info("%s", estimate.describe())
    if job.dry_run:
        return {"dry_run": True, "estimated_cost_usd": estimate.as_dict()}

    begin_job(job, config, {"judge_mode": config.judge_mode}, output, plan, estimate)
    if plan is not None:
        files = inspect_inputs(write_sample(files, plan, output), prompt_column)
    sides = sides_to_answer(files, config)
    configured = [side for side in RESPONSE_COLUMNS if config.backend(side) is not None]

    def stages(dataset: Any) -> Any:
        for side in ("weak", "strong"):
            if side in sides:
                dataset = chat_stage(
                    dataset,
                    PairAnswerBatch,
                    config.backend(side),
                    config.strong_stage if side == "strong" else config.weak_stage,
                    side=side,
                    prompt_column=prompt_column,
                    prices=config.prices.model_dump(),
                    max_tokens=config.max_tokens,
                    temperature=config.temperature,
                )
        return chat_stage(
            dataset,
            JudgeBatch,
            config.judge_backend,
            config.judge_stage,
            mode=config.judge_mode,
            prompt_column=prompt_column,
            price=config.prices.judge_price.model_dump(),
            max_tokens=config.judge_max_tokens,
        )

    return label_files(
        files,
        output,
        prepare_rows,
        {"prompt_column": prompt_column, "configured": configured},
        stages,
        LabelStats(),
        lambda totals: summarize(totals, config, estimate, job.output_path),
    )
