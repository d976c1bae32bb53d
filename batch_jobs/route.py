"""Ray Data job: route a Parquet archive with a router and write the decisions back.

Run it as `routeray batch route ...`, on a cluster as `ray job submit -- routeray batch route ...`.

A two-model router's rows get `strong_win_rate` and `route` (strong or weak, at the job's
threshold). An N-model router's rows get the model the one decision rule
(`routers.decision.choice.choose`) picks from the router's predicted qualities and the models'
prices: `model` (and `route`, the same name), that model's predicted `quality`, and optionally
every model's `quality:<model>`. Both get `estimated_cost` and `error`; commits, resuming and
bad rows are the same for both.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from batch_jobs.commit import (
    SUMMARY_FILE,
    WRITE_CPUS,
    Stager,
    open_job,
    record_job,
    run_files,
)
from batch_jobs.inputs import (
    READ_CPUS,
    WHOLE_FILE,
    InputFile,
    calibration_sample,
    inspect_inputs,
    iter_file_rows,
    read_unit_rows,
)
from batch_jobs.storage import locate
from routers import cap_threads
from routers.checkpoint import CONFIG_FILE, load_router, read_config
from routers.decision.choice import ChoiceRule, choose, prompt_costs
from routers.prices import ModelPrice, Prices, estimate_tokens
from routers.prompts import ERROR_COLUMN, SCORE_COLUMN, quality_column, quality_table, score_table
from routers.registry import router_class
from routers.shipped import router_path
from routers.thresholds import resolve_threshold

ROUTE_COLUMN = "route"
# The embedder sorts each call's prompts by length before batching them, so a larger call pads
# less (docs/BENCHMARKS.md, batch route).
DEFAULT_BATCH_SIZE = 4096
# A file routed whole (one work unit, written straight to its output) is redone whole if the
# job is killed while it is in flight, and each actor has at most one in flight: files of up
# to this share of the rows over the actors keep what a rerun redoes under it.
WHOLE_FILE_SHARE = 0.1
COST_COLUMN = "estimated_cost"
# N-model routers: the chosen model, and the quality the router predicts for it.
MODEL_COLUMN = "model"
QUALITY_COLUMN = "quality"
# Prompts a strong share is calibrated on.
CALIBRATION_SIZE = 2000


STAGED_COLUMN = "staged_rows"


class ModelChoice(BaseModel):
    """How a job with an N-model router picks each row's model: the router's models (as
    configured, in its order), their prices in that order, the rule, and whether every model's
    `quality:<model>` column is written too. Settled once on the driver, so that every actor,
    the job record and the summary agree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str]
    prices: list[ModelPrice]
    rule: ChoiceRule = ChoiceRule()
    quality_columns: bool = False

    @classmethod
    def of(
        cls,
        models: list[str],
        prices: Prices,
        rule: ChoiceRule | None = None,
        quality_columns: bool = False,
    ) -> ModelChoice:
        """ValueError naming the first model without a price (every model needs one)."""
        return cls(
            models=list(models),
            prices=prices.for_models(list(models)),
            rule=rule or ChoiceRule(),
            quality_columns=quality_columns,
        )


def routes_many_models(router_dir: str | Path) -> bool:
    """Whether the router directory holds an N-model router (its kind predicts qualities),
    decided from its config alone: the driver need not load a two-model router to know."""
    kind = str(read_config(router_dir).get("router"))
    return callable(getattr(router_class(kind), "qualities", None))


