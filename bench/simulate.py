"""The cost simulation's speed.

1. sweep: 1,000,000 traffic rows with precomputed scores, 100 thresholds, through
   `simulate_frame` (costs, quality, sweep, Pareto front, recommendation, per-day breakdown);
   target under 10 s. Baseline in the same run: one pass over the rows per threshold.
2. end to end: `batch_jobs.simulate.run` on generated traffic (scoring on Ray Data with the
   shipped router, token counting with the MiniLM tokenizer, then the sweep and the report).

    python -m bench.simulate [--rows 1000000] [--e2e-rows 10000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch_jobs.simulate import simulate_frame
from routeray.demo.prompts import generate_prompts
from routers.evaluation.simulation import quality_labels, sweep, thresholds_for
from routers.prices import Prices


def traffic(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "score:default": rng.uniform(size=rows),
            "error": pd.Series([None] * rows, dtype=object),
            "input_tokens": rng.integers(10, 2000, rows),
            "output_tokens": rng.integers(10, 800, rows),
            "winner": rng.choice(["strong", "weak", "tie"], rows),
            "timestamp": pd.Timestamp("2026-10-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 30 * 86400, rows), unit="s"),
        }
    )


def per_threshold_loop(scores, grid, cs, cw, qs, qw) -> None:
    """The baseline: one vectorised pass over every row for each threshold."""
    for t in grid:
        strong = scores >= t
        np.where(strong, cs, cw).sum()
        np.where(strong, qs, qw).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--thresholds", type=int, default=100)
    parser.add_argument("--e2e-rows", type=int, default=10_000)
    args = parser.parse_args()
    prices = Prices()

    frame = traffic(args.rows)
    started = time.perf_counter()
    result = simulate_frame(frame, ["default"], prices, thresholds=args.thresholds, budget=1e12)
    sweep_s = time.perf_counter() - started
    assert len(result["curve"]) == args.thresholds and len(result["summary"]["daily"]) == 30
    scores = frame["score:default"].to_numpy()
    tokens = frame["input_tokens"].to_numpy(float), frame["output_tokens"].to_numpy(float)
    cs, cw = prices.strong.cost(*tokens), prices.weak.cost(*tokens)
    qs, qw, estimate = quality_labels(scores, winner=frame["winner"].to_numpy())
    grid = thresholds_for(scores, args.thresholds)
    started = time.perf_counter()
    sweep(scores, grid, cs, cw, qs, qw, estimate)
    core_s = time.perf_counter() - started
    started = time.perf_counter()
    per_threshold_loop(scores, grid, cs, cw, qs, qw)
    loop_s = time.perf_counter() - started
    print(
        f"simulation: {args.rows} rows x {args.thresholds} thresholds in {sweep_s:.2f} s "
        f"(target < 10 s; costs, quality, sweep, Pareto front, recommendation, per-day)\n"
        f"sweep alone {core_s:.3f} s; one pass over the rows per threshold {loop_s:.3f} s "
        f"= {loop_s / core_s:.1f}x the sweep",
        flush=True,
    )

    import ray

    from batch_jobs.simulate import run

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "traffic.parquet")
        prompts = generate_prompts(args.e2e_rows, seed=1)
        stamps = pd.date_range("2026-10-01", periods=args.e2e_rows, freq="1min", tz="UTC")
        pq.write_table(
            pa.table({"prompt": prompts, "timestamp": stamps}), path, row_group_size=1000
        )
        started = time.perf_counter()
        summary = run(str(path), str(Path(scratch, "sim")), prices=prices, quality_target=0.95)
        e2e_s = time.perf_counter() - started
    assert summary["rows"] == args.e2e_rows
    print(
        f"end to end: {args.e2e_rows} prompts scored, counted and swept in {e2e_s:.1f} s "
        f"= {args.e2e_rows / e2e_s:.1f} rows/s ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
