"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from routers import save_router
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.kinds.mf import MFNet, MFRouter
from routers.shipped import SHIPPED
from routers.text.embedders import get_embedder
from routers.text.hf import offline
from tests.support.ci import running_in_ci
from tests.support.ray_start import ATTEMPTS, RAY_TEST_ENV, gave_up, kill

# Tests never reach a model hub: the embedder ships inside a pip package.
offline()

# Fixtures that start Ray or a vLLM engine: a test that asks for one is `slow` (`make
# test-quick` leaves those out).
SLOW_FIXTURES = {"ray_cluster", "local_ray", "endpoint", "two_node_cluster"}


# Under pytest-xdist (`make test` runs two workers) a worker takes one group at a time: a
# module, or the whole serve_app package, which shares one Serve app and vLLM engine. Groups
# start longest first, so that the last to finish is short; the rest keep collection order.
# The order is a schedule, not a dependency: a run without xdist keeps collection order, and
# any subset runs on its own.
WHOLE_PACKAGES = ("tests/serve_app/",)
LONGEST_FIRST = (
    "tests/routers/evaluation/test_default_router_quality.py",
    "tests/serve_app/",
    "tests/test_two_nodes.py",
    "tests/batch_jobs/test_generate.py",
    "tests/backends/test_vllm_engine.py",
    "tests/routeray/test_demo.py",
    "tests/batch_jobs/test_s3.py",
)


def _group(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return next((package for package in WHOLE_PACKAGES if path.startswith(package)), path)


def _rank(nodeid: str) -> int:
    group = _group(nodeid)
    return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_configure(config: pytest.Config) -> None:
    # Before any Ray starts: Serve's controller, and the clusters and drivers the tests start,
    # inherit them.
    for name, value in RAY_TEST_ENV.items():
        os.environ.setdefault(name, value)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        _share_the_cpus(workers)


def _share_the_cpus(workers: int) -> None:
    """Thread pools sized for this worker's share of the CPUs, here and in what it starts (Ray,
    job drivers), unless the caller chose: with two workers on two cores, two-thread pools in
    each spin against each other at every parallel step and the whole run slows down."""
    share = max(1, (os.cpu_count() or 1) // workers)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(share))
    # An OpenMP thread that waits for work (a vLLM engine's between steps) sleeps instead of
    # spinning on a core the other worker needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from threadpoolctl import threadpool_limits

    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest-xdist finds a test by its id: two tests with one id would run one of them twice.
    ids = Counter(item.nodeid for item in items)
    if twice := sorted(nodeid for nodeid, n in ids.items() if n > 1):
        raise pytest.UsageError(f"tests that share an id: {twice}")
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The controller queues groups in the order its workers collected them; sorted() is
        # stable, so within a rank collection order stays.
        items[:] = sorted(items, key=lambda item: _rank(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whatever `--dist` says, a group never spans workers: module-scoped fixtures (an S3
    server, a two-node cluster, a vLLM engine) and the serve_app package's endpoint are set up
    once. (xdist's own `loadgroup` marks work by rewriting test ids, which pytest 9.2
    ignores.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    # Keep the longest-first order rather than xdist's most-tests-first.
    config.option.loadscopereorder = False
    return Groups(config, log)


@pytest.fixture(autouse=True)
def _no_embedding_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test embeds for real: a cache left by an earlier run must not answer for it."""
    monkeypatch.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)


@pytest.fixture(autouse=True)
def _threads_as_they_were() -> Iterator[None]:
    """Code under test may size this process's thread pools for a worker's share of the CPUs
    (`cap_threads`); the tests after it must not be left running on one core."""
    threads = torch.get_num_threads()
    rayon = os.environ.get("RAYON_NUM_THREADS")
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if rayon is None:
        os.environ.pop("RAYON_NUM_THREADS", None)
    else:
        os.environ["RAYON_NUM_THREADS"] = rayon


@pytest.fixture(autouse=True)
def _quiet_library_after_cli():
    """A command run in-process (typer's CliRunner) turns on progress bars and gives our
    loggers their own handler; the next test starts from the library's defaults again."""
    yield
    import logging

    from routeray.options import OUR_PACKAGES
    from routers.progress import enable_progress

    enable_progress(False)
    for name in OUR_PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data. A fresh clone without it skips the checks that need it and says how to
    enable them; under CI a missing directory fails, so CI cannot silently skip them."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = Path(os.environ.get("ROUTERAY_DATA_DIR", default))
    if not (path / "eval").is_dir() or not (path / "train").is_dir():
        message = (
            f"shared data not found at {path} (it needs eval/ and train/): put the data at "
            "../shared/data beside the repository or set ROUTERAY_DATA_DIR to enable these checks"
        )
        if running_in_ci():
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MF router with seeded random weights over the shipped static embedder. The batch
    jobs start its copies in one actor after another, and over MiniLM each load (transformers,
    the model, its first batch) cost several times more CPU (docs/BENCHMARKS.md, "Issue 25,
    continued")."""
    embedder = {"model_path": str(SHIPPED["fast"] / "embedder")}
    torch.manual_seed(7)
    dims = get_embedder(**embedder).encode(["a"]).shape[1]
    net = MFNet(n_models=3, embedding_dim=dims, dim=16)
    with torch.no_grad():
        net.bias.weight.normal_()
    router = MFRouter(net, [STRONG_MODEL, WEAK_MODEL, "other-model"], embedder=embedder)
    directory = tmp_path_factory.mktemp("routers") / "tiny-mf"
    save_router(router, directory, {"default_threshold": 0.5})
    return directory


class LocalRay:
    """The test run's one local Ray: started by the first test that needs it and shared by
    every module after it (a start costs seconds, and Serve and the batch jobs run on it in
    turn). A test that must be the driver of another cluster stops it; the next test that
    needs it starts it again."""

    CPUS = 2

    def __init__(self) -> None:
        self.metrics_port = 0
        self._address = ""

    def ensure(self) -> Any:
        import ray

        from routeray.demo.config import free_port
        from tests.support.local_s3 import use_test_credentials

        if ray.is_initialized() and ray.get_runtime_context().gcs_address != self._address:
            # Started by a command run in-process, without the metrics port Serve's tests read.
            ray.shutdown()
        if not ray.is_initialized():
            # Before Ray starts: its workers read the loopback S3 themselves.
            use_test_credentials()
            for attempt in range(1, ATTEMPTS + 1):
                self.metrics_port = free_port()
                before = {p.pid for p in psutil.Process().children(recursive=True)}
                try:
                    ray.init(
                        num_cpus=self.CPUS,
                        include_dashboard=False,
                        _metrics_export_port=self.metrics_port,
                    )
                    break
                except Exception as error:
                    if attempt == ATTEMPTS or not gave_up(str(error)):
                        raise
                    # The node that gave up left its GCS and raylet running: stop them first.
                    ray.shutdown()
                    children = psutil.Process().children(recursive=True)
                    kill([p for p in children if p.pid not in before])
            self._address = ray.get_runtime_context().gcs_address
        return ray

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self._address = ""


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRay]:
    cluster = LocalRay()
    yield cluster
    cluster.stop()


@pytest.fixture
def local_ray(ray_cluster: LocalRay) -> Any:
    """The `ray` module, connected to the run's local Ray (2 CPUs); S3 credentials for the
    loopback server are in the environment of its workers."""
    return ray_cluster.ensure()


@pytest.fixture(scope="module")
def local_s3():
    from tests.support.local_s3 import LocalS3

    with LocalS3() as server:
        yield server
