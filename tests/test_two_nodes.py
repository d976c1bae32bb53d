"""A real two-node Ray cluster (two `ray start` on this host), one for the module: a batch route
whose router actors run on both nodes loses the worker node midway and still writes every row
exactly once; the endpoint answers through the head's proxy with its router replica on the
worker node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pyarrow.parquet as pq
import pytest

from batch_jobs.commit import SUMMARY_FILE
from batch_jobs.storage import s3_filesystem
from routeray.demo.config import STRONG_MODEL, free_port
from tests.support.jobs import published, route_archive_args, running_job
from tests.support.local_s3 import put_archive, use_test_credentials
from tests.support.two_nodes import WORKER_RESOURCE, TwoNodeCluster, wait_for

if TYPE_CHECKING:
    from ray.util.state.common import ActorState, TaskState

    from tests.conftest import LocalRay

pytestmark = pytest.mark.slow

WEAK_MODEL = "weak-standin"
FILES, ROWS = 16, 40
JOB_TIMEOUT_S = 300
# Ray Data's name for the task in which a pool actor runs its function over a bundle of rows.
ROUTE_TASK = "MapWorker(MapBatches(RouteBatch)).submit"


@pytest.fixture(scope="module")
def two_node_cluster(
    ray_cluster: LocalRay, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodeCluster]:
    """One cluster for the module, with this process as one of its drivers; the nodes' Ray
    logs end up in a tmp directory of its own."""
    import ray

    # This process must be a driver of this cluster: leave the run's local Ray (the next test
    # that needs it starts it again).
    ray_cluster.stop()
    assert not ray.is_initialized(), "this process is still a driver of another Ray"
    # Before the nodes start: their workers read the loopback S3 themselves.
    use_test_credentials()
    logs = tmp_path_factory.mktemp("two-node-ray")
    with TwoNodeCluster(head_cpus=1, worker_cpus=1, logs_dir=logs) as nodes:
        nodes.connect()
        try:
            yield nodes
        finally:
            ray.shutdown()


@pytest.fixture
def cluster(two_node_cluster: TwoNodeCluster) -> TwoNodeCluster:
    """The module's cluster with a live worker node (a fresh one if an earlier test killed
    it) and all of its CPUs free again."""
    import ray

    two_node_cluster.ensure_worker()
    # The nodes' CPUs, with nothing of an earlier test holding any: the tests place work by
    # what fits where.
    expected = float(two_node_cluster.head_cpus + two_node_cluster.worker_cpus)
    wait_for(
        lambda: ray.available_resources().get("CPU", 0.0) >= expected - 1e-6,
        f"all {expected:g} CPUs of the cluster to be free",
        120,
    )
    return two_node_cluster


def alive_actors(cluster: TwoNodeCluster, class_name: str) -> list[ActorState]:
    """Ray's state API: the live actors whose class name contains `class_name`."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=cluster.address, filters=[("state", "=", "ALIVE")], detail=True, limit=10_000
    )
    return [a for a in actors if class_name in a.class_name]


