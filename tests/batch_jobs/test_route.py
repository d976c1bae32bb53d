"""The Ray Data route job on a local Ray: every row out exactly once, bad rows explained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs.commit import SUMMARY_FILE, JobConflict
from batch_jobs.route import run
from routeray.demo.prompts import generate_prompts
from routers.checkpoint import load_router
from routers.prices import Prices
from tests.support.shares import assert_calibrated
from tests.support.throughput import assert_throughput, without_timing

pytestmark = pytest.mark.slow


def test_route_job_routes_every_row_once(local_ray, tmp_path: Path, tiny_router_dir: Path):
    prompts: list[str | None] = generate_prompts(120, seed=3)
    prompts[5], prompts[17] = None, ""
    source = tmp_path / "in"
    source.mkdir()
    for part in range(2):  # several files and row groups, as a real archive has
        rows = range(part * 60, part * 60 + 60)
        pq.write_table(
            pa.table({"id": list(rows), "prompt": [prompts[i] for i in rows]}),
            source / f"part-{part}.parquet",
            row_group_size=20,
        )
    out = tmp_path / "out"
    summary = run(str(source), str(out), router=str(tiny_router_dir), strong_pct=0.5, batch_size=32)

    table = pq.read_table(out).to_pandas().sort_values("id")
    assert table["id"].tolist() == list(range(120))
    bad = table[table["id"].isin([5, 17])]
    assert bad["route"].isna().all() and bad["strong_win_rate"].isna().all()
    assert set(bad["error"]) == {"prompt is null", "prompt is empty"}

    good = table[~table["id"].isin([5, 17])]
    expected = load_router(tiny_router_dir).score(good["prompt"].tolist())
    np.testing.assert_allclose(good["strong_win_rate"].to_numpy(), expected, rtol=1e-6)
    threshold = summary["threshold"]
    assert (good["route"] == np.where(expected >= threshold, "strong", "weak")).all()
    # Calibrated on the input itself (the prompts repeat, and copies route together).
    assert_calibrated(expected, summary, 0.5)

    prices = Prices()
    strong = good[good["route"] == "strong"]
    tokens = strong["prompt"].str.len() // 4
    np.testing.assert_allclose(strong["estimated_cost"], prices.strong.cost(tokens.to_numpy()))

    written = json.loads((out / SUMMARY_FILE).read_text())
    assert written == summary
    assert (written["rows"], written["errors"]) == (120, 2)
    assert written["strong"] + written["weak"] == 118
    assert written["estimated_cost_usd"] < written["all_strong_cost_usd"]
    assert_throughput(written, rows=120, files=2)

    # The same job again finds every file published: nothing is redone or repeated. The totals
    # cover the whole output; the throughput, only what this run did (nothing).
    again = run(str(source), str(out), router=str(tiny_router_dir), strong_pct=0.5, batch_size=32)
    assert pq.read_table(out).num_rows == 120
    assert without_timing(again) == without_timing(summary)
    assert_throughput(again, rows=0, files=0)

    # Other settings would mix two jobs' rows in one output: refused unless told to overwrite.
    with pytest.raises(JobConflict, match="threshold"):
        run(str(source), str(out), router=str(tiny_router_dir), threshold=0.9)
    fresh = run(str(source), str(out), router=str(tiny_router_dir), threshold=0.9, overwrite=True)
    assert pq.read_table(out).num_rows == 120
    assert fresh["threshold"] == 0.9 and fresh["strong"] + fresh["weak"] == 118
    assert_throughput(fresh, rows=120, files=2)


def test_route_job_rejects_a_bad_threshold(local_ray, tmp_path: Path, tiny_router_dir: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["hello"]}), source)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        run(str(source), str(tmp_path / "out"), router=str(tiny_router_dir), threshold=1.5)


def test_load_options_reach_every_actor_and_the_job_record(
    local_ray, tmp_path: Path, tiny_router_dir: Path
):
    prompts = generate_prompts(40, seed=5)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(40)), "prompt": prompts}), source, row_group_size=10)
    out = tmp_path / "out"
    options = {"weak_model": "other-model"}
    run(str(source), str(out), router=str(tiny_router_dir), load_options=options, threshold=0.5)
    table = pq.read_table(out).to_pandas().sort_values("id")
    expected = load_router(tiny_router_dir, **options).score(prompts)
    np.testing.assert_allclose(table["strong_win_rate"].to_numpy(), expected, rtol=1e-6)
    assert not np.allclose(expected, load_router(tiny_router_dir).score(prompts))
    # Results of one pair are never resumed as another's.
    with pytest.raises(JobConflict, match="load_options"):
        run(str(source), str(out), router=str(tiny_router_dir), threshold=0.5)
