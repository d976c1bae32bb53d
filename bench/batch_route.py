"""The route job end to end, S3 to S3, against the two baselines that bound it, for one or more
routers on the same generated archive.

1. identity: Ray Data reads the same Parquet from S3 and writes it back through a do-nothing
   step: the pipeline's ceiling on this machine (once, on the largest archive).
2. job: `batch_jobs.route.run` from S3 to S3 (reading, scoring on the actor pool, per-file
   commits, summary), once per router, each into its own output.
3. bare: the same prompts through `router.score` in a fresh process of its own after Ray is
   shut down (torch on every core), already in memory: what a user's own loop over the
   archive could at best do (`bench.score_speed`, one process per router). Its time runs from
   loading the router to the last score (the model load included, as the job's actors load
   theirs), and the process's peak RSS is printed: the memory one router takes to load and
   score that many prompts (the prompts in memory included).

Per router it prints rows/s of the job and bare, the efficiency job / bare (target: at least
0.9, issue 29), the job's own processing rate from its `_SUMMARY.json` (`rows_per_s`: Ray
start-up, listing and the summary left out), its start-up apart (`startup_s`: listing, footers,
threshold; Ray is started once by the bench, and how long that took is printed), and each
router's job rows/s against the first router's ("fast / default: 23.4x"). S3 is moto's server
on loopback, started here.

Memory (issue 29: bounded by the batch, not the archive): with `--memory`, each job runs as a
user runs it, `routeray batch route` in a driver process of its own that joins the bench's Ray
(this process also serves the S3 API, so its memory grows with every object stored), and the
memory of that driver and of every router actor process is sampled every 0.2 s: peak RSS, and
peak private memory (USS: RSS counts the pages of Ray's shared object store that a process has
touched, which grows with the blocks that passed through it). The job's wall clock then
includes the CLI's imports and joining Ray; `_SUMMARY.json`'s rate does not. Run it at two
sizes to compare: `--rows 1000000 --memory`, then `--rows 5000000 --memory`.

    python -m bench.batch_route [--router default] [--router fast | DIR ...] [--rows 20000]
        [--rows-per-router default=5000,fast=100000] [--files 20] [--batch-size 4096]
        [--num-gpus 1]

`--router` takes a shipped name (`default`, `fast`, ...) or a router directory, and repeats;
the first is the one the others are compared with. `--rows` is the archive size for every
router; `--rows-per-router NAME=ROWS,...` (NAME as given to `--router`) sets it for some: a
slow router can take fewer rows, since the default router routes about 110 rows/s on 2 CPUs.
Every router reads the first ROWS prompts of one generated list (seed 0), in `--files` files;
rates measured on different row counts carry different shares of start-up, so compare like
with like where the time allows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from batch_jobs.route import DEFAULT_BATCH_SIZE, actor_layout, run
from batch_jobs.storage import s3_filesystem
from bench.timing import repeated
from routeray.demo.prompts import generate_prompts
from routers import read_config, router_path
from tests.support.local_s3 import LocalS3


def parse_rows_per_router(text: str | None) -> dict[str, int]:
    """`default=5000,fast=100000` as {"default": 5000, "fast": 100000}."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, rows = item.rpartition("=")
        if not sep or not name or not rows.isdigit() or int(rows) < 1:
            raise SystemExit(f"--rows-per-router: expected NAME=ROWS, got {item!r}")
        counts[name] = int(rows)
    return counts


DISTINCT_PROMPTS = 50_000


