"""A small file routed whole (issue 29): written straight to its output, a row group at a time,
with the same rows and totals as the staged path, once, whatever dies where."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs.commit import STAGING_DIR, STATS_KEY, CommitTracker, Stager, summed_stats
from batch_jobs.inputs import (
    ROW_COLUMN,
    SOURCE_COLUMN,
    WHOLE_FILE,
    inspect_inputs,
    iter_file_rows,
    work_units,
)
from batch_jobs.storage import locate

pytestmark = pytest.mark.slow

FILE = "day=01/part-0.parquet"


class WorkerDied(Exception):
    pass


def stats(table: pa.Table) -> dict[str, float]:
    return {"rows": table.num_rows, "id_sum": float(sum(table.column("id").to_pylist()))}


def archive(tmp_path: Path) -> Path:
    source = tmp_path / "in" / FILE
    source.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": list(range(10))}), source, row_group_size=4)
    pq.write_table(pa.table({"id": list(range(100, 130))}), tmp_path / "in" / "big.parquet")
    return tmp_path / "in"


def test_small_files_are_whole_units_and_big_ones_row_groups(tmp_path: Path):
    files = inspect_inputs(locate(str(archive(tmp_path))), "id")
    units = work_units(files, whole_file_rows=10)
    assert [(u["relative"], u["row_group"], u["rows"]) for u in units] == [
        ("big.parquet", 0, 30),
        (FILE, WHOLE_FILE, 10),
    ]
    # A whole file is read a row group at a time, tagged as row groups are.
    (whole,) = [u for u in units if u["row_group"] == WHOLE_FILE]
    groups = list(iter_file_rows(locate(str(tmp_path)).fs, whole))
    assert [g.num_rows for g in groups] == [4, 4, 2]
    assert pa.concat_tables(groups).column(ROW_COLUMN).to_pylist() == list(range(10))
    assert set(pa.concat_tables(groups).column(SOURCE_COLUMN).to_pylist()) == {FILE}


def test_a_whole_file_is_published_once_with_its_totals(local_ray, tmp_path: Path):
    ray = local_ray
    source = archive(tmp_path)
    fs = locate(str(tmp_path)).fs
    files = {f.relative: f for f in inspect_inputs(locate(str(source)), "id")}
    (unit,) = [u for u in work_units([files[FILE]], whole_file_rows=10)]
    tracker = ray.remote(CommitTracker).remote({FILE: 10}, 0, 1)
    stager = Stager(locate(str(tmp_path / "out")), tracker, stats)
    consumed: list[int] = []

    def routed(die_after: int | None = None) -> Iterator[pa.Table]:
        for i, table in enumerate(iter_file_rows(fs, unit)):
            if die_after is not None and i == die_after:
                raise WorkerDied
            consumed.append(table.num_rows)
            yield table.append_column("doubled", pa.compute.multiply(table.column("id"), 2))

    # A worker that dies midway publishes nothing and leaves nothing visible.
    with pytest.raises(WorkerDied):
        stager.publish_whole(FILE, 10, routed(die_after=2))
    out = tmp_path / "out"
    assert not (out / FILE).exists()
    assert ray.get(tracker.unpublished.remote()) == [FILE]

    assert stager.publish_whole(FILE, 10, routed()) == 10
    table = pq.read_table(out / FILE)
    assert table.column_names == ["id", "doubled"]
    assert table.column("id").to_pylist() == list(range(10))
    assert ray.get(tracker.unpublished.remote()) == []
    assert not list(out.rglob(f"{STAGING_DIR}/*.parquet"))
    # The totals are in the footer, summed over the row groups, where the summary reads them.
    footer = pq.ParquetFile(out / FILE).metadata.metadata
    assert STATS_KEY in footer
    assert summed_stats(locate(str(out)), [files[FILE]]) == {"rows": 10, "id_sum": 45.0}

    # Run again (Ray retried the task): the file is neither routed nor written again.
    first, consumed[:] = (out / FILE).stat().st_mtime_ns, []
    assert stager.publish_whole(FILE, 10, routed()) == 10
    assert consumed == [] and (out / FILE).stat().st_mtime_ns == first


def test_a_short_file_is_refused_before_it_is_published(local_ray, tmp_path: Path):
    tracker = local_ray.remote(CommitTracker).remote({FILE: 10}, 0, 1)
    stager = Stager(locate(str(tmp_path / "out")), tracker, stats)
    rows = pa.table({"id": [1, 2], SOURCE_COLUMN: [FILE] * 2, ROW_COLUMN: [0, 1]})
    with pytest.raises(RuntimeError, match="2 rows read of its 10"):
        stager.publish_whole(FILE, 10, iter([rows]))
    assert not (tmp_path / "out" / FILE).exists()


def test_an_earlier_jobs_totals_in_the_input_are_replaced(local_ray, tmp_path: Path):
    """Routing an archive that is itself a job's output: its schema carries that job's totals,
    which must not survive beside the new ones."""
    tracker = local_ray.remote(CommitTracker).remote({FILE: 2}, 0, 1)
    stager = Stager(locate(str(tmp_path / "out")), tracker, stats)
    rows = pa.table({"id": [1, 2], SOURCE_COLUMN: [FILE] * 2, ROW_COLUMN: [0, 1]})
    rows = rows.replace_schema_metadata({STATS_KEY: b'{"rows": 99}', b"kept": b"yes"})
    assert stager.publish_whole(FILE, 2, iter([rows])) == 2
    written = pq.ParquetFile(tmp_path / "out" / FILE)
    assert written.schema_arrow.metadata == {b"kept": b"yes"}
    assert json.loads(written.metadata.metadata[STATS_KEY]) == {"rows": 2, "id_sum": 3.0}
