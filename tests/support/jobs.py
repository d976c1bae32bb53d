"""Running a batch command as its own Ray driver and killing it midway, as an operator's
failure would: what the exactly-once tests of every job share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def published(local_s3: Any, bucket: str, prefix: str = "out/day=") -> dict[str, object]:
    """Result objects under `prefix` and when each was written."""
    listing = local_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["LastModified"] for o in listing.get("Contents", [])}


def kill_midway(local_ray: Any, local_s3: Any, bucket: str, args: list[str]) -> dict[str, object]:
    """Start `routeray *args` as a job on this Ray cluster (as `ray job submit -- routeray ...`
    would), kill its whole process group once it has published a first result, and return
    what was published by then."""
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    routeray = Path(sys.executable).with_name("routeray")
    job = subprocess.Popen(
        [str(routeray), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not published(local_s3, bucket):
        assert job.poll() is None, "the job ended before it published anything"
        assert time.monotonic() < deadline, "the job published nothing in time"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    return published(local_s3, bucket)
