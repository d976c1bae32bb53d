"""The batch jobs' building blocks without Ray: storage, input inspection, commits, config."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs.commit import (
    JOB_FILE,
    CommitTracker,
    JobConflict,
    open_job,
    publish,
    published,
    record_job,
    summed_stats,
)
from batch_jobs.generate import GenerateConfig
from batch_jobs.inputs import ROW_COLUMN, SOURCE_COLUMN, InputError, inspect_inputs, work_units
from batch_jobs.storage import locate, s3_filesystem, write_table_atomic

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, table: pa.Table, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kwargs)


def test_inputs_are_listed_inspected_and_cut_into_row_groups(tmp_path: Path):
    write(tmp_path / "b" / "x.parquet", pa.table({"prompt": ["a", "b", "c"]}), row_group_size=2)
    write(tmp_path / "a.parquet", pa.table({"prompt": ["d"], "id": [1]}))
    write(tmp_path / "_tmp" / "skip.parquet", pa.table({"prompt": ["hidden"]}))
    write(tmp_path / ".staging" / "skip.parquet", pa.table({"prompt": ["hidden"]}))
    (tmp_path / "notes.txt").write_text("not parquet")

    files = inspect_inputs(locate(str(tmp_path)), "prompt")
    assert [f.relative for f in files] == ["a.parquet", "b/x.parquet"]
    assert [f.row_groups for f in files] == [(1,), (2, 1)]
    assert files[0].columns == (("prompt", "string"), ("id", "int64"))
    units = work_units(files)
    assert [(u["relative"], u["row_group"], u["offset"]) for u in units] == [
        ("a.parquet", 0, 0),
        ("b/x.parquet", 0, 0),
        ("b/x.parquet", 1, 2),
    ]
    # A single file is its own root.
    (single,) = inspect_inputs(locate(str(tmp_path / "a.parquet")), "prompt")
    assert single.relative == "a.parquet"


def test_bad_inputs_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        inspect_inputs(locate(str(tmp_path / "missing")), "prompt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Parquet files"):
        inspect_inputs(locate(str(tmp_path / "empty")), "prompt")
    write(tmp_path / "in" / "ok.parquet", pa.table({"text": ["a"]}))
    with pytest.raises(InputError, match=r"ok\.parquet: no column 'prompt' \(columns: text\)"):
        inspect_inputs(locate(str(tmp_path / "in")), "prompt")
    (tmp_path / "in" / "ok.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(InputError, match=r"ok\.parquet: not a readable Parquet file"):
        inspect_inputs(locate(str(tmp_path / "in")), "prompt")
    with pytest.raises(ValueError, match="unsupported location"):
        locate("gs://bucket/x")


def test_atomic_write_leaves_only_the_finished_file(tmp_path: Path):
    target = locate(str(tmp_path / "out" / "part.parquet"))
    table = pa.table({"x": [1, 2]})
    write_table_atomic(target, [table, table], table.schema)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part.parquet"]
    assert pq.read_table(tmp_path / "out" / "part.parquet")["x"].to_pylist() == [1, 2, 1, 2]

    other = locate(str(tmp_path / "out" / "other.parquet"))
    with pytest.raises(AttributeError):  # a writer that fails midway publishes nothing
        write_table_atomic(other, [table, "not a table"], table.schema)  # type: ignore[list-item]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part.parquet"]


def test_publish_restores_input_order_and_records_totals(tmp_path: Path):
    output = locate(str(tmp_path / "out"))
    pieces = [
        pa.table({"v": ["c", "d"], SOURCE_COLUMN: ["f", "f"], ROW_COLUMN: [2, 3]}),
        pa.table({"v": ["a", "b"], SOURCE_COLUMN: ["f", "f"], ROW_COLUMN: [0, 1]}),
    ]
    publish(output, "sub/f.parquet", pieces, lambda t: {"rows": t.num_rows, "cost": 0.5})
    table = pq.read_table(tmp_path / "out" / "sub" / "f.parquet")
    assert table.column_names == ["v"] and table["v"].to_pylist() == ["a", "b", "c", "d"]
    assert published(output) == {"sub/f.parquet"}

    class File:
        relative = "sub/f.parquet"

    assert summed_stats(output, [File(), File()]) == {"rows": 8, "cost": 1.0}


def test_tracker_completes_a_file_once_all_its_rows_are_staged():
    tracker = CommitTracker({"a": 5, "b": 2}, already_done=0, total=2)
    assert tracker.add("a", 3, "p1") is None
    assert tracker.add("b", 2, "p2") == ["p2"]
    assert tracker.add("a", 2, "p3") == ["p1", "p3"]
    # A retried write task restages the same piece: counted once. While the file is not
    # published (its publisher may have died) the retry is told to publish it...
    assert tracker.add("a", 2, "p3") == ["p1", "p3"]
    assert tracker.add("a", 3, "p1") == ["p1", "p3"]
    assert tracker.unpublished() == ["a", "b"]
    tracker.published("a")
    tracker.published("a")
    assert tracker.done == 1 and tracker.unpublished() == ["b"]
    # ...and once it is, never again.
    assert tracker.add("a", 2, "p3") is None
    assert tracker.add("a", 1, "p9") is None
    tracker = CommitTracker({"c": 2}, already_done=0, total=1)
    assert tracker.add("c", 1, "q1") is None and tracker.add("c", 1, "q1") is None
    with pytest.raises(RuntimeError, match="more rows staged"):
        tracker.add("c", 2, "q2")


def test_a_job_record_guards_the_output(tmp_path: Path):
    output = locate(str(tmp_path / "out"))
    identity = {"job": "route", "threshold": 0.5}
    assert open_job(output, identity, overwrite=False) is None
    record_job(output, identity, threshold_used=0.5)
    assert open_job(output, identity, overwrite=False)["threshold_used"] == 0.5
    with pytest.raises(JobConflict, match=r"other settings \(threshold\)"):
        open_job(output, {**identity, "threshold": 0.7}, overwrite=False)
    (tmp_path / "out" / "old.parquet").write_bytes(b"x")
    assert open_job(output, {**identity, "threshold": 0.7}, overwrite=True) is None
    assert not (tmp_path / "out" / JOB_FILE).exists()
    assert not (tmp_path / "out" / "old.parquet").exists()


def test_s3_endpoint_comes_from_the_flag_or_the_aws_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert "127.0.0.1:9" in repr(s3_filesystem().__reduce__())
    assert "10.0.0.1:4566" in repr(s3_filesystem("http://10.0.0.1:4566").__reduce__())


def test_generate_config_reads_a_serve_config_file():
    config = GenerateConfig.from_yaml(REPO / "serve_config.yaml")
    assert config.strong.model == "gpt-4-1106-preview"
    assert config.weak.kind == "vllm" and Path(config.weak.model_path).is_absolute()
    assert config.prices.strong.input_per_million == 10.0
    assert config.strong_stage.requests_per_s > 0


def test_generate_config_takes_limits(tmp_path: Path):
    path = tmp_path / "generate.yaml"
    path.write_text(
        "strong: {model: big, base_url: 'http://127.0.0.1:1/v1'}\n"
        "weak: {kind: openai, model: small, base_url: 'http://127.0.0.1:2/v1'}\n"
        "strong_stage: {requests_per_s: 2.5, concurrency: 3, num_actors: 1}\n"
        "max_tokens: 64\n"
    )
    config = GenerateConfig.from_yaml(path)
    assert (config.strong_stage.requests_per_s, config.strong_stage.concurrency) == (2.5, 3)
    assert config.weak.kind == "openai" and config.max_tokens == 64
    path.write_text("strong: {model: big, base_url: x}\nweak: {kind: nope}\n")
    with pytest.raises(ValueError, match="weak"):
        GenerateConfig.from_yaml(path)
