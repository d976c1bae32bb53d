"""The route job end to end, S3 to S3, against the two baselines that bound it.

1. identity: Ray Data reads the same Parquet from S3 and writes it back through a do-nothing
   step: the pipeline's ceiling on this machine.
2. bare: the same prompts through `router.score` in this one process (torch on every core),
   already in memory: what a user's own loop over the archive could at best do.
3. job: `batch_jobs.route.run` from S3 to S3 (reading, scoring on the actor pool, per-file
   commits, summary).

Prints rows/s for each and the efficiency ratio job / bare (target: at least 0.85). S3 is moto's
server on loopback, started here.

    python -m bench.batch_route [--rows 100000] [--files 20] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import io
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from batch_jobs.route import DEFAULT_BATCH_SIZE, actor_layout, run
from batch_jobs.storage import s3_filesystem
from routeray.demo.prompts import generate_prompts
from routers import default_router_dir, load_router
from tests.support.local_s3 import LocalS3


def put_archive(s3: LocalS3, bucket: str, rows: int, files: int) -> list[str]:
    prompts = generate_prompts(rows, seed=0)
    per_file = -(-rows // files)
    client = s3.client()
    for f in range(files):
        ids = range(f * per_file, min(rows, (f + 1) * per_file))
        sink = io.BytesIO()
        table = pa.table({"id": list(ids), "prompt": [prompts[i] for i in ids]})
        pq.write_table(table, sink, row_group_size=1000)
        client.put_object(Bucket=bucket, Key=f"in/part-{f:04d}.parquet", Body=sink.getvalue())
    return prompts


def timed(label: str, rows: int, fn) -> float:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    print(
        f"{label:<10} {rows:>8} rows in {seconds:8.1f} s = {rows / seconds:8.1f} rows/s", flush=True
    )
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-actors", type=int)
    parser.add_argument("--num-cpus", type=float)
    args = parser.parse_args()

    with LocalS3() as s3:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        bucket = s3.bucket("bench")
        prompts = put_archive(s3, bucket, args.rows, args.files)
        fs = s3_filesystem(s3.endpoint)
        chars = sorted(len(p) for p in prompts)
        print(
            f"{args.rows} generated prompts in {args.files} files on S3 (moto, loopback); "
            f"length in characters p10/p50/p90/max: {chars[len(chars) // 10]}/"
            f"{chars[len(chars) // 2]}/{chars[9 * len(chars) // 10]}/{chars[-1]}; "
            f"{os.cpu_count()} CPUs; router actors, CPUs each, threads: "
            f"{actor_layout(args.num_actors, args.num_cpus, 0.0)}",
            flush=True,
        )

        def identity() -> None:
            ds = ray.data.read_parquet(f"{bucket}/in", filesystem=fs)
            ds.map_batches(lambda batch: batch, batch_format="pyarrow").write_parquet(
                f"{bucket}/identity", filesystem=fs
            )

        ceiling = timed("identity", args.rows, identity)

        def job() -> None:
            summary = run(
                f"s3://{bucket}/in/",
                f"s3://{bucket}/out/",
                batch_size=args.batch_size,
                num_actors=args.num_actors,
                num_cpus=args.num_cpus,
                s3_endpoint=s3.endpoint,
            )
            assert summary["rows"] == args.rows, summary

        job_rate = timed("job", args.rows, job)
        ray.shutdown()  # the bare baseline gets the whole machine, as a user's script would

        router = load_router(default_router_dir())
        bare = timed("bare score", args.rows, lambda: router.score(prompts))
        print(
            f"efficiency job / bare score: {job_rate / bare:.2f} (target >= 0.85); "
            f"job / identity ceiling: {job_rate / ceiling:.3f}"
        )


if __name__ == "__main__":
    main()
