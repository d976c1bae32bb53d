"""Ray Data job: route an archive (or take routed rows) and generate every answer.

Weak rows go through a vLLM engine inside a Ray Data actor pool (GPU actors on a cluster, the
CPU build here); strong rows go to the external OpenAI-compatible API from an actor that holds
the request rate and the number of requests in flight under configured limits, with retries.
A row whose answer fails keeps its reason in `error`; the job goes on. Results are committed
per input file like the route job's, so a killed job resumes without repeating a row.

With N models, generate.yaml lists them under `backends:` (each an OpenAI-compatible API or a
vLLM engine, named by its `model`, priced under `prices.models`), as the serve config does:
`strong` and `weak`, where given, are two more of them. An N-model router picks each row's
model (`batch_jobs.route.ModelChoice`; by default among exactly the configured backends) and
that model's backend answers it.

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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends import OpenAIBackendConfig, VLLMBackendConfig
from backends.config import BackendConfig
from batch_jobs.answers import (
    AnswerActor,
    ChatActor,
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
    ModelChoice,
    RouteBatch,
    job_threshold,
    model_choice,
    route_table,
)
from batch_jobs.storage import locate
from routers.data.model_names import normalize_model_name
from routers.decision.choice import ChoiceRule
from routers.prices import ModelPrice, Prices
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
    """Models and limits for `batch generate`. The `strong`, `weak`, `backends` and `prices`
    sections have the online endpoint's shape, so a serve config file works here as it is.
    With `backends`, the job routes among N models: `strong` and `weak` (if given) and every
    entry of `backends`, each priced under `prices.models` (strong and weak may fall back to
    `prices.strong` / `prices.weak`); every API backend gets `api_stage`'s limits, every vLLM
    backend `engine_stage`'s actors."""

    model_config = ConfigDict(extra="ignore")

    strong: OpenAIBackendConfig | None = None
    weak: VLLMBackendConfig | OpenAIBackendConfig | None = Field(default=None, discriminator="kind")
    backends: list[BackendConfig] = Field(default_factory=list)
    prices: Prices = Prices()
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    strong_stage: StrongStageConfig = StrongStageConfig()
    weak_stage: StageConfig = StageConfig()
    api_stage: StrongStageConfig = StrongStageConfig()
    engine_stage: StageConfig = StageConfig()

    @model_validator(mode="after")
    def _one_form(self) -> GenerateConfig:
        if not self.backends:
            if self.strong is None or self.weak is None:
                raise ValueError(
                    "give `strong` and `weak` (two models), or `backends` (N models; with "
                    "`strong` and `weak` too, if you like)"
                )
            return self
        if len(self.model_backends) < 2:
            raise ValueError("route among two or more models: list more under `backends`")
        names = [normalize_model_name(m) for m in self.models]
        if len(set(names)) < len(names):
            raise ValueError(f"the backends name one model twice: {self.models}")
        self.model_prices()  # every backend needs a price: said now, not after a job started
        return self

    @property
    def model_backends(self) -> list[OpenAIBackendConfig | VLLMBackendConfig]:
        """With `backends`: every model's backend, strong and weak first (empty without)."""
        if not self.backends:
            return []
        return [b for b in (self.strong, self.weak) if b is not None] + list(self.backends)

    @property
    def models(self) -> list[str]:
        """The N models' names, as configured (empty for a strong/weak config)."""
        return [b.model for b in self.model_backends]

    def model_prices(self) -> Prices:
        """`prices` with every model priced under `models` (by its configured name); strong
        and weak fall back to `prices.strong` / `prices.weak`. ValueError for a backend
        without a price."""
        priced = dict(self.prices.models)
        for backend in self.model_backends:
            try:
                priced[backend.model] = self.prices.for_model(backend.model)
            except ValueError:
                if backend is self.strong:
                    priced[backend.model] = self.prices.strong
                elif backend is self.weak:
                    priced[backend.model] = self.prices.weak
                else:
                    raise
        return self.prices.model_copy(update={"models": priced})

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        document = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" in document:  # a Ray Serve config file: the app's arguments
            document = document["applications"][0].get("args", {})
        config = cls.model_validate(document)
        # Actors may start in another directory: pin relative paths now.
        base = Path.cwd()
        backends: dict[str, Any] = {
            name: value.with_absolute_paths(base)
            for name, value in config
            if isinstance(value, (OpenAIBackendConfig, VLLMBackendConfig))
        }
        backends["backends"] = [b.with_absolute_paths(base) for b in config.backends]
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


