"""Running a batch command as its own Ray driver and killing it midway, as an operator's
failure would: what the exactly-once tests of every job share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

# A raylet's children that are Ray's own agents, not workers that run a job's tasks.
_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


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
    args: list[str],
    env: dict[str, str],
    log: Path | None = None,
    program: list[str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Run `routeray *args` (or `program *args`, a command line with routeray's arguments) as
    its own driver in its own process group, joining the cluster that env's RAY_ADDRESS names
    (as `ray job submit -- routeray ...` would), its output in `log` or nowhere; a job still
    running when the block ends (a failed test) is killed."""
    program = program or [str(Path(sys.executable).with_name("routeray"))]
    # The child keeps its own copy of the descriptor.
    with open(log or os.devnull, "w") as out:
        job = subprocess.Popen(
            [*program, *args],
            env=env,
            cwd=cwd,
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


# Ray Data's claim on the cluster's resources, which a running driver renews every 10 s and
# withdraws when its dataset is done, lapses this long after its last renewal. A driver killed
# midway never withdraws its claim: until it lapses, the drivers after it share the CPUs with
# it, in whole CPUs, so that after two such kills a job on a 2-CPU cluster gets none and
# waits (three minutes at Ray Data's default).
CLAIM_LAPSE_S = 30


def driver_env(ray: Any) -> dict[str, str]:
    """The environment for a job driver joining the cluster that `ray` (the `ray` module) is
    connected to, as a test that may kill it should start it: a claim on the cluster's
    resources that it leaves behind lapses within `CLAIM_LAPSE_S`."""
    return {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": str(CLAIM_LAPSE_S),
    }


# The conditions are costly to look at (an S3 listing, a scan of every process or socket on
# the host) and the events they wait for are held until the test acts (the fault layer's
# holds), so a quarter of a second late is never too late; polled every 50 ms they kept the
# S3 server and the CPUs busy for the whole wait.
POLL_S = 0.25


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 240.0) -> Any:
    """Poll `condition` until it returns something truthy and return that; fail saying `what`
    was awaited when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(POLL_S)
    return result


def kill_job(job: subprocess.Popen, ray: Any, timeout_s: float = 120.0) -> None:
    """SIGKILL the driver `job` (its process group), then wait until Ray has ended what it
    started: the job marked dead, and no worker process left that ran its tasks or actors.

    The driver's workers live in Ray's processes, not its process group, and Ray ends them only
    after it notices the driver has gone: until then a write task may still publish a file, an
    actor may still call a model. After this returns nothing of the job runs any more, so what
    a test then lists or counts is final. `ray` is the `ray` module, connected to the cluster
    the job ran on."""
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    from ray._private.state import state

    # Once the driver is reaped it can register no job: a job killed before it connected to
    # Ray has no entry and left nothing running.
    jobs = {j["JobID"] for j in state.job_table() if j["DriverPid"] == job.pid}
    if not jobs:
        return

    def ended() -> bool:
        dead = all(j["IsDead"] for j in state.job_table() if j["JobID"] in jobs)
        return dead and not _job_processes(ray, jobs)

    wait_until(ended, f"Ray to end the killed job {sorted(jobs)} and its workers", timeout_s)


def _job_processes(ray: Any, jobs: set[str]) -> list[int]:
    """Worker processes, on this cluster's live nodes (all on this host), that may still work
    for `jobs`: those registered with one of them, and those registered with nobody, which
    include a dying worker whose raylet has already let it go (and a new one not yet
    registered, which the caller then waits for a moment longer). A detached actor outlives
    the job that created it by design (Ray Data's bookkeeping actors, made by whichever job
    first ran a dataset on the cluster): it does none of the job's work and is not waited for."""
    from ray._private.internal_api import node_stats
    from ray._private.state import state

    detached = {
        actor["Pid"]
        for actor in state.actor_table(None).values()
        if actor["IsDetached"] and actor["State"] == "ALIVE"
    }
    busy: list[int] = []
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        stats = node_stats(
            node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=False
        )
        registered = {w.pid: w.job_id.hex() for w in stats.core_workers_stats}
        busy += [pid for pid, job in registered.items() if job in jobs]
        for child in _raylet(node["RayletSocketName"]).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                title = (child.cmdline() or [""])[0]
                if child.status() == psutil.STATUS_ZOMBIE or not title.startswith("ray::"):
                    continue
                if title not in _AGENTS and child.pid not in registered:
                    busy.append(child.pid)
    return [pid for pid in busy if pid not in detached]


def _raylet(socket_name: str) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        if f"--raylet_socket_name={socket_name}" in (proc.info["cmdline"] or ()):
            return proc
    raise AssertionError(f"no raylet process on this host serves {socket_name}")


def driver_joined(job: subprocess.Popen) -> bool:
    """Whether the driver `job` has registered with the Ray cluster this process is connected
    to (its entry in the GCS job table): from then on it may start work on the cluster."""
    from ray._private.state import state

    return any(j["DriverPid"] == job.pid for j in state.job_table())


# A server's side of a connection that its client may still be waiting on, or sending through.
_OPEN = (psutil.CONN_ESTABLISHED, psutil.CONN_SYN_RECV, psutil.CONN_CLOSE_WAIT)


def orphaned_connections(port: int) -> list[Any]:
    """Connections to the server on this host's `port` whose client process has exited and
    which the server has not closed yet: a request the client sent before it died may still
    be waiting to be read or answered there (and then acted on, an upload stored)."""
    connections = psutil.net_connections(kind="tcp")
    # A live process owns its end of the connection; a dead one's end is owned by nobody.
    alive = {
        c.laddr.port for c in connections if c.raddr and c.raddr.port == port and c.pid is not None
    }
    return [
        c
        for c in connections
        if c.laddr.port == port and c.raddr and c.status in _OPEN and c.raddr.port not in alive
    ]


def wait_server_done(port: int, what: str, timeout_s: float = 120.0) -> None:
    """Wait until the server on `port` has finished every request of a client that has exited
    (`what` names the server in the message if it does not in time)."""
    wait_until(
        lambda: not orphaned_connections(port),
        f"{what} to finish the requests of clients that have exited",
        timeout_s,
    )


def settle_s3(local_s3: Any) -> None:
    """After a kill: end every hold on the loopback S3 (what it held fails, so a dead client's
    upload never lands) and wait until the server has answered every request, those of dead
    clients included; what a test then lists is final."""
    local_s3.faults.release()
    # Both at once: a dead client's request may wait in the accept queue, which `in_flight`
    # does not count, and a connection may vanish while the server still answers on it.
    wait_until(
        lambda: local_s3.faults.in_flight == 0 and not orphaned_connections(local_s3.port),
        "the S3 server to finish its requests, those of clients that have exited included",
    )


def kill_midway(local_ray: Any, local_s3: Any, bucket: str, args: list[str]) -> dict[str, object]:
    """Start `routeray *args` as a job on this Ray cluster, kill it once it has published a
    first result, wait until nothing of it runs and the loopback S3 has answered every request
    it had sent (an upload a dying worker finished sending is still stored; what a hold of the
    fault layer held is failed), and return what it had published."""
    with running_job(args, driver_env(local_ray)) as job:

        def first_result() -> bool:
            assert job.poll() is None, "the job ended before it published anything"
            return bool(published(local_s3, bucket))

        wait_until(first_result, "the job to publish a first result")
        kill_job(job, local_ray)
    settle_s3(local_s3)
    return published(local_s3, bucket)
