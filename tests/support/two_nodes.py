"""A real two-node Ray cluster on this one host, for tests: a head and a worker node, each one
`ray start --block` process with what it started under it, so that a test can kill the worker
node outright (its raylet, agents and workers at once, as a lost machine would) and stop both
without touching any other Ray on the machine (`ray stop` would stop every one).

The worker node offers a custom resource, `WORKER_RESOURCE`, that the head lacks, so work can
be pinned to it; a CPU count per node small enough makes a pool of actors spread over both. A
cluster can outlive a test that kills its worker node: `ensure_worker()` starts a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psutil

from routeray.demo.config import free_port
from tests.support.ray_start import ATTEMPTS, gave_up

RAY = Path(sys.executable).with_name("ray")
WORKER_RESOURCE = "routeray_test_worker"
# What `ray start` prints once the node's processes are up.
STARTED = "Ray runtime started"
CLUSTER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # The head declares a node dead after about 5 s of silence instead of Ray's 30 or so.
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
}

T = TypeVar("T")


class GaveUp(RuntimeError):
    """`ray start` exited because its raylet did not register within Ray's fixed 30 s."""


def wait_for(
    condition: Callable[[], T], what: str, timeout_s: float = 60.0, every_s: float = 0.2
) -> T:
    """Poll `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


class RayNode:
    """One `ray start --block` and everything it started."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        # The child keeps its own copy of the descriptor.
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [str(RAY), "start", "--block", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Until `ray start` says the node runs; `GaveUp` if Ray ran out of its own wait."""

        def started() -> bool:
            if self.process.poll() is not None:
                output = self.log.read_text()
                error = GaveUp if gave_up(output) else RuntimeError
                raise error(f"ray start ({self.name}) exited:\n{output}")
            return STARTED in self.log.read_text()

        wait_for(started, f"the {self.name} node to start", timeout_s)

    def processes(self) -> list[psutil.Process]:
        """`ray start` and everything under it. Ray's workers run in process groups of their
        own, so killing the process group would miss them: follow parent links instead, and
        once `ray start` has exited, find its orphans by the session it made."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        orphans = []
        for proc in psutil.process_iter():
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                if os.getsid(proc.pid) == self.process.pid:
                    orphans.append(proc)
        return orphans

    def kill(self) -> None:
        """SIGKILL every process of the node at once: none of them gets to tell the others."""
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> list[psutil.Process]:
        """SIGTERM `ray start`, which stops what it started; returns what to wait for."""
        procs = self.processes()
        if self.process.poll() is None:
            self.process.terminate()
        return procs


class TwoNodeCluster:
    """`with TwoNodeCluster() as cluster:` starts a head node with `head_cpus` CPUs and a worker
    node with `worker_cpus` CPUs plus `WORKER_RESOURCE`. `cluster.address` is the GCS address,
    `cluster.env` the environment for a driver started as a subprocess (RAY_ADDRESS set);
    `cluster.connect()` makes this process a driver and learns the node ids;
    `cluster.ensure_worker()` starts a fresh worker node when the last one was killed. On exit
    every node stops and, given `logs_dir`, their Ray logs are copied there first."""

    def __init__(
        self,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        object_store_bytes: int = 200 * 1024 * 1024,
        logs_dir: Path | None = None,
    ) -> None:
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.logs_dir = logs_dir
        self.port = free_port()
        # Ray turns a loopback address into this host's IP, which both nodes share.
        self.address = f"127.0.0.1:{self.port}"
        # Short, because Ray puts Unix sockets under it (at most 107 characters a path); its
        # own, so that Ray's "latest cluster" record there is seen by no other `ray.init()`.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt2n-", dir="/tmp"))
        self.env = {**os.environ, **CLUSTER_ENV, "RAY_ADDRESS": self.address}
        # Every process of a cluster, drivers included, must agree on token authentication. A
        # process settles its mode when Ray loads its config (a local `ray.init` switches it
        # to token and says so in RAY_AUTH_MODE), so the cluster takes the mode this process
        # has, which the drivers it starts inherit. Unset means off: `ray start` alone would
        # turn it on whenever a token file exists.
        self.env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE") or "disabled"
        self._common = [
            f"--object-store-memory={object_store_bytes}",
            "--disable-usage-stats",
            # Workers take ports the OS picks, as under `ray.init`: `ray start`'s fixed range
            # is shared with every other Ray on this host.
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self.head_id = ""
        self.worker_id = ""

    def __enter__(self) -> TwoNodeCluster:
        try:
            self._start_head()
            self._start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _node_ports(self) -> list[str]:
        """Free ports for what would otherwise listen on a fixed default port, which the other
        node, or any other Ray on this host, may hold already."""
        return [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]

    def _start_head(self) -> None:
        if self.env["RAY_AUTH_MODE"] == "token":
            # Creates ~/.ray/auth_token only when missing, as a local `ray.init` would.
            subprocess.run(
                [str(RAY), "get-auth-token", "--generate"],
                env=self.env,
                check=True,
                stdout=subprocess.DEVNULL,  # the token itself
                stderr=subprocess.DEVNULL,
            )
        self.head = self._start_node("head", self._head_args, self.temp_dir / "head.log")

    def _start_node(self, name: str, args: Callable[[], list[str]], log: Path) -> RayNode:
        """A started node, started again (up to ATTEMPTS in all) when Ray gave up on it."""
        for _ in range(ATTEMPTS - 1):
            node = RayNode(name, args(), log, self.env)
            try:
                node.wait_started()
                return node
            except GaveUp:
                node.kill()
        node = RayNode(name, args(), log, self.env)
        node.wait_started()
        return node

    def _head_args(self) -> list[str]:
        # A fresh port each time: one a killed GCS held may not be free yet.
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env["RAY_ADDRESS"] = self.address
        return [
            "--head",
            f"--port={self.port}",
            f"--num-cpus={self.head_cpus}",
            # Ray's state API (where actors run) is served by the dashboard's process; its
            # web pages listen on loopback only.
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            *self._node_ports(),
            *self._common,
        ]

    def _start_worker(self) -> RayNode:
        name = f"worker-{len(self.workers) + 1}"
        worker = self._start_node(name, self._worker_args, self.temp_dir / f"{name}.log")
        self.workers.append(worker)
        return worker

    def _worker_args(self) -> list[str]:
        return [
            f"--address={self.address}",
            f"--num-cpus={self.worker_cpus}",
            f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
            *self._node_ports(),
            *self._common,
        ]

    def _alive_nodes(self) -> list[dict[str, Any]]:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def connect(self) -> None:
        """Join as a driver and record both node ids."""
        import ray

        ray.init(address=self.address, log_to_driver=False)
        self._learn_nodes()

    def _learn_nodes(self, timeout_s: float = 120.0) -> None:
        """Wait until the cluster's live nodes are the head and one worker node, and record
        their ids: a worker node killed earlier counts as live until the head's health checks
        give up on it, and work must not be placed on it meanwhile."""

        def both() -> list[dict[str, Any]]:
            nodes = self._alive_nodes()
            workers = [n for n in nodes if WORKER_RESOURCE in n["Resources"]]
            return nodes if len(nodes) == 2 and len(workers) == 1 else []

        nodes = wait_for(both, "the head and one live worker node to be registered", timeout_s)
        self.worker_id = next(n["NodeID"] for n in nodes if WORKER_RESOURCE in n["Resources"])
        self.head_id = next(n["NodeID"] for n in nodes if WORKER_RESOURCE not in n["Resources"])

    def ensure_worker(self) -> None:
        """A live worker node: a fresh one (and its id in `worker_id`) if the last was killed.
        Needs `connect()` first."""
        if not self.workers or self.workers[-1].process.poll() is not None:
            self._start_worker()
        self._learn_nodes()

    def kill_worker(self) -> None:
        """The worker node dies at once, as a machine lost would."""
        self.workers[-1].kill()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every node, SIGKILL whatever of them is left after `grace_s`."""
        nodes = [n for n in (*self.workers, self.head) if n is not None]
        procs = [p for node in nodes for p in node.terminate()]
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        for node in nodes:
            node.process.wait()
        if self.logs_dir is not None:
            for path in (*self.temp_dir.glob("*.log"), self.temp_dir / "session_latest" / "logs"):
                if path.is_dir():
                    shutil.copytree(path, self.logs_dir / "ray", dirs_exist_ok=True)
                elif path.exists():
                    shutil.copy(path, self.logs_dir / path.name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
