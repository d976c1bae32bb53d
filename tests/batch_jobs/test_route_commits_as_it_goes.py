"""The route job publishes files while it routes, in step with routing (issue 29): when half the
rows are routed, at least 40 % of the files are published; a job killed at 90 % of its rows
redoes at most 15 % of them when run again.

The router is a stand-in (tests/batch_jobs/gated_router.py) whose calls wait at a gate once
the rows routed reach a stop: the job stands still at exactly that many rows while the test
counts the published files, whatever the speed of the machine. Each file has two row groups
and each router call routes one, so a file is published only once both of its calls are done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from batch_jobs.commit import SUMMARY_FILE
from batch_jobs.storage import locate, visible_files
from routers import save_router
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.kinds.mf import MFNet
from routers.shipped import SHIPPED
from routers.text.embedders import get_embedder
from tests.batch_jobs import gated_router
from tests.support.jobs import driver_env, kill_job, running_job, wait_until

pytestmark = pytest.mark.slow

FILES, GROUPS, GROUP_ROWS = 20, 2, 12
ROWS = FILES * GROUPS * GROUP_ROWS
ACTORS = 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gated_router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    embedder = {"model_path": str(SHIPPED["fast"] / "embedder")}
    torch.manual_seed(7)
    dims = get_embedder(**embedder).encode(["a"]).shape[1]
    net = MFNet(n_models=2, embedding_dim=dims, dim=8)
    router = gated_router.GatedRouter(net, [STRONG_MODEL, WEAK_MODEL], embedder=embedder)
    return save_router(router, tmp_path_factory.mktemp("routers") / "gated")


def put_archive(root: Path) -> None:
    """FILES files of GROUPS row groups of GROUP_ROWS prompts; ids 0 .. ROWS - 1 in order."""
    for f in range(FILES):
        ids = range(f * GROUPS * GROUP_ROWS, (f + 1) * GROUPS * GROUP_ROWS)
        prompts = [f"question {i}: what is {i} + 1?" for i in ids]
        table = pa.table({"id": list(ids), "prompt": prompts})
        path = root / f"day={f:02d}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(table, path, row_group_size=GROUP_ROWS)


def job_args(root: Path, router: Path) -> list[str]:
    return [
        "batch", "route",
        "--input", str(root / "in"),
        "--output", str(root / "out"),
        "--router", str(router),
        "--threshold", "0.5",
        # One router call per row group.
        "--batch-size", str(GROUP_ROWS),
        "--num-actors", str(ACTORS),
    ]  # fmt: skip


def gated_job(args: list[str], env: dict[str, str], log: Path):
    """`routeray *args` as its own Ray driver, through the stand-in's entry point."""
    return running_job(
        args, env, log, program=[sys.executable, "-m", "tests.batch_jobs.gated_router"], cwd=REPO
    )


def published(root: Path) -> list[str]:
    out = root / "out"
    return visible_files(locate(str(out))) if out.exists() else []


def held_at(ray, gate, job: subprocess.Popen, log: Path, stop: int) -> None:
    """Wait until every router actor waits at the gate, `stop` rows routed."""

    def holding() -> bool:
        assert job.poll() is None, f"the job ended before the gate:\n{log.read_text()}"
        return tuple(ray.get(gate.state.remote())) == (stop, ACTORS)

    wait_until(holding, f"both router actors waiting at {stop} rows routed")


def output_ids(root: Path) -> list[int]:
    return pq.read_table(root / "out").column("id").to_pylist()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    put_archive(tmp_path / "in")
    return tmp_path


@pytest.fixture
def gate(local_ray):
    return gated_router.gate()


def test_half_routed_means_at_least_40_percent_published(
    local_ray, gate, archive: Path, gated_router_dir: Path
):
    half = ROWS // 2
    local_ray.get(gate.reset.remote([half]))
    log = archive / "job.log"
    with gated_job(job_args(archive, gated_router_dir), driver_env(local_ray), log) as job:
        held_at(local_ray, gate, job, log, half)
        at_half = published(archive)
        local_ray.get(gate.release.remote())
        assert job.wait(timeout=240) == 0, log.read_text()
    # Published files are whole files of routed rows: at most the half that was routed.
    assert 0.4 * FILES <= len(at_half) <= FILES // 2, at_half
    ids = output_ids(archive)
    assert sorted(ids) == list(range(ROWS)), "a row was lost or written twice"


def test_killed_at_90_percent_redoes_at_most_15_percent(
    local_ray, gate, archive: Path, gated_router_dir: Path
):
    stop = ROWS * 9 // 10 // GROUP_ROWS * GROUP_ROWS  # 90 %, in whole router calls
    local_ray.get(gate.reset.remote([stop]))
    log = archive / "job.log"
    env = driver_env(local_ray)
    with gated_job(job_args(archive, gated_router_dir), env, log) as job:
        held_at(local_ray, gate, job, log, stop)
        kill_job(job, local_ray)
    before = published(archive)
    local_ray.get(gate.reset.remote([]))
    rerun_log = archive / "rerun.log"
    with gated_job(job_args(archive, gated_router_dir), env, rerun_log) as job:
        assert job.wait(timeout=240) == 0, rerun_log.read_text()
    summary = json.loads((archive / "out" / SUMMARY_FILE).read_text())
    # The rerun routed only what the killed run had not published: at most 15 % of the rows.
    assert summary["rows_processed"] == ROWS - len(before) * GROUPS * GROUP_ROWS
    assert summary["rows_processed"] <= 0.15 * ROWS, (summary, before)
    assert summary["rows"] == ROWS
    ids = output_ids(archive)
    assert sorted(ids) == list(range(ROWS)), "a row was lost or written twice"
