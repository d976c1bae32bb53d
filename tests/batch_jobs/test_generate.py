"""`batch generate` end to end: the router, a real vLLM engine on a tiny model for weak rows and
the strong-API stand-in (with faults) for strong rows, on a local Ray."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]' or '.[gpu]')")

from batch_jobs.commit import SUMMARY_FILE
from batch_jobs.generate import AnswerBatch, GenerateConfig, run
from routeray.demo.prompts import generate_prompts
from routeray.demo.strong_standin import StrongStandin
from routeray.demo.tiny_model import build_tiny_model
from routers.checkpoint import load_router
from routers.prices import Prices
from tests.support.throughput import assert_throughput

pytestmark = pytest.mark.slow

STRONG, WEAK = "standin-strong", "tiny-weak"


@pytest.fixture(scope="module")
def standin():
    with StrongStandin(model_name=STRONG) as server:
        yield server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


def config_for(standin: StrongStandin, model_dir: Path, **limits: float) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {
            "strong": {
                "model": STRONG,
                "base_url": standin.base_url,
                "max_retries": 2,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
            },
            "weak": {
                "kind": "vllm",
                "model": WEAK,
                "model_path": str(model_dir),
                "engine_args": {"max_model_len": 512, "seed": 0},
            },
            "max_tokens": 8,
            "strong_stage": {"batch_size": 16, **limits},
            "weak_stage": {"batch_size": 16},
        }
    )


def test_strong_stage_holds_rate_and_concurrency(standin: StrongStandin, model_dir: Path):
    config = config_for(standin, model_dir)
    actor = AnswerBatch(
        "strong",
        config.strong.model_dump(),
        "prompt",
        Prices().model_dump(),
        max_tokens=4,
        temperature=0.0,
        requests_per_s=10,
        concurrency=3,
    )
    standin.stats.reset()
    table = pa.table({"prompt": [f"question {i}" for i in range(25)], "route": ["strong"] * 25})
    started = time.monotonic()
    answered = actor(table)
    elapsed = time.monotonic() - started
    assert answered.column("answered_by").to_pylist() == [STRONG] * 25
    assert standin.stats.max_in_flight <= 3
    # A bucket of 10 requests a second: the first 10 at once, the other 15 over 1.5 s.
    assert elapsed >= 1.4


def test_generate_answers_every_row_once(
    local_ray, standin: StrongStandin, model_dir: Path, tiny_router_dir: Path, tmp_path: Path
):
    prompts: list[str | None] = generate_prompts(40, seed=5)
    prompts[3] = None
    source = tmp_path / "in"
    source.mkdir()
    for part in range(2):
        rows = range(part * 20, part * 20 + 20)
        pq.write_table(
            pa.table({"id": list(rows), "prompt": [prompts[i] for i in rows]}),
            source / f"part-{part}.parquet",
            row_group_size=7,
        )
    standin.stats.reset()
    standin.faults.clear()
    # One strong request is throttled once (retried), one is refused for good (row error).
    standin.inject("429", retry_after=0.1)
    standin.inject("400")

    out = tmp_path / "out"
    config = config_for(standin, model_dir, requests_per_s=50, concurrency=4)
    # Half the rows each way, whatever the random router's scale.
    threshold = float(np.median(load_router(tiny_router_dir).score([p for p in prompts if p])))
    summary = run(str(source), str(out), config, router=str(tiny_router_dir), threshold=threshold)

    table = pq.read_table(out).to_pandas().set_index("id").sort_index()
    assert table.index.tolist() == list(range(40))
    assert table.loc[3, "error"] == "prompt is null" and pd.isna(table.loc[3, "response"])

    strong = table[table["route"] == "strong"]
    weak = table[table["route"] == "weak"]
    assert len(strong) >= 3 and len(weak) >= 3, "the tiny router should send rows both ways"
    refused = strong[strong["error"].notna()]
    assert len(refused) == 1 and f"strong model {STRONG}" in refused["error"].iloc[0]
    ok_strong = strong[strong["error"].isna()]
    assert (ok_strong["answered_by"] == STRONG).all() and ok_strong["response"].notna().all()
    # Every strong row asked once, plus the retry of the throttled one.
    assert standin.stats.requests == len(strong) + 1
    assert standin.stats.max_in_flight <= 4

    assert (weak["answered_by"] == WEAK).all() and weak["error"].isna().all()
    assert (weak["output_tokens"] > 0).all() and (weak["input_tokens"] > 0).all()
    prices = Prices()
    np.testing.assert_allclose(
        weak["cost_usd"], prices.weak.cost(weak["input_tokens"], weak["output_tokens"])
    )
    np.testing.assert_allclose(
        ok_strong["cost_usd"],
        prices.strong.cost(ok_strong["input_tokens"], ok_strong["output_tokens"]),
    )

    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert summary["rows"] == 40 and summary["errors"] == 2
    assert summary["answered_strong"] + summary["answered_weak"] == 38
    assert summary["cost_usd"] == pytest.approx(table["cost_usd"].sum())
    assert summary["cost_usd"] < summary["all_strong_cost_usd"]
    assert_throughput(summary, rows=40, files=2)


def test_killed_generate_job_resumes_without_asking_again(
    local_ray, standin: StrongStandin, model_dir: Path, tiny_router_dir: Path, tmp_path: Path
):
    """Killed midway and run again, the job answers every row exactly once, keeps the files it
    had published, and asks the strong API again only for the rows of files it had not."""
    import signal

    import yaml

    from tests.support.jobs import running_job

    files, rows = 4, 8
    prompts = generate_prompts(files * rows, seed=9)
    source, out = tmp_path / "in", tmp_path / "out"
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        path = source / f"day={f}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": list(ids), "prompt": [prompts[i] for i in ids]}), path)
    # Threshold 0: every row to the strong stand-in, at 8 requests a second for the whole job,
    # so that the job takes seconds and the kill lands between publications.
    config = config_for(standin, model_dir, requests_per_s=8, concurrency=2)
    config_file = tmp_path / "generate.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    args = [
        "batch", "generate", "--input", str(source), "--output", str(out),
        "--config", str(config_file), "--router", str(tiny_router_dir), "--threshold", "0",
    ]  # fmt: skip
    standin.faults.clear()
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}

    def outputs() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in out.glob("day=*/*.parquet")}

    standin.stats.reset()
    with running_job(args, env) as job:
        # Midway through the answering: half the rows asked of the strong model. On a small
        # cluster Ray Data may hold the writes back until the end, so files published by now
        # may be none or some.
        deadline = time.monotonic() + 240
        while standin.stats.requests < files * rows // 2:
            assert job.poll() is None, "the job ended before the kill"
            assert time.monotonic() < deadline, "the job asked too little in time"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    # The killed driver's workers live in Ray's processes, not its process group: Ray ends them
    # moments later. Until then they may still ask the stand-in or publish a file.
    quiet_since, seen = time.monotonic(), standin.stats.requests
    give_up = time.monotonic() + 60
    while time.monotonic() - quiet_since < 3 or standin.stats.in_flight:
        assert time.monotonic() < give_up, "the killed job's workers kept asking the stand-in"
        if standin.stats.requests != seen:
            quiet_since, seen = time.monotonic(), standin.stats.requests
        time.sleep(0.1)
    before = outputs()
    assert len(before) < files, "the kill should land midway"

    standin.stats.reset()
    summary = run(str(source), str(out), config, router=str(tiny_router_dir), threshold=0.0)
    table = pq.read_table(out).to_pandas()
    assert sorted(table["id"]) == list(range(files * rows))
    assert (table["answered_by"] == STRONG).all() and table["error"].isna().all()
    assert summary["rows"] == files * rows
    # Published files were kept, and their rows were not paid for twice.
    assert all(
        path.stat().st_mtime_ns == stamp for path, stamp in outputs().items() if path in before
    )
    assert standin.stats.requests == (files - len(before)) * rows
