"""A real two-node Ray cluster (two `ray start` on this host): a batch route whose router actors
run on both nodes loses the worker node midway and still writes every row exactly once; the
endpoint answers through the head's proxy with its router replica on the worker node."""

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
from tests.support.s3_faults import FaultRule
from tests.support.two_nodes import WORKER_RESOURCE, TwoNodeCluster, wait_for

if TYPE_CHECKING:
    from ray.util.state.common import ActorState

pytestmark = pytest.mark.slow

WEAK_MODEL = "weak-standin"
FILES, ROWS = 16, 40
# Until the kill, each read of an input object waits this long at the loopback S3: routing
# then takes about a minute on any machine, and the kill lands while rows are being routed.
READ_DELAY_S = 0.3
JOB_TIMEOUT_S = 300


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[TwoNodeCluster]:
    """A fresh cluster for each test (one of them kills its worker node), with this process as
    one of its drivers; the nodes' Ray logs end up in the test's tmp_path."""
    import ray

    assert not ray.is_initialized(), "this process is already a driver of another Ray"
    # Before the nodes start: their workers read the loopback S3 themselves.
    use_test_credentials()
    with TwoNodeCluster(head_cpus=1, worker_cpus=1, logs_dir=tmp_path) as nodes:
        nodes.connect()
        try:
            yield nodes
        finally:
            ray.shutdown()


def alive_actors(class_name: str) -> list[ActorState]:
    """Ray's state API: the live actors whose class name contains `class_name`."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    return [a for a in actors if class_name in a.class_name]


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
    slow_reads = FaultRule(key_prefix="in/", methods=("GET",), delay_s=READ_DELAY_S)
    with running_job(args, cluster.env, log) as job:

        def routing_on_both_nodes() -> bool:
            assert job.poll() is None, f"the job ended before the kill:\n{log.read_text()}"
            nodes = {a.node_id for a in alive_actors("RouteBatch")}
            return nodes == {cluster.head_id, cluster.worker_id}

        # Slow reads until the kill only: the head alone then finishes at full speed.
        with local_s3.faults.rules(slow_reads) as faults:
            wait_for(routing_on_both_nodes, "router actors on both nodes", 240)
            before = published(local_s3, bucket)
            cluster.kill_worker()
        assert faults.delayed, "no read was slowed: the kill may have come late by chance"
        assert len(before) < FILES, "the kill should land midway"
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
            routers=[RouterSpec(name="fast", path="fast")],
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
            routers = alive_actors("ServeReplica:routeray:Router")
            assert [a.node_id for a in routers] == [cluster.worker_id]
            assert {a.node_id for a in alive_actors("ProxyActor")} == {cluster.head_id}

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