def put_archive(
    s3: LocalS3, bucket: str, prefix: str, prompts: list[str], files: int, row_group_rows: int
) -> None:
    per_file = -(-len(prompts) // files)
    client = s3.client()
    for f in range(files):
        ids = range(f * per_file, min(len(prompts), (f + 1) * per_file))
        if not ids:
            break
        sink = io.BytesIO()
        table = pa.table({"id": list(ids), "prompt": [prompts[i] for i in ids]})
        pq.write_table(table, sink, row_group_size=row_group_rows)
        client.put_object(Bucket=bucket, Key=f"{prefix}/part-{f:04d}.parquet", Body=sink.getvalue())


class PeakMemory:
    """Samples, in a thread, the memory of one driver process and of the router actor
    processes (Ray titles them after the actor class) until stopped; keeps each one's peak RSS
    and peak USS in MiB."""

    def __init__(self, driver: int, actor_title: str = "RouteBatch", every_s: float = 0.2) -> None:
        self.driver = driver
        self.actor_title = actor_title
        self.every_s = every_s
        self.peaks: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # This process started Ray: its actors are among its descendants (and another Ray's,
        # on the same host, are not).
        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            for proc in me.children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                    if proc.pid != self.driver and self.actor_title not in title:
                        continue
                    memory = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, uss = self.peaks.get(proc.pid, (0.0, 0.0))
                self.peaks[proc.pid] = (max(rss, memory.rss / 2**20), max(uss, memory.uss / 2**20))

    def describe(self) -> str:
        def text(pids: list[int]) -> str:
            return ", ".join(f"{self.peaks[p][0]:.0f}/{self.peaks[p][1]:.0f}" for p in pids)

        actors = sorted(p for p in self.peaks if p != self.driver)
        return (
            f"peak RSS/USS MiB: driver {text([self.driver]) or 'not seen'}; router actors "
            f"{text(actors) or 'none seen'}"
        )


def cli_job(command: list[str], ray_address: str) -> PeakMemory:
    """Run `routeray batch route ...` in a driver process of its own joining `ray_address`;
    the peaks of its driver's and its actors' memory."""
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    routeray = Path(sys.executable).with_name("routeray")
    with (
        subprocess.Popen(
            [str(routeray), *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as job,
        PeakMemory(job.pid) as memory,
    ):
        output, _ = job.communicate()
    if job.returncode:
        raise RuntimeError(f"routeray {' '.join(command)} failed:\n{output.decode()[-3000:]}")
    return memory


def timed(label: str, rows: int, fn: Callable[[], Any], width: int = 24) -> tuple[float, Any]:
    """rows/s of fn() (wall clock) and what it returned."""
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    print(
        f"{label:<{width}} {rows:>8} rows in {seconds:8.1f} s = {rows / seconds:8.1f} rows/s",
        flush=True,
    )
    return rows / seconds, out


def bare_score(router: str, prompts_file: Path, rows: int) -> dict[str, Any]:
    """`bench.score_speed` on the archive's prompts, in a process of its own."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable, "-m", "bench.score_speed",
            "--router", router,
            "--prompts", str(prompts_file),
            "--rows", str(rows),
            "--loop-rows", "0",
            "--no-mf",
            "--json", out.name,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"bare score of {router} failed:\n{done.stdout}{done.stderr}")
        (result,) = json.loads(Path(out.name).read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", action="append", help="shipped name or directory; repeat")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per router")
    parser.add_argument("--rows-per-router", help="NAME=ROWS,... overriding --rows")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument(
        "--row-group-rows",
        type=int,
        default=1000,
        help="rows per Parquet row group: one read task each, so small groups cost S3 round trips",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-actors", type=int)
    parser.add_argument("--num-cpus", type=float)
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per router actor")
    parser.add_argument(
        "--memory", action="store_true", help="run each job as its own driver; sample memory"
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare baseline")
    args = parser.parse_args()

    routers = list(dict.fromkeys(args.router or ["default"]))
    for name in routers:
        read_config(router_path(name))  # a typo stops the run before minutes of work
    per_router = {name: args.rows for name in routers} | parse_rows_per_router(args.rows_per_router)
    unknown = sorted(per_router.keys() - set(routers))
    if unknown:
        raise SystemExit(f"--rows-per-router names no --router: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="batch-route-bench-") as work:
        measure(args, routers, per_router, Path(work))


def measure(
    args: argparse.Namespace, routers: list[str], per_router: dict[str, int], work: Path
) -> None:
    most = max(per_router.values())
    sizes = sorted(set(per_router.values()))
    width = max(24, len("bare score ") + max(map(len, routers)))
    with LocalS3() as s3:
        ray_started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        ray_start_s = time.perf_counter() - ray_started
        bucket = s3.bucket("bench")
        # Past DISTINCT_PROMPTS the list repeats (see `repeated`).
        prompts = repeated(generate_prompts(min(most, DISTINCT_PROMPTS), seed=0), most)
        for rows in sizes:  # one archive per size: the first `rows` prompts of the same list
            put_archive(s3, bucket, f"in-{rows}", prompts[:rows], args.files, args.row_group_rows)
        pq.write_table(pa.table({"prompt": prompts}), work / "prompts.parquet")
        fs = s3_filesystem(s3.endpoint)
        chars = sorted(len(p) for p in prompts)
        print(
            f"{most} generated prompts (archives of {', '.join(map(str, sizes))} rows, each in "
            f"{args.files} files) on S3 (moto, loopback); length in characters p10/p50/p90/max "
            f"of all: {chars[len(chars) // 10]}/{chars[len(chars) // 2]}/"
            f"{chars[9 * len(chars) // 10]}/{chars[-1]}; {os.cpu_count()} CPUs; router actors, "
            f"CPUs each, threads: {actor_layout(args.num_actors, args.num_cpus, args.num_gpus)}; "
            f"Ray started in {ray_start_s:.1f} s",
            flush=True,
        )

        def identity() -> None:
            ds = ray.data.read_parquet(f"{bucket}/in-{most}", filesystem=fs)
            ds.map_batches(lambda batch: batch, batch_format="pyarrow").write_parquet(
                f"{bucket}/identity", filesystem=fs
            )

        ceiling, _ = timed("identity", most, identity, width)

        jobs: dict[str, tuple[float, dict[str, Any]]] = {}
        memory: dict[str, PeakMemory] = {}
        for i, name in enumerate(routers):
            rows = per_router[name]

            def job(name: str = name, rows: int = rows, i: int = i) -> dict[str, Any]:
                source, sink = f"s3://{bucket}/in-{rows}/", f"s3://{bucket}/out-{i}/"
                if args.memory:
                    command = [
                        "batch", "route", "--input", source, "--output", sink,
                        "--router", name, "--batch-size", str(args.batch_size),
                        "--num-gpus", str(args.num_gpus), "--s3-endpoint", s3.endpoint,
                    ]  # fmt: skip
                    if args.num_actors:
                        command += ["--num-actors", str(args.num_actors)]
                    if args.num_cpus:
                        command += ["--num-cpus", str(args.num_cpus)]
                    address = ray.get_runtime_context().gcs_address
                    memory[name] = cli_job(command, address)
                    with fs.open_input_stream(f"{bucket}/out-{i}/_SUMMARY.json") as stream:
                        summary = json.loads(stream.read())
                else:
                    summary = run(
                        source,
                        sink,
                        router=name,
                        batch_size=args.batch_size,
                        num_actors=args.num_actors,
                        num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus,
                        s3_endpoint=s3.endpoint,
                    )
                assert summary["rows"] == summary["rows_processed"] == rows, summary
                return summary

            jobs[name] = timed(f"job {name}", rows, job, width)
        ray.shutdown()  # the bare baseline gets the whole machine, as a user's script would

        bare: dict[str, dict[str, Any]] = {}
        for name in [] if args.no_bare else routers:
            rows = per_router[name]
            result = bare_score(name, work / "prompts.parquet", rows)
            seconds = result["load_s"] + result["score_s"]
            print(
                f"{'bare score ' + name:<{width}} {rows:>8} rows in {seconds:8.1f} s = "
                f"{rows / seconds:8.1f} rows/s (load {result['load_s']:.1f} s; warm "
                f"{result['prompts_per_s']:.1f} rows/s)",
                flush=True,
            )
            bare[name] = result | {"rows_per_s": rows / seconds}

    first = routers[0]
    print(f"\nper router (job rows/s is wall-clock around run(); identity ceiling {ceiling:.1f})")
    for name in routers:
        rate, summary = jobs[name]
        line = (
            f"{name}: {per_router[name]} rows; job {rate:.1f} rows/s (summary rows_per_s "
            f"{summary['rows_per_s']:.1f} over {summary['elapsed_s']:.1f} s; start-up "
            f"{summary['startup_s']:.1f} s apart), job / identity {rate / ceiling:.3f}"
        )
        if name in bare:
            bare_rate = bare[name]["rows_per_s"]
            line += (
                f"; bare {bare_rate:.1f} rows/s, efficiency job / bare {rate / bare_rate:.2f} "
                f"(target >= 0.9), summary rate / bare {summary['rows_per_s'] / bare_rate:.2f}; "
                f"peak RSS of a process that loads the router and scores {per_router[name]} "
                f"prompts: {bare[name]['peak_rss_mib']:.0f} MiB"
            )
        if name in memory:
            line += f"; the job's {memory[name].describe()}"
        print(line)
    for name in routers[1:]:
        print(f"{name} / {first} (job rows/s): {jobs[name][0] / jobs[first][0]:.1f}x")


if __name__ == "__main__":
    main()