class RouteBatch:
    """Ray Data actor: loads the router once, then scores, routes and prices each batch, and
    (given a `stager`) commits it there and then, returning only how many rows it staged.

    Committing in the actor keeps publishing in step with routing. Behind a Ray Data write
    operator it was not: on a small cluster the router actors hold the CPUs, the write tasks
    get them last, and files were published mostly at the end, so a job killed late redid
    almost everything (issue 29). Ray Data's own levers (the write operator's resource
    reservation, `DataContext.op_resource_reservation_ratio`, its concurrency) decide which
    operator gets the next free CPU, not that routed rows are written before more are routed;
    here a batch's rows are staged, and the file they complete published, before the actor
    takes its next batch. It also spares each routed block a trip through the object store
    and a second process. The commit is the same exactly-once one (`batch_jobs.commit`):
    a block that Ray runs again restages the same piece under the same name.

    Given `fs`, a batch is work units (row groups, `batch_jobs.inputs.work_units`) and the
    actor reads their rows itself, routing them `call_rows` at a time: the rows never enter
    Ray's object store, whose pages an actor that reads blocks out of it keeps in its resident
    memory (so that its RSS grew with the archive: docs/BENCHMARKS.md, issue 29). A unit that
    is a whole small file is read, routed and written straight to its output a row group at
    a time (`Stager.publish_whole`): one write of its rows, not staging, reading back and
    merging, which cost the job as much CPU as routing once the router got fast."""

    def __init__(
        self,
        router_dir: str,
        threshold: float | None,
        prompt_column: str,
        prices: dict[str, Any],
        threads: int | None = None,
        load_options: dict[str, Any] | None = None,
        stager: Stager | None = None,
        choice: dict[str, Any] | None = None,
        fs: Any | None = None,
        call_rows: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if threads:
            cap_threads(threads)
        self.router = load_router(router_dir, **(load_options or {}))
        self.threshold = threshold
        self.prompt_column = prompt_column
        self.prices = Prices.model_validate(prices)
        self.stager = stager
        self.choice = None if choice is None else ModelChoice.model_validate(choice)
        self.fs = fs
        self.call_rows = call_rows

    def __call__(self, batch: pa.Table | dict[str, Any]) -> pa.Table:
        if self.fs is None:
            routed = self._route(batch)
            return routed if self.stager is None else self._receipt(self.stager.stage(routed))
        staged = 0
        rest = np.ones(len(batch["path"]), bool)
        if self.stager is not None:
            # A small file, whole: routed a row group at a time and written straight out.
            for i in np.flatnonzero(np.asarray(batch["row_group"]) == WHOLE_FILE):
                unit = {name: values[i] for name, values in batch.items()}
                routed = self._in_calls(iter_file_rows(self.fs, unit))
                staged += self.stager.publish_whole(
                    str(unit["relative"]), int(unit["rows"]), routed
                )
                rest[i] = False
        if not rest.any():
            return self._receipt(staged)
        rows = read_unit_rows({name: values[rest] for name, values in batch.items()}, self.fs)
        routed = pa.concat_tables(self._in_calls([rows]))
        return routed if self.stager is None else self._receipt(staged + self.stager.stage(routed))

    def _in_calls(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Each table routed `call_rows` rows a router call."""
        for table in tables:
            for start in range(0, max(table.num_rows, 1), self.call_rows):
                yield self._route(table.slice(start, self.call_rows))

    def _route(self, table: pa.Table) -> pa.Table:
        return route_table(
            self.router, table, self.threshold, self.prompt_column, self.prices, self.choice
        )

    @staticmethod
    def _receipt(rows: int) -> pa.Table:
        return pa.table({STAGED_COLUMN: pa.array([rows], pa.int64())})


def route_table(
    router: Any,
    table: pa.Table,
    threshold: float | None,
    prompt_column: str,
    prices: Prices,
    choice: ModelChoice | None = None,
) -> pa.Table:
    """`table` routed: by `threshold` for a two-model router, by `choice` for an N-model one.
    `router` may be None for a table without rows."""
    if choice is not None:
        return choose_table(router, table, prompt_column, choice)
    assert threshold is not None, "a two-model route needs a threshold"
    table = score_table(router, table, prompt_column)
    scores = table.column(SCORE_COLUMN).to_numpy(zero_copy_only=False)
    valid = ~np.isnan(scores)
    strong = valid & (scores >= threshold)
    tokens = estimate_tokens(table.column(prompt_column).to_pylist())
    cost = np.where(strong, prices.strong.cost(tokens), prices.weak.cost(tokens))
    route = np.where(strong, "strong", "weak").astype(object)
    route[~valid] = None
    return table.append_column(ROUTE_COLUMN, pa.array(route, pa.string())).append_column(
        COST_COLUMN, pa.array(np.where(valid, cost, np.nan), pa.float64(), mask=~valid)
    )


def choose_table(router: Any, table: pa.Table, prompt_column: str, choice: ModelChoice) -> pa.Table:
    """`table` plus, per row, the model `choice.rule` picks from the router's qualities and
    the prompt's cost on each model: `model` and `route` (its name), `quality` (its predicted
    quality), `estimated_cost` (USD on it); all null, and the reason in `error`, for a bad
    prompt. The `quality:<model>` columns stay when `choice.quality_columns` says so."""
    if router is not None and list(router.models) != choice.models:
        # The driver settled the list from its own load; an actor must route among the same.
        raise ValueError(f"router models {router.models} differ from the job's {choice.models}")
    scored = quality_table(router, table, prompt_column, models=choice.models)
    names = [quality_column(m) for m in choice.models]
    valid = pc.is_null(scored.column(ERROR_COLUMN)).to_numpy(zero_copy_only=False)
    qualities = np.column_stack(
        [scored.column(n).to_numpy(zero_copy_only=False) for n in names]
    ).reshape(scored.num_rows, len(names))
    costs = prompt_costs(
        choice.prices, tokens=estimate_tokens(scored.column(prompt_column).to_pylist())
    )
    picked = np.zeros(scored.num_rows, dtype=np.int64)
    if valid.any():
        picked[valid] = choose(qualities[valid], costs[valid], choice.rule)
    rows = np.arange(scored.num_rows)
    model = np.array(choice.models, dtype=object)[picked]
    bad = ~valid
    if not choice.quality_columns:
        scored = scored.drop_columns(names)
    added = {
        MODEL_COLUMN: pa.array(model, pa.string(), mask=bad),
        ROUTE_COLUMN: pa.array(model, pa.string(), mask=bad),
        QUALITY_COLUMN: pa.array(qualities[rows, picked], pa.float64(), mask=bad),
        COST_COLUMN: pa.array(costs[rows, picked], pa.float64(), mask=bad),
    }
    scored = scored.drop_columns([n for n in added if n in scored.column_names])
    for name, values in added.items():
        scored = scored.append_column(name, values)
    return scored


class RouteStats:
    """Totals of one routed output file (stored with it; the job summary adds them up). With
    an N-model `choice`: rows and estimated cost per model (`rows:<model>`, `cost:<model>`),
    and what the file would cost with every row on one model (`cost_if_all:<model>`)."""

    def __init__(self, prompt_column: str, prices: Prices, choice: ModelChoice | None = None):
        self.prompt_column = prompt_column
        self.prices = prices
        self.choice = choice

    def __call__(self, table: pa.Table) -> dict[str, float]:
        if self.choice is not None:
            return self._per_model(table, self.choice)
        routes = table.column(ROUTE_COLUMN)
        valid = pc.is_valid(routes).to_numpy(zero_copy_only=False)
        tokens = estimate_tokens(table.column(self.prompt_column).to_pylist())
        return {
            "rows": table.num_rows,
            "strong": int(pc.sum(pc.equal(routes, "strong")).as_py() or 0),
            "weak": int(pc.sum(pc.equal(routes, "weak")).as_py() or 0),
            "errors": int((~valid).sum()),
            "estimated_cost_usd": float(pc.sum(table.column(COST_COLUMN)).as_py() or 0.0),
            "all_strong_cost_usd": float(self.prices.strong.cost(tokens[valid]).sum()),
        }

    def _per_model(self, table: pa.Table, choice: ModelChoice) -> dict[str, float]:
        chosen = np.array(table.column(MODEL_COLUMN).to_pylist(), dtype=object)
        valid = chosen != None  # noqa: E711 (elementwise on an object array)
        cost = table.column(COST_COLUMN).fill_null(0.0).to_numpy(zero_copy_only=False)
        tokens = estimate_tokens(table.column(self.prompt_column).to_pylist())[valid]
        stats: dict[str, float] = {
            "rows": table.num_rows,
            "errors": int((~valid).sum()),
            "estimated_cost_usd": float(cost.sum()),
        }
        for model, price in zip(choice.models, choice.prices, strict=True):
            mine = chosen == model
            stats[f"rows:{model}"] = int(mine.sum())
            stats[f"cost:{model}"] = float(cost[mine].sum())
            stats[f"cost_if_all:{model}"] = float(np.sum(price.cost(tokens)))
        return stats


def summarize(totals: dict[str, float], threshold: float, output: str) -> dict[str, Any]:
    strong, weak = int(totals.get("strong", 0)), int(totals.get("weak", 0))
    cost, all_strong = totals.get("estimated_cost_usd", 0.0), totals.get("all_strong_cost_usd", 0.0)
    return {
        "rows": int(totals.get("rows", 0)),
        "strong": strong,
        "weak": weak,
        "errors": int(totals.get("errors", 0)),
        "strong_share": strong / max(1, strong + weak),
        "threshold": threshold,
        "estimated_cost_usd": cost,
        "all_strong_cost_usd": all_strong,
        "saving_vs_all_strong": 1.0 - cost / all_strong if all_strong else 0.0,
        "output": output,
    }


def summarize_models(totals: dict[str, float], choice: ModelChoice, output: str) -> dict[str, Any]:
    """The summary of an N-model route: per model, its rows, their share of the routed rows,
    their estimated cost, and what every routed row would have cost on that model alone."""
    rows, errors = int(totals.get("rows", 0)), int(totals.get("errors", 0))
    routed = max(1, rows - errors)
    return {
        "rows": rows,
        "errors": errors,
        "rule": choice.rule.describe(),
        "models": {
            model: {
                "rows": int(totals.get(f"rows:{model}", 0)),
                "share": totals.get(f"rows:{model}", 0) / routed,
                "estimated_cost_usd": totals.get(f"cost:{model}", 0.0),
                "cost_if_all_usd": totals.get(f"cost_if_all:{model}", 0.0),
            }
            for model in choice.models
        },
        "estimated_cost_usd": totals.get("estimated_cost_usd", 0.0),
        "output": output,
    }


def model_choice(
    router_dir: str,
    load_options: dict[str, Any],
    prices: Prices,
    rule: ChoiceRule | None,
    quality_columns: bool,
    threshold: float | None,
    strong_pct: float | None,
) -> ModelChoice | None:
    """The job's N-model choice (None for a two-model router); ValueError for options that
    belong to the other kind of router, or a model without a price."""
    if not routes_many_models(router_dir):
        if rule is not None or quality_columns:
            raise ValueError(
                f"{router_dir} is a two-model router: it routes at a threshold (--threshold, "
                "--strong-pct); a cost weight, a margin and quality columns are for N-model "
                "routers"
            )
        return None
    if threshold is not None or strong_pct is not None:
        raise ValueError(
            f"{router_dir} is an N-model router: it picks a model by a cost weight or a margin "
            "(--cost-weight, --margin), not at a threshold or strong share"
        )
    models = list(load_router(router_dir, **load_options).models)
    return ModelChoice.of(models, prices, rule, quality_columns)


def job_threshold(
    router_dir: str,
    load_options: dict[str, Any],
    threshold: float | None,
    strong_pct: float | None,
    fs: Any,
    files: list[InputFile],
    prompt_column: str,
    calibration_size: int = CALIBRATION_SIZE,
) -> float:
    """The job's threshold (routers.thresholds); a strong share is calibrated on a
    reproducible sample of prompts from across the archive."""
    scorer, sample = None, []
    if strong_pct is not None:
        scorer = load_router(router_dir, **load_options)
        sample = calibration_sample(fs, files, prompt_column, calibration_size)
    return resolve_threshold(
        router_dir, threshold=threshold, strong_pct=strong_pct, router=scorer, prompts=sample
    )


def actor_layout(
    num_actors: int | None,
    num_cpus: float | None,
    num_gpus: float,
    reserved_cpus: float = READ_CPUS + WRITE_CPUS,
) -> tuple[int, float, int | None]:
    """Router actors, CPUs per actor and torch threads per actor; what is not given fills the
    cluster: one actor per GPU share, or one single-threaded actor per CPU (on CPUs, separate
    processes scale better than threads in one), leaving `reserved_cpus` for the read and
    write tasks. The route job commits in its actors and has no write tasks now; the write
    share stays reserved for the commit tracker and the driver, and tests/test_deploy.py
    sizes clusters by it."""
    import ray

    resources = ray.cluster_resources()
    if num_gpus:
        actors = num_actors or max(1, int(resources.get("GPU", 0) / num_gpus))
        return actors, num_cpus or 1.0, None
    total = resources.get("CPU", 1.0)
    actors = num_actors or max(1, int(total))
    cpus = num_cpus or max(0.1, (total - reserved_cpus) / actors)
    return actors, cpus, max(1, round(cpus))


def call_size(batch_size: int, files: list[InputFile], actors: int) -> int:
    """Prompts per router call, capped so that a small archive still spreads over the pool."""
    rows = sum(f.num_rows for f in files)
    return max(1, min(batch_size, -(-rows // actors)))


def router_identity(router_dir: str | Path) -> str:
    """What a job records about its router: a hash of its config (which holds the weights'
    hash), so a rerun with another router is refused instead of mixing results."""
    return hashlib.sha256(Path(router_dir, CONFIG_FILE).read_bytes()).hexdigest()


def run(
    input_path: str,
    output_path: str,
    *,
    router: str | None = None,
    load_options: dict[str, Any] | None = None,
    threshold: float | None = None,
    strong_pct: float | None = None,
    prompt_column: str = "prompt",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float = 0.0,
    calibration_size: int = CALIBRATION_SIZE,
    prices: Prices | None = None,
    s3_endpoint: str | None = None,
    overwrite: bool = False,
    rule: ChoiceRule | None = None,
    quality_columns: bool = False,
) -> dict[str, Any]:
    """Route every file under `input_path` into `output_path`; resumable (see batch_jobs.commit).
    A two-model router routes at a threshold (`threshold`, `strong_pct`, or the recorded one);
    an N-model router picks each row's model by `rule` (default: ChoiceRule()) from the
    prices in `prices.models`, and writes every model's quality with `quality_columns`."""
    import ray

    started = time.perf_counter()
    router_dir = str(router_path(router))
    load_options = dict(load_options or {})
    prices = prices or Prices()
    choice = model_choice(
        router_dir, load_options, prices, rule, quality_columns, threshold, strong_pct
    )
    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    identity = {
        "job": "route",
        "input": input_path.rstrip("/"),
        "router_sha256": router_identity(router_dir),
        "prompt_column": prompt_column,
        "threshold": threshold,
        "strong_pct": strong_pct,
        # Per-model prices only when given, so that jobs recorded before they existed resume.
        "prices": prices.model_dump(exclude=None if prices.models else {"models"}),
        # Only when given, so that jobs recorded before load options existed still resume.
        **({"load_options": load_options} if load_options else {}),
        **({"choice": choice.model_dump()} if choice else {}),
    }
    recorded = open_job(output, identity, overwrite)
    cutoff: float | None = None
    if choice is not None:
        if recorded is None:
            record_job(output, identity, threshold_used=None)
    elif recorded is not None:
        cutoff = float(recorded["threshold_used"])
    else:
        cutoff = job_threshold(
            router_dir,
            load_options,
            threshold,
            strong_pct,
            source.fs,
            files,
            prompt_column,
            calibration_size,
        )
        record_job(output, identity, threshold_used=cutoff)

    actors, cpus, threads = actor_layout(num_actors, num_cpus, num_gpus)
    batch_size = call_size(batch_size, files, actors)

    def route(units: Any, stager: Stager) -> Any:
        # A row group a call: the actor reads it and routes it `batch_size` rows at a time.
        return units.map_batches(
            RouteBatch,
            fn_constructor_kwargs={
                "router_dir": router_dir,
                "threshold": cutoff,
                "prompt_column": prompt_column,
                "prices": prices.model_dump(),
                "threads": threads,
                "load_options": load_options,
                "stager": stager,
                "choice": choice.model_dump() if choice else None,
                "fs": source.fs,
                "call_rows": batch_size,
            },
            batch_size=1,
            batch_format="numpy",
            # One unit at a time per actor: a unit may be a whole file, and units queued on one
            # actor while another has none would leave the last files waiting behind each other.
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus,
            num_gpus=num_gpus,
        )

    def empty(table: pa.Table) -> pa.Table:
        return route_table(None, table, cutoff, prompt_column, prices, choice)

    # Listing the archive, reading its footers, the job record and the threshold (a share's
    # calibration included); starting Ray is the caller's and is not in it.
    startup_s = time.perf_counter() - started
    stats = RouteStats(prompt_column, prices, choice)
    whole_file_rows = int(WHOLE_FILE_SHARE * sum(f.num_rows for f in files) / actors)
    totals, timing = run_files(
        files, output, route, stats, empty, commits_itself=True, whole_file_rows=whole_file_rows
    )
    if choice is not None:
        summary = summarize_models(totals, choice, output_path) | timing.summary()
    else:
        assert cutoff is not None
        summary = summarize(totals, cutoff, output_path) | timing.summary()
    summary["startup_s"] = round(startup_s, 3)
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
