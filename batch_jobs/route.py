"""Ray Data job: route a Parquet archive with a router and write the decisions back.

Run it as `routeray batch route ...` or under `ray job submit -- python -m batch_jobs.route ...`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from routers.calibration import threshold_for_strong_share
from routers.checkpoint import default_router_dir, load_router, read_config
from routers.costs import Prices, estimate_tokens
from routers.prompts import SCORE_COLUMN, score_table

ROUTE_COLUMN = "route"
COST_COLUMN = "estimated_cost"
SUMMARY_FILE = "_SUMMARY.json"


class RouteBatch:
    """Ray Data actor: loads the router once, then scores, routes and prices each batch."""

    def __init__(
        self, router_dir: str, threshold: float, prompt_column: str, prices: dict[str, Any]
    ) -> None:
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


def summarize(output: str, prompt_column: str, prices: Prices, threshold: float) -> dict[str, Any]:
    """Totals read back from what was written, so the summary describes the results as stored."""
    table = pq.read_table(output, columns=[prompt_column, ROUTE_COLUMN, COST_COLUMN])
    routes = table.column(ROUTE_COLUMN)
    valid = pc.is_valid(routes).to_numpy(zero_copy_only=False)
    tokens = estimate_tokens(table.column(prompt_column).to_pylist())
    strong = int(pc.sum(pc.equal(routes, "strong")).as_py() or 0)
    weak = int(pc.sum(pc.equal(routes, "weak")).as_py() or 0)
    cost = float(pc.sum(table.column(COST_COLUMN)).as_py() or 0.0)
    all_strong = float(prices.strong.cost(tokens[valid]).sum())
    return {
        "rows": table.num_rows,
        "strong": strong,
        "weak": weak,
        "errors": int((~valid).sum()),
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


def run(
    input_path: str,
    output_path: str,
    *,
    router_dir: str | None = None,
    threshold: float | None = None,
    strong_pct: float | None = None,
    prompt_column: str = "prompt",
    batch_size: int = 256,
    num_actors: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    calibration_sample: int = 2000,
    prices: Prices | None = None,
) -> dict[str, Any]:
    import ray
    from ray.data import SaveMode

    router_dir = str(router_dir or default_router_dir())
    prices = prices or Prices()
    ds = ray.data.read_parquet(input_path)
    sample = []
    if strong_pct is not None:
        sample = ds.limit(calibration_sample).to_pandas()[prompt_column].tolist()
    cutoff = resolve_threshold(router_dir, threshold, strong_pct, sample)
    routed = ds.map_batches(
        RouteBatch,
        fn_constructor_kwargs={
            "router_dir": router_dir,
            "threshold": cutoff,
            "prompt_column": prompt_column,
            "prices": prices.model_dump(),
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    # A rerun replaces the previous results instead of appending a second copy of every row.
    routed.write_parquet(output_path, mode=SaveMode.OVERWRITE)
    summary = summarize(output_path, prompt_column, prices, cutoff)
    Path(output_path, SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--router")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--strong-pct", type=float)
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-actors", type=int, default=1)
    parser.add_argument("--num-gpus", type=float, default=0.0)
    args = parser.parse_args(argv)
    summary = run(
        args.input,
        args.output,
        router_dir=args.router,
        threshold=args.threshold,
        strong_pct=args.strong_pct,
        prompt_column=args.prompt_column,
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        num_gpus=args.num_gpus,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
