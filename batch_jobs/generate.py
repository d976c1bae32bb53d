"""Ray Data job: route an archive (or take routed rows) and generate every answer.

Weak rows go through a vLLM engine inside a Ray Data actor pool (GPU actors on a cluster, the
CPU build here); strong rows go to the external OpenAI-compatible API from an actor that holds
the request rate and the number of requests in flight under configured limits, with retries.
A row whose answer fails keeps its reason in `error`; the job goes on. Results are committed
per input file like the route job's, so a killed job resumes without repeating a row.

    routeray batch generate --input routed/ --output answers/ --config generate.yaml
    ray job submit -- routeray batch generate --input ... --output ... --config ...
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, ConfigDict, Field

from backends import OpenAIBackendConfig, VLLMBackendConfig
from batch_jobs.answers import (
    AnswerActor,
    Reply,
    StageConfig,
    StrongStageConfig,
    chat_stage,
    set_columns,
)
from batch_jobs.commit import SUMMARY_FILE, open_job, record_job, run_files
from batch_jobs.inputs import inspect_inputs
from batch_jobs.route import (
    DEFAULT_BATCH_SIZE,
    ROUTE_COLUMN,
    RouteBatch,
    job_threshold,
    route_table,
)
from batch_jobs.storage import locate
from routers.prices import Prices
from routers.prompts import ERROR_COLUMN
from routers.shipped import router_path

if TYPE_CHECKING:
    from typing_extensions import Self

RESPONSE_COLUMN = "response"
MODEL_COLUMN = "answered_by"
INPUT_TOKENS_COLUMN = "input_tokens"
OUTPUT_TOKENS_COLUMN = "output_tokens"
COST_USD_COLUMN = "cost_usd"
ANSWER_COLUMNS = {
    RESPONSE_COLUMN: pa.string(),
    MODEL_COLUMN: pa.string(),
    INPUT_TOKENS_COLUMN: pa.int64(),
    OUTPUT_TOKENS_COLUMN: pa.int64(),
    COST_USD_COLUMN: pa.float64(),
}


class GenerateConfig(BaseModel):
    """Models and limits for `batch generate`. The `strong`, `weak` and `prices` sections have
    the online endpoint's shape, so a serve config file works here as it is."""

    model_config = ConfigDict(extra="ignore")

    strong: OpenAIBackendConfig
    weak: VLLMBackendConfig | OpenAIBackendConfig = Field(discriminator="kind")
    prices: Prices = Prices()
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    strong_stage: StrongStageConfig = StrongStageConfig()
    weak_stage: StageConfig = StageConfig()

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        document = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" in document:  # a Ray Serve config file: the app's arguments
            document = document["applications"][0].get("args", {})
        config = cls.model_validate(document)
        # Actors may start in another directory: pin relative paths now.
        base = Path.cwd()
        backends = {
            name: value.with_absolute_paths(base)
            for name, value in config
            if isinstance(value, (OpenAIBackendConfig, VLLMBackendConfig))
        }
        return config.model_copy(update=backends)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class AnswerBatch(AnswerActor):
    """Ray Data actor: answers the rows routed to its side (`strong` or `weak`) and passes
    every other row through unchanged."""

    def prepare(self, table: pa.Table) -> pa.Table:
        return with_answer_columns(table)

    def rows_to_answer(self, table: pa.Table) -> list[int]:
        routes = table.column(ROUTE_COLUMN).to_pylist()
        return [i for i, route in enumerate(routes) if route == self.side]

    def store(self, table: pa.Table, rows: list[int], replies: list[Reply]) -> pa.Table:
        columns = {name: table.column(name).to_pylist() for name in (*ANSWER_COLUMNS, ERROR_COLUMN)}
        for i, reply in zip(rows, replies, strict=True):
            if reply.error is not None:
                columns[ERROR_COLUMN][i] = reply.error
                continue
            columns[RESPONSE_COLUMN][i] = reply.text
            columns[MODEL_COLUMN][i] = reply.model
            columns[INPUT_TOKENS_COLUMN][i] = reply.input_tokens
            columns[OUTPUT_TOKENS_COLUMN][i] = reply.output_tokens
            columns[COST_USD_COLUMN][i] = reply.cost(self.price)
        return set_columns(table, columns, {**ANSWER_COLUMNS, ERROR_COLUMN: pa.string()})


