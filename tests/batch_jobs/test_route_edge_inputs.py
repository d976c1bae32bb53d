"""Exactly-once at the edges, into a local filesystem: an archive with an empty file and files
of different schemas, a job killed midway (half-written temporary files left behind) and run
again. Every row comes out once, every input has its output, and no leftovers stay.

The archive is read from the loopback S3, so that the kill can be certain to land midway: the
reads of the last file the job routes are held until it is dead."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs.commit import STAGING_DIR
from batch_jobs.route import run
from routeray.demo.prompts import generate_prompts
from tests.support.jobs import driver_env, kill_job, running_job, wait_until
from tests.support.throughput import assert_throughput

pytestmark = pytest.mark.slow

ROWS = 20


def write_archive(source: Path) -> dict[str, int]:
    """Relative path -> rows: plain files, one empty file, one with an extra column, one whose
    ids are strings."""
    prompts = generate_prompts(6 * ROWS, seed=21)
    counts = {}
    for i in range(6):
        rows = range(i * ROWS, (i + 1) * ROWS)
        columns = {"id": list(rows), "prompt": [prompts[r] for r in rows]}
        if i == 2:
            columns = {"id": [], "prompt": []}
        if i == 3:
            columns["tenant"] = [f"t{r % 3}" for r in rows]
        if i == 4:
            columns["id"] = [str(r) for r in rows]
        name = f"day={i:02d}/part-0.parquet"
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            columns,
            schema=pa.schema([("id", pa.int64()), ("prompt", pa.string())]) if i == 2 else None,
        )
        pq.write_table(table, source / name, row_group_size=10)
        counts[name] = len(table)
    return counts


def visible_outputs(out: Path) -> list[Path]:
    return sorted(
        p
        for p in out.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(out).parts)
    )


def test_killed_local_job_with_empty_and_mixed_schema_files_reruns_exactly_once(
    local_ray, local_s3, tmp_path: Path, tiny_router_dir: Path
):
    source, out = tmp_path / "in", tmp_path / "out"
    counts = write_archive(source)
    bucket = local_s3.bucket()
    for name in counts:
        local_s3.client().put_object(
            Bucket=bucket, Key=f"in/{name}", Body=(source / name).read_bytes()
        )
    args = [
        "batch", "route", "--input", f"s3://{bucket}/in/", "--output", str(out),
        "--s3-endpoint", local_s3.endpoint,
        "--router", str(tiny_router_dir), "--threshold", "0.5", "--batch-size", "8",
    ]  # fmt: skip
    # The driver signs with a key of its own, the cluster's workers with this process's (they
    # inherited its environment): the hold stops the workers' reads of the string-id file, the
    # last pass's only file, and lets the driver read its footer when the job starts.
    workers_key = os.environ["AWS_ACCESS_KEY_ID"]
    env = {**driver_env(local_ray), "AWS_ACCESS_KEY_ID": "routeray-driver"}
    empty, held = "day=02/part-0.parquet", "day=04/part-0.parquet"
    with (
        local_s3.faults.hold(f"in/{held}", access_key=workers_key),
        running_job(args, env) as job,
    ):

        def routed() -> bool:
            assert job.poll() is None, "the job ended before it routed a file"
            return any(p != out / empty for p in visible_outputs(out))

        # The empty file is published as the job starts, before anything is routed.
        wait_until(routed, "the job to publish a routed file")
        kill_job(job, local_ray)
    before = {p: p.stat().st_mtime_ns for p in visible_outputs(out)}
    assert 0 < len(before) < len(counts), "the kill should land midway"
    assert out / empty in before and out / held not in before
    # What a killed writer leaves on a local disk: a half-written hidden temporary file.
    leftover = out / "day=05" / ".part-0.parquet.0123abcd.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"PAR1 half a file")

    summary = run(
        f"s3://{bucket}/in/",
        str(out),
        router=str(tiny_router_dir),
        threshold=0.5,
        batch_size=8,
        s3_endpoint=local_s3.endpoint,
    )

    outputs = visible_outputs(out)
    assert [p.relative_to(out).as_posix() for p in outputs] == sorted(counts)
    for path in outputs:
        table = pq.read_table(path)
        relative = path.relative_to(out).as_posix()
        assert table.num_rows == counts[relative]
        # Each file keeps its own columns and types, the routing columns added.
        source_schema = pq.read_schema(source / relative)
        for field in source_schema:
            assert table.schema.field(field.name).type == field.type
        assert {"route", "strong_win_rate"} <= set(table.column_names)
    ids = [str(i) for p in outputs for i in pq.read_table(p).column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == sum(counts.values())
    assert summary["rows"] == sum(counts.values())
    # The rerun routed only what the kill left unpublished.
    left = [p.relative_to(out).as_posix() for p in outputs if p not in before]
    assert_throughput(summary, rows=sum(counts[r] for r in left), files=len(left))
    # Files published before the kill were kept, and nothing half-done is left anywhere.
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in before.items())
    assert not list(out.rglob("*.tmp")) and not (out / STAGING_DIR).exists()
