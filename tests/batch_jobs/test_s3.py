"""The route job against a real S3 HTTP API on loopback: S3 in and out, bad input, and a job
killed midway whose rerun holds every input row exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batch_jobs.commit import SUMMARY_FILE
from batch_jobs.inputs import InputError
from batch_jobs.route import run
from batch_jobs.storage import s3_filesystem
from routeray.cli import app
from routers.prompts import MAX_PROMPT_CHARS
from tests.support.jobs import kill_midway, published, route_archive_args
from tests.support.local_s3 import put_archive, put_table
from tests.support.shares import assert_calibrated
from tests.support.throughput import assert_throughput

pytestmark = pytest.mark.slow


def read_results(s3, bucket: str, prefix: str) -> pa.Table:
    """Every result file under the prefix, read the way any Parquet reader would."""
    fs = s3_filesystem(s3.endpoint)
    return pq.read_table(f"{bucket}/{prefix}", filesystem=fs)


def test_cli_routes_s3_to_s3_with_bad_rows(
    local_ray, local_s3, tiny_router_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    bucket = local_s3.bucket()
    put_archive(local_s3, bucket, files=3, rows=30)
    # Rows that cannot be routed: oversized, and a file whose prompt column is not text.
    put_table(
        local_s3,
        bucket,
        "in/odd/long.parquet",
        pa.table({"id": [1000, 1001], "prompt": ["x" * (MAX_PROMPT_CHARS + 1), "fine prompt"]}),
    )
    put_table(local_s3, bucket, "in/odd/ints.parquet", pa.table({"id": [2000], "prompt": [7]}))

    result = CliRunner().invoke(
        app,
        [
            "batch", "route",
            "--input", f"s3://{bucket}/in/",
            "--output", f"s3://{bucket}/out/",
            "--s3-endpoint", local_s3.endpoint,
            "--router", str(tiny_router_dir),
            "--strong-pct", "0.3",
            "--batch-size", "16",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    table = read_results(local_s3, bucket, "out").to_pandas().set_index("id").sort_index()
    assert table.index.tolist() == [*range(90), 1000, 1001, 2000]
    assert table.loc[1000, "error"].startswith("prompt is too long")
    assert table.loc[2000, "error"] == "prompt is not a string (got int64)"
    assert table.loc[[1000, 2000], "strong_win_rate"].isna().all()
    assert table.loc[1001, "route"] in {"strong", "weak"}
    # Output mirrors the input's layout, one file per input file, hive partitions kept.
    listing = local_s3.client().list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]
    # (pyarrow leaves an empty "out/" directory marker after deleting the staging area.)
    keys = sorted(o["Key"] for o in listing if not o["Key"].endswith("/"))
    assert keys == [
        "out/_JOB.json",
        "out/_SUMMARY.json",
        "out/day=00/part-0.parquet",
        "out/day=01/part-0.parquet",
        "out/day=02/part-0.parquet",
        "out/odd/ints.parquet",
        "out/odd/long.parquet",
    ]
    body = local_s3.client().get_object(Bucket=bucket, Key=f"out/{SUMMARY_FILE}")["Body"].read()
    summary = json.loads(body)
    assert (summary["rows"], summary["errors"]) == (93, 2)
    assert summary["strong"] + summary["weak"] == 91
    # Calibrated on the 91 usable rows.
    assert_calibrated(table["strong_win_rate"].dropna(), summary, 0.3)
    assert_throughput(summary, rows=93, files=5)


def test_bad_files_stop_the_job_naming_file_and_column(local_ray, local_s3, tiny_router_dir: Path):
    bucket = local_s3.bucket()
    put_archive(local_s3, bucket, files=1, rows=10)
    put_table(local_s3, bucket, "in/other.parquet", pa.table({"text": ["hello"]}))
    with pytest.raises(InputError, match=r"s3://.*/in/other\.parquet: no column 'prompt'"):
        run(f"s3://{bucket}/in", f"s3://{bucket}/out", router=str(tiny_router_dir),
            s3_endpoint=local_s3.endpoint)  # fmt: skip

    local_s3.client().put_object(Bucket=bucket, Key="in/other.parquet", Body=b"not parquet")
    with pytest.raises(InputError, match=r"in/other\.parquet: not a readable Parquet file"):
        run(f"s3://{bucket}/in", f"s3://{bucket}/out", router=str(tiny_router_dir),
            s3_endpoint=local_s3.endpoint)  # fmt: skip
    # Nothing was routed, so nothing is published.
    listing = local_s3.client().list_objects_v2(Bucket=bucket, Prefix="out/")
    assert not [o for o in listing.get("Contents", []) if o["Key"].endswith(".parquet")]


def test_killed_job_reruns_to_every_row_exactly_once(local_ray, local_s3, tiny_router_dir: Path):
    bucket = local_s3.bucket()
    files, rows = 4, 20
    put_archive(local_s3, bucket, files=files, rows=rows)
    args = route_archive_args(local_s3, bucket, tiny_router_dir)
    # However fast the job, its last file cannot be published before the kill: its upload is
    # held, then failed once the job is dead.
    last = f"out/day={files - 1:02d}/"
    with local_s3.faults.hold(last):
        done_before = kill_midway(local_ray, local_s3, bucket, args)
    assert 0 < len(done_before) < files, "the kill should land midway"
    assert not any(key.startswith(last) for key in done_before)

    # What a reader sees after the kill is whole files only, never a partial one.
    partial = read_results(local_s3, bucket, "out").to_pandas()
    assert sorted(partial.groupby("day").size().tolist()) == [rows] * len(done_before)

    summary = run(
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        router=str(tiny_router_dir),
        threshold=0.5,
        batch_size=8,
        s3_endpoint=local_s3.endpoint,
    )
    table = read_results(local_s3, bucket, "out").to_pandas()
    assert sorted(table["id"]) == list(range(files * rows))
    assert summary["rows"] == files * rows
    assert len(published(local_s3, bucket)) == files
    # The rate is this run's: only the rows of files the kill left unpublished.
    assert_throughput(
        summary, rows=(files - len(done_before)) * rows, files=files - len(done_before)
    )
    # Files finished before the kill were kept, not redone.
    after = published(local_s3, bucket)
    assert all(after[key] == stamp for key, stamp in done_before.items())