def with_answer_columns(table: pa.Table) -> pa.Table:
    """The answer columns, all null, on a table that lacks them (so every output has them)."""
    if ERROR_COLUMN not in table.column_names:
        table = table.append_column(ERROR_COLUMN, pa.nulls(len(table), pa.string()))
    for name, kind in ANSWER_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), kind))
    return table


class GenerateStats:
    """Totals of one answered output file (the job summary adds them up)."""

    def __init__(self, prices: Prices) -> None:
        self.prices = prices

    def __call__(self, table: pa.Table) -> dict[str, float]:
        routes = np.array(table.column(ROUTE_COLUMN).to_pylist(), dtype=object)
        answered = pc.is_valid(table.column(RESPONSE_COLUMN)).to_numpy(zero_copy_only=False)
        tokens_in = table.column(INPUT_TOKENS_COLUMN).fill_null(0).to_numpy()
        tokens_out = table.column(OUTPUT_TOKENS_COLUMN).fill_null(0).to_numpy()
        return {
            "rows": table.num_rows,
            "answered_strong": int((answered & (routes == "strong")).sum()),
            "answered_weak": int((answered & (routes == "weak")).sum()),
            "errors": int((~answered).sum()),
            "input_tokens": int(tokens_in.sum()),
            "output_tokens": int(tokens_out.sum()),
            "cost_usd": float(pc.sum(table.column(COST_USD_COLUMN)).as_py() or 0.0),
            # What the same answers would have cost had the strong model written them all.
            "all_strong_cost_usd": float(
                self.prices.strong.cost(tokens_in[answered], tokens_out[answered]).sum()
            ),
        }


def summarize(totals: dict[str, float], output: str) -> dict[str, Any]:
    cost, all_strong = totals.get("cost_usd", 0.0), totals.get("all_strong_cost_usd", 0.0)
    counts = ("rows", "answered_strong", "answered_weak", "errors", "input_tokens")
    return {
        **{name: int(totals.get(name, 0)) for name in (*counts, "output_tokens")},
        "cost_usd": cost,
        "all_strong_cost_usd": all_strong,
        "saving_vs_all_strong": 1.0 - cost / all_strong if all_strong else 0.0,
        "output": output,
    }


def run(
    input_path: str,
    output_path: str,
    config: GenerateConfig,
    *,
    router: str | None = None,
    load_options: dict[str, Any] | None = None,
    threshold: float | None = None,
    strong_pct: float | None = None,
    prompt_column: str = "prompt",
    route_batch_size: int = DEFAULT_BATCH_SIZE,
    s3_endpoint: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Answer every row of the archive; rows without a `route` column are routed first."""
    import ray

    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    routed = all(ROUTE_COLUMN in dict(f.columns) for f in files)
    router_dir = None if routed else str(router_path(router))
    load_options = dict(load_options or {})
    identity = {
        "job": "generate",
        "input": input_path.rstrip("/"),
        "config_sha256": config.fingerprint(),
        "router": router_dir,
        "threshold": threshold,
        "prompt_column": prompt_column,
        **({"strong_pct": strong_pct} if strong_pct is not None else {}),
        **({"load_options": load_options} if load_options else {}),
    }
    if router_dir:
        # Deterministic (a seeded calibration sample), so a rerun decides the same threshold.
        threshold = job_threshold(
            router_dir, load_options, threshold, strong_pct, source.fs, files, prompt_column
        )
    if open_job(output, identity, overwrite) is None:
        record_job(output, identity, threshold_used=threshold)
    prices = config.prices.model_dump()

    def answer(side: str, dataset: Any) -> Any:
        strong = side == "strong"
        return chat_stage(
            dataset,
            AnswerBatch,
            config.strong if strong else config.weak,
            config.strong_stage if strong else config.weak_stage,
            side=side,
            prompt_column=prompt_column,
            prices=prices,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
        )

    def pipeline(dataset: Any) -> Any:
        if router_dir:
            dataset = dataset.map_batches(
                RouteBatch,
                fn_constructor_kwargs={
                    "router_dir": router_dir,
                    "threshold": threshold,
                    "prompt_column": prompt_column,
                    "prices": prices,
                    "threads": 1,
                    "load_options": load_options,
                },
                batch_size=route_batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=0.5,
            )
        return answer("strong", answer("weak", dataset))

    def empty(table: pa.Table) -> pa.Table:
        if router_dir:
            table = route_table(None, table, threshold or 0.0, prompt_column, config.prices)
        return with_answer_columns(table)

    totals, timing = run_files(files, output, pipeline, GenerateStats(config.prices), empty)
    summary = summarize(totals, output_path) | timing.summary()
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
