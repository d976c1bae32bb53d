"""A fresh clone without ../shared/data passes its tests with the shared-data checks skipped and
told how to enable them; under CI the same missing directory is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The cheapest module that needs the data: reading the eval files, no embedding.
MODULE = "tests/routers/evaluation/test_shared_eval_data.py"


def run_without_data(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["ROUTERAY_DATA_DIR"] = str(tmp_path / "no-data-here")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", MODULE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_without_data_the_checks_skip_and_say_how_to_enable_them(tmp_path: Path):
    result = run_without_data(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " skipped" in result.stdout and " passed" not in result.stdout, result.stdout
    assert "set ROUTERAY_DATA_DIR to enable these checks" in result.stdout
    assert str(tmp_path / "no-data-here") in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_missing_data_fails(tmp_path: Path, ci: str):
    result = run_without_data(tmp_path, ci=ci)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CI=true requires it" in result.stdout
    assert " skipped" not in result.stdout
