"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from routers import save_router
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.kinds.mf import MFNet, MFRouter
from routers.text.hf import offline

# Tests never reach a model hub: the embedder ships inside a pip package.
offline()


@pytest.fixture(autouse=True)
def _no_embedding_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test embeds for real: a cache left by an earlier run must not answer for it."""
    monkeypatch.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)


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


def running_in_ci() -> bool:
    """CI services set CI=true (GitHub Actions, GitLab, Buildkite and `.ci/run`'s callers)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


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
    """An MF router with seeded random weights over the real MiniLM embedder."""
    torch.manual_seed(7)
    net = MFNet(n_models=3, embedding_dim=384, dim=16)
    with torch.no_grad():
        net.bias.weight.normal_()
    router = MFRouter(net, [STRONG_MODEL, WEAK_MODEL, "other-model"])
    directory = tmp_path_factory.mktemp("routers") / "tiny-mf"
    save_router(router, directory, {"default_threshold": 0.5})
    return directory


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for one test module; S3 credentials for the loopback server are in the
    environment before it starts, because its workers read S3 themselves."""
    import ray

    from tests.support.local_s3 import use_test_credentials

    use_test_credentials()
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_s3():
    from tests.support.local_s3 import LocalS3

    with LocalS3() as server:
        yield server
