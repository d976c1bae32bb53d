"""Ray Data job: route a Parquet archive with a router and write the decisions back.

Run it as `routeray batch route ...`, on a cluster as `ray job submit -- routeray batch route ...`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_jobs.commit import (
    SUMMARY_FILE,
    WRITE_CPUS,
    Stager,
    open_job,
    record_job,
    run_files,
)
from batch_jobs.inputs import READ_CPUS, InputFile, calibration_sample, inspect_inputs
from batch_jobs.storage import locate
from routers import cap_threads
from routers.checkpoint import CONFIG_FILE, load_router
from routers.prices import Prices, estimate_tokens
from routers.prompts import SCORE_COLUMN, score_table
from routers.shipped import router_path
from routers.thresholds import resolve_threshold

ROUTE_COLUMN = "route"
# The embedder sorts each call's prompts by length before batching them, so a larger call pads
# less (docs/BENCHMARKS.md, batch route).
DEFAULT_BATCH_SIZE = 4096
COST_COLUMN = "estimated_cost"
# Prompts a strong share is calibrated on.
CALIBRATION_SIZE = 2000


STAGED_COLUMN = "staged_rows"


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
    a block that Ray runs again restages the same piece under the same name."""

    def __init__(
        self,
        router_dir: str,
        threshold: float,
        prompt_column: str,
        prices: dict[str, Any],
        threads: int | None = None,
        load_options: dict[str, Any] | None = None,
        stager: Stager | None = None,
    ) -> None:
        if threads:
            cap_threads(threads)
        self.router = load_router(router_dir, **(load_options or {}))
        self.threshold = threshold
        self.prompt_column = prompt_column
        self.prices = Prices.model_validate(prices)
        self.stager = stager

    def __call__(self, batch: pa.Table) -> pa.Table:
        routed = route_table(self.router, batch, self.threshold, self.prompt_column, self.prices)
        if self.stager is None:
            return routed
        return pa.table({STAGED_COLUMN: pa.array([self.stager.stage(routed)], pa.int64())})


def route_table(
    router: Any, table: pa.Table, threshold: float, prompt_column: str, prices: Prices
) -> pa.Table:
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


class RouteStats:
    """Totals of one routed output file (stored with it; the job summary adds them up)."""

    def __init__(self, prompt_column: str, prices: Prices) -> None:
        self.prompt_column = prompt_column
        self.prices = prices

    def __call__(self, table: pa.Table) -> dict[str, float]:
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
) -> dict[str, Any]:
    """Route every file under `input_path` into `output_path`; resumable (see batch_jobs.commit)."""
    import ray

    started = time.perf_counter()
    router_dir = str(router_path(router))
    load_options = dict(load_options or {})
    prices = prices or Prices()
    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    identity = {
        "job": "route",
        "input": input_path.rstrip("/"),
        "router_sha256": router_identity(router_dir),
        "prompt_column": prompt_column,
        "threshold": threshold,
        "strong_pct": strong_pct,
        "prices": prices.model_dump(),
        # Only when given, so that jobs recorded before load options existed still resume.
        **({"load_options": load_options} if load_options else {}),
    }
    recorded = open_job(output, identity, overwrite)
    if recorded is not None:
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

    def route(dataset: Any, stager: Stager) -> Any:
        return dataset.map_batches(
            RouteBatch,
            fn_constructor_kwargs={
                "router_dir": router_dir,
                "threshold": cutoff,
                "prompt_column": prompt_column,
                "prices": prices.model_dump(),
                "threads": threads,
                "load_options": load_options,
                "stager": stager,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=num_gpus,
        )

    def empty(table: pa.Table) -> pa.Table:
        return route_table(None, table, cutoff, prompt_column, prices)

    # Listing the archive, reading its footers, the job record and the threshold (a share's
    # calibration included); starting Ray is the caller's and is not in it.
    startup_s = time.perf_counter() - started
    totals, timing = run_files(
        files, output, route, RouteStats(prompt_column, prices), empty, commits_itself=True
    )
    summary = summarize(totals, cutoff, output_path) | timing.summary()
    summary["startup_s"] = round(startup_s, 3)
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
