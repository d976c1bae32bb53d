"""The label job end to end on this machine, with the strong-API stand-in as strong model and
judge and a second stand-in as the weak model (both in this process, on loopback), so it
measures the job's own overhead: sampling, the answering and judging stages, commits.

Prints the estimate, then rows, seconds and rows/s of `batch_jobs.label.run` on a local Ray.

    python -m bench.batch_label [--rows 20000] [--files 20] [--sample 2000] [--mode pairwise]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from batch_jobs.label import run
from batch_jobs.label_config import LabelConfig
from routeray.demo.prompts import generate_prompts
from routeray.demo.strong_standin import StrongStandin

# Limits far above what the stand-ins serve, so the job's own overhead is what shows.
OPEN_LIMITS = {"requests_per_s": 10_000, "concurrency": 64, "batch_size": 64}


def write_archive(root: Path, rows: int, files: int) -> None:
    prompts = generate_prompts(rows, seed=0)
    per_file = -(-rows // files)
    for f in range(files):
        ids = range(f * per_file, min(rows, (f + 1) * per_file))
        table = pa.table({"id": list(ids), "prompt": [prompts[i] for i in ids]})
        pq.write_table(table, root / f"part-{f:04d}.parquet", row_group_size=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--mode", choices=("pairwise", "single"), default="pairwise")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-label-") as scratch,
        StrongStandin(model_name="strong") as strong,
        StrongStandin(model_name="weak", answer_prefix="weak answer: ") as weak,
    ):
        source, output = Path(scratch, "in"), Path(scratch, "out")
        source.mkdir()
        write_archive(source, args.rows, args.files)
        # A judge whose replies vary, so the labels are not all one value.
        strong.reply("A is better.\n[[A]]", when=r"<answer_a>\nstrong answer: [a-m]")
        strong.reply("B is better.\n[[B]]", when=r"<answer_a>\n")
        strong.reply("Rating: [[8]]", when=r"<answer>\nstrong")
        strong.reply("Rating: [[5]]", when=r"<answer>\n")
        config = LabelConfig.model_validate(
            {
                "strong": {"model": "strong", "base_url": strong.base_url},
                "weak": {"kind": "openai", "model": "weak", "base_url": weak.base_url},
                "judge_mode": args.mode,
                "strong_stage": OPEN_LIMITS,
                "judge_stage": OPEN_LIMITS,
                "weak_stage": {"batch_size": 64},
            }
        )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        print(
            f"{args.rows} generated prompts in {args.files} local files; sample {args.sample}; "
            f"{args.mode} judge; {os.cpu_count()} CPUs",
            flush=True,
        )
        started = time.perf_counter()
        summary = run(str(source), str(output), config, sample=args.sample, seed=0)
        seconds = time.perf_counter() - started
        calls = strong.requests + weak.requests
        print(
            f"labelled {summary['labeled']} of {summary['rows']} rows in {seconds:.1f} s = "
            f"{summary['rows'] / seconds:.1f} rows/s ({calls} model calls, "
            f"{calls / seconds:.1f} calls/s); winners {summary['winners']}; errors "
            f"{summary['errors']}\ncost spent ${summary['cost_usd']['total']:.4f} (answers "
            f"${summary['cost_usd']['answers']:.4f}, judge ${summary['cost_usd']['judge']:.4f})"
            f", estimated ${summary['estimated_cost_usd']['total_usd']:.4f}",
            flush=True,
        )
        ray.shutdown()


if __name__ == "__main__":
    main()
