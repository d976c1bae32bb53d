"""Running a batch command as its own Ray driver and killing it midway, as an operator's
failure would: what the exactly-once tests of every job share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def route_archive_args(local_s3: Any, bucket: str, router_dir: Path) -> list[str]:
    """`routeray batch route` over put_archive's in/ to out/, in small batches so that a job
    over a few hundred rows lasts long enough to be interrupted."""
    return [
        "batch", "route",
        "--input", f"s3://{bucket}/in/",
        "--output", f"s3://{bucket}/out/",
        "--s3-endpoint", local_s3.endpoint,
        "--router", str(router_dir),
        "--threshold", "0.5",
        "--batch-size", "8",
    ]  # fmt: skip


def published(local_s3: Any, bucket: str, prefix: str = "out/day=") -> dict[str, object]:
    """Result objects under `prefix` and when each was written."""
    listing = local_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["LastModified"] for o in listing.get("Contents", [])}


@contextlib.contextmanager
def running_job(
    args: list[str], env: dict[str, str], log: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Run `routeray *args` as its own driver in its own process group, joining the cluster
    that env's RAY_ADDRESS names (as `ray job submit -- routeray ...` would), its output in
    `log` or nowhere; a job still running when the block ends (a failed test) is killed."""
    routeray = Path(sys.executable).with_name("routeray")
    # The child keeps its own copy of the descriptor.
    with open(log or os.devnull, "w") as out:
        job = subprocess.Popen(
            [str(routeray), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def kill_midway(local_ray: Any, local_s3: Any, bucket: str, args: list[str]) -> dict[str, object]:
    """Start `routeray *args` as a job on this Ray cluster, kill its whole process group once
    it has published a first result, and return what was published by then."""
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    with running_job(args, env) as job:
        deadline = time.monotonic() + 240
        while not published(local_s3, bucket):
            assert job.poll() is None, "the job ended before it published anything"
            assert time.monotonic() < deadline, "the job published nothing in time"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    return published(local_s3, bucket)
