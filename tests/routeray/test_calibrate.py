"""`routeray calibrate`: print a threshold, or record a probability curve and thresholds by
strong share in a router directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from routeray.cli import app
from routers import load_router, read_config, router_path
from routers.decision.probability import CalibratedRouter, uncalibrated
from routers.thresholds import resolve_threshold

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def router_dir(tmp_path: Path, tiny_router_dir: Path) -> Path:
    directory = tmp_path / "router"
    shutil.copytree(tiny_router_dir, directory)
    return directory


def _prompts(directory: Path, name: str, prompts: list[str | None]) -> Path:
    path = directory / name
    pq.write_table(pa.table({"prompt": prompts}), path)
    return path


def test_write_records_thresholds_for_every_share(router_dir: Path, tmp_path: Path):
    first = [f"question number {i}: explain topic {i % 7} in detail" for i in range(120)]
    # The second file repeats every prompt of the first, as a benchmark file holds one row per
    # model's answer: --unique-prompts counts each once.
    a = _prompts(tmp_path, "a.parquet", [*first, None])
    b = _prompts(tmp_path, "b.parquet", first[:60] * 3)
    weights = (router_dir / "model.safetensors").read_bytes()
    result = invoke(
        "calibrate", "--router", router_dir, "--input", a, "--input", b, "--unique-prompts",
        "--write", "--no-embedding-cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "sends 30.0% of 120 prompts" in result.output
    printed = float(result.output.strip().splitlines()[-1])
    metadata = read_config(router_dir)["metadata"]
    assert metadata["default_threshold"] == printed == metadata["share_thresholds"]["0.30"]
    assert len(metadata["share_thresholds"]) == 99
    assert metadata["calibration"]["n"] == 120 and metadata["calibration"]["strong_pct"] == 0.3
    assert metadata["calibration"]["prompts"] == [str(a), str(b)]
    assert metadata["calibration"]["scores"] == "raw"
    assert (router_dir / "model.safetensors").read_bytes() == weights
    scores = load_router(router_dir).score(first)
    assert np.mean(scores >= resolve_threshold(router_dir)) == pytest.approx(0.3)
    t10 = resolve_threshold(router_dir, strong_pct=0.1)
    assert np.mean(scores >= t10) == pytest.approx(0.1)


def test_without_write_nothing_is_recorded(router_dir: Path, tmp_path: Path):
    source = _prompts(tmp_path, "p.parquet", [f"prompt {i} about {i % 5}" for i in range(50)])
    before = (router_dir / "config.json").read_text()
    result = invoke("calibrate", "--router", router_dir, "--input", source, "--strong-pct", "0.2")
    assert result.exit_code == 0, result.output
    assert "sends 20.0% of 50 prompts" in result.output
    assert (router_dir / "config.json").read_text() == before


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --input"),
        (["--fit-probability", "--write"], "need --input"),
        (["--input", "x.parquet", "--strong-pct", "1.5"], "fraction in [0, 1]"),
    ],
)
def test_incomplete_requests_are_refused(router_dir: Path, args: list[str], message: str):
    result = invoke("calibrate", "--router", router_dir, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_fitting_needs_to_know_what_the_router_trained_on(router_dir: Path, tmp_path: Path):
    # The tiny router records no training sources, so no labelled source is known unseen.
    result = invoke(
        "calibrate", "--router", router_dir, "--fit-probability", "--train-dir", tmp_path
    )
    assert result.exit_code == 2, result.output
    assert "does not record its training sources" in result.output


@pytest.mark.shared_data
@pytest.mark.slow
def test_fit_probability_then_thresholds_on_the_calibrated_scores(
    shared_data_dir: Path, tmp_path: Path
):
    directory = tmp_path / "fast"
    shutil.copytree(router_path("fast"), directory)
    document = json.loads((directory / "config.json").read_text())
    document.pop("probability", None)
    (directory / "config.json").write_text(json.dumps(document))
    users = shared_data_dir.parent / "corpora" / "real_user_prompts.parquet"
    result = invoke(
        "calibrate", "--router", directory, "--fit-probability", "--train-dir",
        shared_data_dir / "train", "--input", users, "--write",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "xstest_v2: 450 prompts" in result.output  # an unseen source, held out
    assert "mmlu_pro:" not in result.output  # the router trained on it
    router = load_router(directory)
    assert isinstance(router, CalibratedRouter)
    assert set(router.probability.fitted_on["sources"]) >= {"xstest_v2", "zeroeval_crux"}
    prompts = pq.read_table(users, columns=["prompt"]).column(0).to_pylist()
    scores = router.score(prompts)
    assert np.mean(scores >= resolve_threshold(directory)) == pytest.approx(0.3, abs=0.001)
    # The thresholds are in probability units: the raw scores' band would route otherwise.
    raw = uncalibrated(router).score(prompts)
    assert np.mean(raw >= resolve_threshold(directory)) != pytest.approx(0.3, abs=0.05)
