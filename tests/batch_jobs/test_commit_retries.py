"""Exactly-once when Ray retries a write task: the commit sink, driven directly with a real
tracker actor, publishes a file whose first publisher died at any point of publishing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs import commit
from batch_jobs.commit import STAGING_DIR, CommitSink, CommitTracker
from batch_jobs.inputs import ROW_COLUMN, SOURCE_COLUMN
from batch_jobs.storage import locate

pytestmark = pytest.mark.slow

FILE = "day=01/part-0.parquet"
BLOCK = pa.table({"id": [10, 11, 12, 13], SOURCE_COLUMN: [FILE] * 4, ROW_COLUMN: [0, 1, 2, 3]})


class WorkerDied(Exception):
    pass


def sink_and_tracker(tmp_path: Path):
    import ray

    tracker = ray.remote(CommitTracker).remote({FILE: 4}, 0, 1)
    return CommitSink(locate(str(tmp_path / "out")), tracker, lambda t: {"rows": t.num_rows})


def died_before_publishing(*args, **kwargs):
    raise WorkerDied


def assert_published_once(tmp_path: Path, sink: CommitSink) -> None:
    import ray

    out = tmp_path / "out"
    assert pq.read_table(out / FILE).column("id").to_pylist() == [10, 11, 12, 13]
    assert ray.get(sink.tracker.unpublished.remote()) == []
    assert ray.get(sink.tracker.published.remote(FILE)) is None
    assert not list((out / STAGING_DIR).glob("*.parquet")), "staging pieces were left behind"


def test_a_retry_publishes_what_a_dead_first_try_completed(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sink = sink_and_tracker(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(commit, "publish", died_before_publishing)
        with pytest.raises(WorkerDied):
            sink.write([BLOCK], None)
    assert not (tmp_path / "out" / FILE).exists()
    # Ray runs the task again on the same block.
    assert sink.write([BLOCK], None) == 4
    assert_published_once(tmp_path, sink)


def test_a_retry_after_the_file_was_published_only_tidies_up(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sink = sink_and_tracker(tmp_path)
    publish = CommitSink._publish

    def published_then_died(self, relative, complete):
        publish(self, relative, complete)
        raise WorkerDied

    with monkeypatch.context() as patch:
        patch.setattr(CommitSink, "_publish", published_then_died)
        with pytest.raises(WorkerDied):
            sink.write([BLOCK], None)
    first = (tmp_path / "out" / FILE).stat().st_mtime_ns
    assert sink.write([BLOCK], None) == 4
    assert_published_once(tmp_path, sink)
    assert (tmp_path / "out" / FILE).stat().st_mtime_ns == first, "published twice"