def same_model(a: str | None, b: str) -> bool:
    """Whether a routed row's model is this backend's, under any spelling."""
    return a is not None and (a == b or normalize_model_name(a) == normalize_model_name(b))


class ModelAnswerBatch(AnswerBatch):
    """Ray Data actor for one of N backends: answers the rows routed to its model (at its
    price) and passes every other row through; a row routed to a model that no backend serves
    gets an error saying so (`known`: every backend's model)."""

    def __init__(
        self,
        backend: dict[str, Any],
        prompt_column: str,
        price: dict[str, Any],
        known: list[str],
        max_tokens: int,
        temperature: float,
        requests_per_s: float | None = None,
        concurrency: int = 64,
    ) -> None:
        ChatActor.__init__(self, backend, requests_per_s, concurrency, who="model")
        self.side = backend["model"]
        self.prompt_column = prompt_column
        self.price = ModelPrice.model_validate(price)
        self.known = known
        self.max_tokens = max_tokens
        self.temperature = temperature

    def prepare(self, table: pa.Table) -> pa.Table:
        table = with_answer_columns(table)
        routes = table.column(ROUTE_COLUMN).to_pylist()
        errors = table.column(ERROR_COLUMN).to_pylist()
        unknown = [
            i
            for i, route in enumerate(routes)
            if route is not None
            and errors[i] is None
            and not any(same_model(route, k) for k in self.known)
        ]
        for i in unknown:
            errors[i] = (
                f"routed to {routes[i]!r}, which no backend serves ({', '.join(self.known)})"
            )
        return set_columns(table, {ERROR_COLUMN: errors}) if unknown else table

    def rows_to_answer(self, table: pa.Table) -> list[int]:
        routes = table.column(ROUTE_COLUMN).to_pylist()
        return [i for i, route in enumerate(routes) if same_model(route, self.side)]


def with_answer_columns(table: pa.Table) -> pa.Table:
    """The answer columns, all null, on a table that lacks them (so every output has them)."""
    if ERROR_COLUMN not in table.column_names:
        table = table.append_column(ERROR_COLUMN, pa.nulls(len(table), pa.string()))
    for name, kind in ANSWER_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), kind))
    return table


class GenerateStats:
    """Totals of one answered output file (the job summary adds them up); with N `models`,
    the rows each answered and their cost (`answered:<model>`, `cost:<model>`)."""

    def __init__(self, prices: Prices, models: list[str] | None = None) -> None:
        self.prices = prices
        self.models = models or []

    def __call__(self, table: pa.Table) -> dict[str, float]:
        routes = np.array(table.column(ROUTE_COLUMN).to_pylist(), dtype=object)
        answered = pc.is_valid(table.column(RESPONSE_COLUMN)).to_numpy(zero_copy_only=False)
        tokens_in = table.column(INPUT_TOKENS_COLUMN).fill_null(0).to_numpy()
        tokens_out = table.column(OUTPUT_TOKENS_COLUMN).fill_null(0).to_numpy()
        if self.models:
            cost = table.column(COST_USD_COLUMN).fill_null(0.0).to_numpy(zero_copy_only=False)
            stats: dict[str, float] = {
                "rows": table.num_rows,
                "errors": int((~answered).sum()),
                "input_tokens": int(tokens_in.sum()),
                "output_tokens": int(tokens_out.sum()),
                "cost_usd": float(cost.sum()),
            }
            for model in self.models:
                mine = answered & np.array([same_model(r, model) for r in routes], bool)
                stats[f"answered:{model}"] = int(mine.sum())
                stats[f"cost:{model}"] = float(cost[mine].sum())
            return stats
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


