"""Ray Data job: label prompts for router training with an LLM judge.

For each prompt (all rows, or a reproducible `--sample` spread across the archive's files) the
weak and the strong model answer through the generate job's answering stage (or the input's
`weak_response` / `strong_response` are used as they are), then a judge compares the two
answers (batch_jobs.judge) and the row gets `strong_score`, `weak_score` and `winner` in the
training schema, the judge's raw replies, and what it all cost. Rows that cannot be labelled
(a bad prompt, a failed call, a verdict that cannot be parsed) get the reason in `error`; the
job goes on. Results are committed per input file like the other jobs', so a killed job that
is run again labels every row exactly once. A config that lists `backends:` instead of a strong
and a weak model labels for an N-model router (batch_jobs.label_models).

    routeray batch label --input prompts/ --output labels/ --config label.yaml --sample 2000
    ray job submit -- routeray batch label --input ... --output ... --config ...
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch_jobs.answers import AnswerActor, ChatActor, Reply, chat_stage, set_columns
from batch_jobs.commit import SUMMARY_FILE, open_job, record_job, run_files
from batch_jobs.inputs import FOOTER_THREADS, READ_CPUS, InputError, InputFile, inspect_inputs
from batch_jobs.judge import VerdictError, judge_conversations, label
from batch_jobs.label_config import LabelConfig
from batch_jobs.label_cost import CostEstimate, estimate_rows
from batch_jobs.sample import SamplePlan, plan_sample, sampled_tables, write_sample
from batch_jobs.storage import locate
from routers.prices import ModelPrice
from routers.prompts import ERROR_COLUMN, score_table

logger = logging.getLogger(__name__)

RESPONSE_COLUMNS = {"weak": "weak_response", "strong": "strong_response"}
VERDICTS_COLUMN = "judge_verdicts"
STRONG_SCORE_COLUMN = "strong_score"
WEAK_SCORE_COLUMN = "weak_score"
WINNER_COLUMN = "winner"
ANSWER_COST_COLUMN = "answer_cost_usd"
JUDGE_COST_COLUMN = "judge_cost_usd"
COST_COLUMN = "cost_usd"
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
COST_COLUMNS = (ANSWER_COST_COLUMN, JUDGE_COST_COLUMN, COST_COLUMN)
# Rows read to estimate the cost of labelling a whole archive (scaled up to all its rows).
ESTIMATE_ROWS = 2000


class _Unscored:
    """A router that scores nothing: lets `score_table` apply the one definition of a usable
    prompt (routers.prompts) without a model."""

    def score(self, prompts: list[str]) -> np.ndarray:
        return np.zeros(len(prompts))


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
    table = table.drop_columns([c for c in LABEL_COLUMNS if c in table.column_names])
    for name, kind in LABEL_COLUMNS.items():
        values = pa.nulls(len(table), kind)
        if name in COST_COLUMNS:
            values = pa.array(np.zeros(len(table)), kind)
        elif name == ERROR_COLUMN:
            values = pa.array(errors, kind)
        table = table.append_column(name, values)
    return table


def _add_costs(columns: dict[str, list[Any]], row: int, column: str, usd: float) -> None:
    columns[column][row] += usd
    columns[COST_COLUMN][row] += usd


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
        response = RESPONSE_COLUMNS[self.side]
        names = (response, ERROR_COLUMN, ANSWER_COST_COLUMN, COST_COLUMN)
        columns = {name: table.column(name).to_pylist() for name in names}
        for i, reply in zip(rows, replies, strict=True):
            if reply.error is not None:
                columns[ERROR_COLUMN][i] = reply.error
                continue
            columns[response][i] = reply.text
            _add_costs(columns, i, ANSWER_COST_COLUMN, reply.cost(self.price))
        return set_columns(table, columns)


class JudgeBatch(ChatActor):
    """Ray Data actor: asks the judge about every row that has both answers and no error, and
    writes the verdicts, the labels and the judging cost."""

    def __init__(
        self,
        backend: dict[str, Any],
        mode: str,
        prompt_column: str,
        price: dict[str, Any],
        max_tokens: int,
        requests_per_s: float | None = None,
        concurrency: int = 64,
    ) -> None:
        super().__init__(backend, requests_per_s, concurrency, who="judge model")
        self.mode = mode
        self.prompt_column = prompt_column
        self.price = ModelPrice.model_validate(price)
        self.max_tokens = max_tokens

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
            _add_costs(columns, i, JUDGE_COST_COLUMN, sum(r.cost(self.price) for r in replies))
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
        totals = {
            "rows": table.num_rows,
            "labeled": int(pc.sum(pc.is_valid(winners)).as_py() or 0),
            "errors": int(pc.sum(pc.is_valid(table.column(ERROR_COLUMN))).as_py() or 0),
            "strong_score_sum": float(pc.sum(table.column(STRONG_SCORE_COLUMN)).as_py() or 0.0),
        }
        for winner in ("strong", "weak", "tie"):
            totals[f"winner_{winner}"] = int(pc.sum(pc.equal(winners, winner)).as_py() or 0)
        for column in COST_COLUMNS:
            totals[column] = float(pc.sum(table.column(column)).as_py() or 0.0)
        return totals


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
        "cost_usd": {
            "answers": totals.get(ANSWER_COST_COLUMN, 0.0),
            "judge": totals.get(JUDGE_COST_COLUMN, 0.0),
            "total": totals.get(COST_COLUMN, 0.0),
        },
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
    """The whole run's estimate: over the sampled rows, or over a sample of the archive scaled
    up to all of its rows."""
    scale = 1.0
    if plan is None:
        total = sum(f.num_rows for f in files)
        plan = plan_sample(files, min(ESTIMATE_ROWS, total), seed)
        scale = total / plan.size if plan.size else 0.0
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
    if config.backends:
        from batch_jobs import label_models

        return label_models.run(
            input_path,
            output_path,
            config,
            sample=sample,
            seed=seed,
            prompt_column=prompt_column,
            s3_endpoint=s3_endpoint,
            overwrite=overwrite,
            dry_run=dry_run,
        )
    if sample is not None and sample < 1:
        raise ValueError(f"--sample takes a number of rows (at least 1), got {sample}")
    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    check_answer_columns(files, config)
    plan = plan_sample(files, sample, seed) if sample is not None else None
    if plan is not None and not plan.size:
        raise InputError(f"no rows to sample under {source.uri}")
    estimate = estimate_cost(files, plan, config, prompt_column, seed)
    logger.info("%s", estimate.describe())
    if dry_run:
        return {"dry_run": True, "estimated_cost_usd": estimate.as_dict()}

    identity = {
        "job": "label",
        "input": input_path.rstrip("/"),
        "config_sha256": config.fingerprint(),
        "prompt_column": prompt_column,
        "judge_mode": config.judge_mode,
        "sample": sample,
        **({"seed": seed, "sample_sha256": plan.digest()} if plan is not None else {}),
    }
    if open_job(output, identity, overwrite) is None:
        record_job(output, identity, estimated_cost_usd=estimate.as_dict())
    if plan is not None:
        files = inspect_inputs(write_sample(files, plan, output), prompt_column)
    sides = sides_to_answer(files, config)
    configured = [side for side in RESPONSE_COLUMNS if config.backend(side) is not None]

    def pipeline(dataset: Any) -> Any:
        # As light as the read it follows, so Ray Data fuses the two into one task.
        dataset = dataset.map_batches(
            prepare_rows,
            fn_kwargs={"prompt_column": prompt_column, "configured": configured},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=READ_CPUS,
        )
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

    def empty(table: pa.Table) -> pa.Table:
        return prepare_rows(table, prompt_column, configured)

    totals, timing = run_files(files, output, pipeline, LabelStats(), empty)
    summary = summarize(totals, config, estimate, output_path) | timing.summary()
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
