"""The route job when things go wrong at once: a share of S3 requests fail (500, 503 SlowDown,
connection resets) and the job is killed, as it starts and between files, and run again. Every
input row must come out exactly once, and the faults must really have happened."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batch_jobs.route import run
from batch_jobs.storage import s3_filesystem
from tests.support.jobs import (
    driver_env,
    driver_joined,
    kill_job,
    published,
    route_archive_args,
    running_job,
    settle_s3,
    wait_until,
)
from tests.support.local_s3 import put_archive
from tests.support.s3_faults import FaultRule

pytestmark = pytest.mark.slow

FILES, ROWS = 2, 30
# Every request of the jobs, reads and writes alike, fails this often: the AWS SDK inside
# pyarrow retries. The fault layer draws the same faults for a block's requests in the same
# order, and the runs below send far more requests than the draws take to give each kind.
FRACTION = 0.2


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


def test_killed_as_it_starts_and_between_files_under_s3_errors_every_row_once(
    local_ray, local_s3, tiny_router_dir: Path
):
    """A run killed as it starts, then runs killed each once it has published one file more
    than all runs before it, then one that finishes, all while S3 fails a share of requests:
    the last run completes through the errors (the SDK retries them), and the runs together
    publish every row exactly once."""
    bucket = local_s3.bucket()
    put_archive(local_s3, bucket, files=FILES, rows=ROWS)
    env = driver_env(local_ray)
    args = route_archive_args(local_s3, bucket, tiny_router_dir)
    # The jobs' drivers and workers sign with this process's key; the test watches with
    # another, so that its own polling neither meets the faults nor uses up their draws.
    faults_rule = FaultRule(fraction=FRACTION, access_key=os.environ["AWS_ACCESS_KEY_ID"])
    observer = local_s3.client(access_key="test-observer")

    def published_files() -> int:
        listing = observer.list_objects_v2(Bucket=bucket, Prefix="out/day=")
        return len(listing.get("Contents", []))

    def killed_run(held: str, when: Callable[[subprocess.Popen], bool], what: str) -> int:
        """Run the job with the uploads under `held` held, kill it once `when` it holds, and
        return how many files are published once nothing of it runs."""
        with local_s3.faults.hold(held), running_job(args, env) as job:

            def due() -> bool:
                assert job.poll() is None, f"the job ended before {what}"
                return when(job)

            wait_until(due, what)
            kill_job(job, local_ray)
        settle_s3(local_s3)
        return published_files()

    def one_more(before: int) -> Callable[[subprocess.Popen], bool]:
        return lambda job: published_files() > before

    with local_s3.faults.rules(faults_rule) as faults:
        # As it starts: once its driver has joined Ray. Every upload is held, so that nothing
        # can be published before the kill, however fast the job.
        progress = [killed_run("out/day=", driver_joined, "its driver joined Ray")]
        # The last file is held, so that no run finishes: each dies with work left.
        last = f"out/day={FILES - 1:02d}/"
        while progress[-1] < FILES - 1:
            more = f"it published more than {progress[-1]} files"
            progress.append(killed_run(last, one_more(progress[-1]), more))
        summary = route(local_s3, bucket, tiny_router_dir)
    assert set(faults.injected) == {"500", "503", "reset"}, (faults.injected, faults.matched)
    # The kills landed where they were meant to: the first before any result, each later one
    # after one more file, and none after the last.
    assert progress[0] == 0 and len(progress) >= 2, progress
    assert progress == sorted(set(progress)), progress
    assert progress[-1] == FILES - 1, progress
    ids = routed_ids(local_s3, bucket)
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert sorted(ids) == list(range(FILES * ROWS)), "a row was lost"
    assert summary["errors"] == 0 and summary["rows"] == FILES * ROWS
    assert summary["files_processed"] == FILES - progress[-1]
    assert len(published(local_s3, bucket)) == FILES
