"""The route job when things go wrong at once: a share of S3 requests fail (500, 503 SlowDown,
connection resets) and the job is killed at random points and rerun. Every input row must
come out exactly once, and the faults must really have happened."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch_jobs.route import run
from batch_jobs.storage import s3_filesystem
from tests.support.jobs import published, route_archive_args, running_job
from tests.support.local_s3 import put_archive
from tests.support.s3_faults import FaultRule

pytestmark = pytest.mark.slow

FILES, ROWS = 6, 40
# Every request, reads and writes alike, fails this often: the AWS SDK inside pyarrow retries.
FAULTS = FaultRule(fraction=0.1)
KILLS = 5


def routed_ids(local_s3, bucket: str) -> list[int]:
    table = pq.read_table(f"{bucket}/out", filesystem=s3_filesystem(local_s3.endpoint))
    return table.column("id").to_pylist()


def route(local_s3, bucket: str, router: Path) -> dict:
    return run(
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        router=str(router),
        threshold=0.5,
        batch_size=8,
        s3_endpoint=local_s3.endpoint,
    )


def test_killed_at_random_points_under_s3_errors_every_row_once(
    local_ray, local_s3, tiny_router_dir: Path
):
    """Five runs killed at random points, then one that finishes, all while S3 fails a share
    of requests: the last run completes through the errors (the SDK retries them), and the
    runs together publish every row exactly once."""
    bucket = local_s3.bucket()
    put_archive(local_s3, bucket, files=FILES, rows=ROWS)
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    args = route_archive_args(local_s3, bucket, tiny_router_dir)
    chance = random.Random(18)
    progress = []
    with local_s3.faults.rules(FAULTS) as faults:
        for _ in range(KILLS):
            # Anywhere from Ray start-up to the last files: some kills land before anything is
            # published, some between publications.
            kill_after = chance.uniform(3.0, 15.0)
            with running_job(args, env) as job:
                deadline = time.monotonic() + kill_after
                while job.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                if job.poll() is None:
                    os.killpg(job.pid, signal.SIGKILL)
                job.wait()
            progress.append(len(published(local_s3, bucket)))
        summary = route(local_s3, bucket, tiny_router_dir)
    assert set(faults.injected) == {"500", "503", "reset"}, faults.injected
    # Progress never went backwards, and the kills did interrupt work.
    assert progress == sorted(progress) and progress[0] < FILES, progress
    ids = routed_ids(local_s3, bucket)
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert sorted(ids) == list(range(FILES * ROWS)), "a row was lost"
    assert summary["errors"] == 0
    assert len(published(local_s3, bucket)) == FILES
