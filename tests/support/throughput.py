"""The throughput fields every batch job's summary carries (batch_jobs.commit.RunTiming)."""

from __future__ import annotations

from typing import Any

import pytest

# startup_s: the route job's time before its pipeline starts (listing, footers, threshold).
TIMING_FIELDS = ("rows_processed", "files_processed", "elapsed_s", "rows_per_s", "startup_s")


def assert_throughput(summary: dict[str, Any], rows: int, files: int) -> None:
    """This run processed `rows` rows in `files` files; the rate is those rows over the time."""
    assert summary["rows_processed"] == rows
    assert summary["files_processed"] == files
    assert summary["elapsed_s"] >= 0
    if rows:
        assert summary["elapsed_s"] > 0 and summary["rows_per_s"] > 0
        expected = rows / summary["elapsed_s"]
        assert summary["rows_per_s"] == pytest.approx(expected, rel=1e-3, abs=0.01)
    else:
        # Nothing to do (every file was published by an earlier run): no rate to report.
        assert summary["rows_per_s"] is None


def without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's totals, which a rerun of a finished job reproduces exactly."""
    return {key: value for key, value in summary.items() if key not in TIMING_FIELDS}