def summarize_models(totals: dict[str, float], models: list[str], output: str) -> dict[str, Any]:
    return {
        **{name: int(totals.get(name, 0)) for name in ("rows", "errors")},
        "models": {
            m: {
                "answered": int(totals.get(f"answered:{m}", 0)),
                "cost_usd": totals.get(f"cost:{m}", 0.0),
            }
            for m in models
        },
        **{name: int(totals.get(name, 0)) for name in ("input_tokens", "output_tokens")},
        "cost_usd": totals.get("cost_usd", 0.0),
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
    rule: ChoiceRule | None = None,
) -> dict[str, Any]:
    """Answer every row of the archive; rows without a `route` column are routed first (with
    N backends, by an N-model router among the backends' models unless `load_options` names
    `models`, by `rule`)."""
    import ray

    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    routed = all(ROUTE_COLUMN in dict(f.columns) for f in files)
    router_dir = None if routed else str(router_path(router))
    load_options = dict(load_options or {})
    choice = _choice(config, router_dir, load_options, rule, threshold, strong_pct)
    identity = {
        "job": "generate",
        "input": input_path.rstrip("/"),
        "config_sha256": config.fingerprint(),
        "router": router_dir,
        "threshold": threshold,
        "prompt_column": prompt_column,
        **({"strong_pct": strong_pct} if strong_pct is not None else {}),
        **({"load_options": load_options} if load_options else {}),
        **({"choice": choice.model_dump()} if choice else {}),
    }
    if router_dir and choice is None:
        # Deterministic (a seeded calibration sample), so a rerun decides the same threshold.
        threshold = job_threshold(
            router_dir, load_options, threshold, strong_pct, source.fs, files, prompt_column
        )
    if open_job(output, identity, overwrite) is None:
        record_job(output, identity, threshold_used=threshold)
    prices = config.prices.model_dump()
    model_prices = config.model_prices() if config.backends else config.prices

    def answer_model(backend: Any, dataset: Any) -> Any:
        engine = isinstance(backend, VLLMBackendConfig)
        return chat_stage(
            dataset,
            ModelAnswerBatch,
            backend,
            config.engine_stage if engine else config.api_stage,
            prompt_column=prompt_column,
            price=model_prices.for_model(backend.model).model_dump(),
            known=config.models,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
        )

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
                    "choice": choice.model_dump() if choice else None,
                },
                batch_size=route_batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=0.5,
            )
        if config.backends:
            for backend in config.model_backends:
                dataset = answer_model(backend, dataset)
            return dataset
        return answer("strong", answer("weak", dataset))

    def empty(table: pa.Table) -> pa.Table:
        if router_dir:
            cutoff = None if choice else threshold or 0.0
            table = route_table(None, table, cutoff, prompt_column, config.prices, choice)
        return with_answer_columns(table)

    stats = GenerateStats(config.prices, config.models)
    totals, timing = run_files(files, output, pipeline, stats, empty)
    if config.backends:
        summary = summarize_models(totals, config.models, output_path) | timing.summary()
    else:
        summary = summarize(totals, output_path) | timing.summary()
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _choice(
    config: GenerateConfig,
    router_dir: str | None,
    load_options: dict[str, Any],
    rule: ChoiceRule | None,
    threshold: float | None,
    strong_pct: float | None,
) -> ModelChoice | None:
    """How unrouted rows pick among N backends (None: two models, or routed input); the
    router's models default to the backends'. ValueError when the router and the config
    disagree on how many models there are."""
    if router_dir is None:
        return None
    if config.backends:
        load_options.setdefault("models", config.models)
    prices = config.model_prices() if config.backends else config.prices
    choice = model_choice(router_dir, load_options, prices, rule, False, threshold, strong_pct)
    if config.backends and choice is None:
        raise ValueError(
            f"the config lists {len(config.models)} backends, but {router_dir} is a two-model "
            "router: route among N backends with an N-model router (--router multi)"
        )
    if choice is not None and not config.backends:
        raise ValueError(
            f"{router_dir} is an N-model router: list its models under `backends:` in the "
            "config (each with a price under `prices.models`), not `strong` and `weak`"
        )
    return choice