def routed_on_worker(cluster: TwoNodeCluster) -> list[TaskState]:
    """Ray's state API: the route tasks the worker node has finished, each over rows that it
    routed (a task is listed as finished a moment after it has)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(
        address=cluster.address,
        filters=[("node_id", "=", cluster.worker_id), ("state", "=", "FINISHED")],
        limit=10_000,
    )
    return [t for t in tasks if t.name == ROUTE_TASK]


def test_route_job_loses_a_node_midway_and_writes_every_row_once(
    cluster: TwoNodeCluster, local_s3, tiny_router_dir: Path, tmp_path: Path
):
    bucket = local_s3.bucket()
    put_archive(local_s3, bucket, files=FILES, rows=ROWS)
    args = [
        *route_archive_args(local_s3, bucket, tiny_router_dir),
        # Two actors of 0.6 CPU cannot share a node of 1 CPU, so one runs on each node; the
        # CPU left over lets files be read and written while they route.
        "--num-actors", "2",
        "--num-cpus", "0.6",
    ]  # fmt: skip
    log = tmp_path / "job.log"
    # However fast the job, its last file cannot be published before the kill: its upload is
    # held until then (and fails once released, for the writer to send it again).
    last = f"out/day={FILES - 1:02d}/"
    # Both actors route from the first rows on. Ray Data starts a pool's actors without waiting
    # for them, and gives a block to the actor with the fewest in flight (the first on a tie):
    # with reads slowed to stretch the job, the head's actor finished each block before the
    # next came, and took them all while the worker node's was starting or idle (issue 25, run
    # 12; the hold then outlived the writer's retries and failed the job). Told to wait for its
    # actors, the job reads nothing until both are up, and reads at full speed keep the head's
    # actor busy when the next block comes.
    env = {**cluster.env, "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": str(JOB_TIMEOUT_S)}
    with running_job(args, env, log) as job:

        def routing_on_both_nodes() -> bool:
            assert job.poll() is None, f"the job ended before the kill:\n{log.read_text()}"
            nodes = {a.node_id for a in alive_actors(cluster, "RouteBatch")}
            if nodes != {cluster.head_id, cluster.worker_id}:
                return False
            # Rows routed on the worker node: losing it costs the job work done there.
            return bool(routed_on_worker(cluster))

        with local_s3.faults.hold(last):
            wait_for(routing_on_both_nodes, "rows routed by router actors on both nodes", 240)
            before = published(local_s3, bucket)
            cluster.kill_worker()
        assert len(before) < FILES, "the kill should land midway"
        assert not any(key.startswith(last) for key in before), "the held file was published"
        # The job goes on without the node: Ray Data runs the lost tasks and actors again on
        # the head, and the commit tracker, whose counts could not be rebuilt, lives on the
        # driver's node (batch_jobs.commit.run_files).
        code = job.wait(timeout=JOB_TIMEOUT_S)
    assert code == 0, f"the job did not survive losing the worker node:\n{log.read_text()}"

    table = pq.read_table(f"{bucket}/out", filesystem=s3_filesystem(local_s3.endpoint))
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert sorted(ids) == list(range(FILES * ROWS)), "a row was lost"
    after = published(local_s3, bucket)
    assert len(after) == FILES
    # Files published before the node died were kept, not redone.
    assert all(after[key] == stamp for key, stamp in before.items())
    summary = json.loads(
        local_s3.client().get_object(Bucket=bucket, Key=f"out/{SUMMARY_FILE}")["Body"].read()
    )
    assert summary["rows"] == FILES * ROWS and summary["errors"] == 0


def test_endpoint_answers_through_the_head_with_its_router_on_the_worker(
    cluster: TwoNodeCluster,
):
    from ray import serve

    from backends import OpenAIBackendConfig
    from routeray.demo.strong_standin import StrongStandin
    from serve_app.app import build
    from serve_app.config import RouterDeploymentConfig, RouterSpec, ServeConfig

    port = free_port()
    with (
        StrongStandin() as strong,
        StrongStandin(answer_prefix="weak answer: ") as weak,
    ):
        config = ServeConfig(
            routers=[RouterSpec(name="fast", path="fast", placement="deployment")],
            strong=OpenAIBackendConfig(model=STRONG_MODEL, base_url=strong.base_url),
            weak=OpenAIBackendConfig(model=WEAK_MODEL, base_url=weak.base_url),
            # Only the worker node offers this resource: the router replica must go there.
            router_deployment=RouterDeploymentConfig(num_cpus=0.5, resources={WORKER_RESOURCE: 1}),
            port=port,
        )
        # One HTTP proxy, on the head: both nodes share this host and so its ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build(config), name="routeray", route_prefix="/")
            routers = alive_actors(cluster, "ServeReplica:routeray:Router")
            assert [a.node_id for a in routers] == [cluster.worker_id]
            assert {a.node_id for a in alive_actors(cluster, "ProxyActor")} == {cluster.head_id}

            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            for model, route, served_by, prefix in (
                ("router-fast-0.0", "strong", STRONG_MODEL, "strong answer: "),
                ("router-fast-1.0", "weak", WEAK_MODEL, "weak answer: "),
            ):
                reply = httpx.post(
                    url,
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "Prove that 17 is prime."}],
                        "max_tokens": 8,
                    },
                    timeout=60,
                )
                assert reply.status_code == 200, reply.text
                # The router replica scored the prompt; the chosen backend answered.
                assert reply.headers["x-routeray-route"] == route
                assert 0.0 <= float(reply.headers["x-routeray-score"]) <= 1.0
                body = reply.json()
                assert body["model"] == served_by
                assert body["choices"][0]["message"]["content"].startswith(prefix)
        finally:
            serve.shutdown()


def test_a_node_ray_gave_up_on_is_stopped_and_started_again(monkeypatch, tmp_path):
    """`ray start` exits when its raylet has not registered within Ray's fixed 30 s (on a
    machine busy enough): the cluster kills what that start left running and starts the node
    again, on fresh ports, up to three times in all; any other failure to start is final."""
    import shutil

    from tests.support import two_nodes
    from tests.support.ray_start import GAVE_UP

    started: list[FakeNode] = []
    killed: list[FakeNode] = []
    failures = [two_nodes.GaveUp] * 3

    class FakeNode:
        def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
            self.args = args
            started.append(self)

        def wait_started(self) -> None:
            if failures:
                raise failures.pop(0)(f"ray start exited: {GAVE_UP}")

        def kill(self) -> None:
            killed.append(self)

    monkeypatch.setattr(two_nodes, "RayNode", FakeNode)
    cluster = TwoNodeCluster()
    try:
        with pytest.raises(two_nodes.GaveUp):
            cluster._start_head()
        assert len(started) == 3 and killed == started[:2]

        started.clear(), killed.clear()
        failures[:] = [two_nodes.GaveUp, RuntimeError]
        with pytest.raises(RuntimeError, match=GAVE_UP):
            cluster._start_head()
        assert len(started) == 2 and killed == started[:1]

        started.clear(), killed.clear()
        failures[:] = [two_nodes.GaveUp]
        cluster._start_head()
        assert cluster.head is started[1] and killed == started[:1]
        ports = [next(a for a in node.args if a.startswith("--port=")) for node in started]
        assert ports[0] != ports[1] == f"--port={cluster.port}"
        assert cluster.env["RAY_ADDRESS"] == cluster.address == f"127.0.0.1:{cluster.port}"
    finally:
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
