"""Ray Data job: route a Parquet archive with a router and write the decisions back.

Run it as `routeray batch route ...` or under `ray job submit -- python -m batch_jobs.route ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_jobs.commit import SUMMARY_FILE, WRITE_CPUS, open_job, record_job, run_files
from batch_jobs.inputs import READ_CPUS, InputFile, inspect_inputs, sample_prompts
from batch_jobs.storage import locate
from routers.checkpoint import CONFIG_FILE, default_router_dir, load_router, read_config
from routers.evaluation.calibration import threshold_for_strong_share
from routers.prices import Prices, estimate_tokens
from routers.prompts import SCORE_COLUMN, score_table

ROUTE_COLUMN = "route"
# The embedder sorts each call's prompts by length before batching them: calls of 1,024 mixed
# prompts padded to 13 % more tokens than one global sort, calls of 4,096 to 2 %.
DEFAULT_BATCH_SIZE = 4096
COST_COLUMN = "estimated_cost"


class RouteBatch:
    """Ray Data actor: loads the router once, then scores, routes and prices each batch."""

    def __init__(
        self,
        router_dir: str,
        threshold: float,
        prompt_column: str,
        prices: dict[str, Any],
        threads: int | None = None,
    ) -> None:
        if threads:
            import torch

            # A fractional-CPU actor must not start one torch thread per core of the node.
            torch.set_num_threads(threads)
        self.router = load_router(router_dir)
        self.threshold = threshold
        self.prompt_column = prompt_column
        self.prices = Prices.model_validate(prices)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return route_table(self.router, batch, self.threshold, self.prompt_column, self.prices)


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


def resolve_threshold(
    router_dir: str, threshold: float | None, strong_pct: float | None, sample: list[str]
) -> float:
    if threshold is not None and strong_pct is not None:
        raise ValueError("give either a threshold or a strong share, not both")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return threshold
    if strong_pct is not None:
        router = load_router(router_dir)
        sample = [p for p in sample if isinstance(p, str) and p.strip()]
        return threshold_for_strong_share(router.score(sample), strong_pct)
    calibrated = read_config(router_dir).get("metadata", {}).get("default_threshold")
    if calibrated is None:
        raise ValueError(
            f"{router_dir} records no default threshold: pass --threshold or --strong-pct"
        )
    return float(calibrated)


def actor_layout(
    num_actors: int | None,
    num_cpus: float | None,
    num_gpus: float,
    reserved_cpus: float = READ_CPUS + WRITE_CPUS,
) -> tuple[int, float, int | None]:
    """Router actors, CPUs per actor and torch threads per actor; what is not given fills the
    cluster: one actor per GPU share, or one single-threaded actor per CPU (on CPUs, separate
    processes scale better than threads in one), leaving `reserved_cpus` for the read and
    write tasks."""
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


def _router_identity(router_dir: str) -> str:
    return hashlib.sha256(Path(router_dir, CONFIG_FILE).read_bytes()).hexdigest()


def run(
    input_path: str,
    output_path: str,
    *,
    router_dir: str | None = None,
    threshold: float | None = None,
    strong_pct: float | None = None,
    prompt_column: str = "prompt",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float = 0.0,
    calibration_sample: int = 2000,
    prices: Prices | None = None,
    s3_endpoint: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Route every file under `input_path` into `output_path`; resumable (see batch_jobs.commit)."""
    import ray

    router_dir = str(router_dir or default_router_dir())
    prices = prices or Prices()
    source, output = locate(input_path, s3_endpoint), locate(output_path, s3_endpoint)
    files = inspect_inputs(source, prompt_column)
    identity = {
        "job": "route",
        "input": input_path.rstrip("/"),
        "router_sha256": _router_identity(router_dir),
        "prompt_column": prompt_column,
        "threshold": threshold,
        "strong_pct": strong_pct,
        "prices": prices.model_dump(),
    }
    recorded = open_job(output, identity, overwrite)
    if recorded is not None:
        cutoff = float(recorded["threshold_used"])
    else:
        sample = []
        if strong_pct is not None:
            sample = sample_prompts(source.fs, files, prompt_column, calibration_sample)
        cutoff = resolve_threshold(router_dir, threshold, strong_pct, sample)
        record_job(output, identity, threshold_used=cutoff)

    actors, cpus, threads = actor_layout(num_actors, num_cpus, num_gpus)
    batch_size = call_size(batch_size, files, actors)

    def route(dataset: Any) -> Any:
        return dataset.map_batches(
            RouteBatch,
            fn_constructor_kwargs={
                "router_dir": router_dir,
                "threshold": cutoff,
                "prompt_column": prompt_column,
                "prices": prices.model_dump(),
                "threads": threads,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
            num_gpus=num_gpus,
        )

    def empty(table: pa.Table) -> pa.Table:
        return route_table(None, table, cutoff, prompt_column, prices)

    totals = run_files(files, output, route, RouteStats(prompt_column, prices), empty)
    summary = summarize(totals, cutoff, output_path)
    output.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True, help="Parquet file or directory, local or s3://")
    parser.add_argument("--output", required=True, help="Output directory, local or s3://")
    parser.add_argument("--router", help="Router directory (default: the shipped one)")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--strong-pct", type=float)
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-actors", type=int, help="Router actors (default: fill the cluster)")
    parser.add_argument("--num-cpus", type=float, help="CPUs per router actor")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per router actor")
    parser.add_argument("--prices", help="prices.yaml (USD per million tokens)")
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS or $AWS_ENDPOINT_URL)")
    parser.add_argument("--overwrite", action="store_true", help="Discard earlier results")
    args = parser.parse_args(argv)
    import ray

    # Under `ray job submit` (or with RAY_ADDRESS) this joins that cluster, else starts one here.
    ray.init(ignore_reinit_error=True)
    summary = run(
        args.input,
        args.output,
        router_dir=args.router,
        threshold=args.threshold,
        strong_pct=args.strong_pct,
        prompt_column=args.prompt_column,
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        prices=Prices.from_yaml(args.prices) if args.prices else None,
        s3_endpoint=args.s3_endpoint,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
