"""Exactly-once results: one output file per input file, published whole, so a killed job that
is run again skips what is done and neither loses nor repeats a row.

While a job runs, a `Stager` writes each processed block's rows to hidden staging pieces and
tells a small tracker actor how many rows of which input file they hold. The stager that
completes a file merges its pieces in input order into the file's one output (same relative
path as the input), published atomically: an S3 object appears when its upload completes, a
local file is renamed into place. The stager runs in a Ray Data write task (`CommitSink`), or,
for the route job, in the router actors themselves right after each batch, so that files are
published in step with routing (batch_jobs.route.RouteBatch says why). Readers (pyarrow,
Ray Data, Spark) skip hidden names, so partial work is never visible as results. A rerun lists
the published outputs, drops old staging and processes only the files without one.

`_JOB.json` records the job's settings; a rerun with different settings refuses to mix its
rows with the old ones unless told to overwrite. Each output carries its own totals in its
Parquet metadata, so the summary never rereads the rows. The summary's totals cover every
output file, those of earlier runs included; its throughput (`RunTiming`) covers this run only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, pairwise
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from batch_jobs.inputs import (
    ROW_COLUMN,
    SOURCE_COLUMN,
    InputFile,
    read_units,
    unit_dataset,
    work_units,
)
from batch_jobs.storage import Location, visible_files, write_table_atomic

JOB_FILE = "_JOB.json"
SUMMARY_FILE = "_SUMMARY.json"
STAGING_DIR = ".staging"
STATS_KEY = b"routeray.stats"
PIECE_KEY = b"routeray.piece"
WRITE_CPUS = 0.25

logger = logging.getLogger(__name__)

# Per-file totals from a finished output table; stored with the file, summed for the summary.
StatsFn = Callable[[pa.Table], dict[str, float]]


class JobConflict(ValueError):
    """The output holds results of a job with other settings."""


def open_job(output: Location, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Prepare `output` for a job; return what an earlier run of the same job recorded."""
    if overwrite and output.exists():
        output.fs.delete_dir_contents(output.path, missing_dir_ok=True)
    record = output.join(JOB_FILE)
    if not record.exists():
        return None
    recorded = json.loads(record.read_text())
    differing = sorted(
        key
        for key in identity.keys() | recorded.get("identity", {}).keys()
        if identity.get(key) != recorded.get("identity", {}).get(key)
    )
    if differing:
        raise JobConflict(
            f"{output.uri} holds results of a job with other settings ({', '.join(differing)}); "
            "rerun with the same settings to resume, or pass --overwrite to start again"
        )
    return recorded


def record_job(output: Location, identity: dict[str, Any], **extra: Any) -> None:
    output.join(JOB_FILE).write_text(json.dumps({"identity": identity, **extra}, indent=2) + "\n")


def published(output: Location) -> set[str]:
    """Relative paths of the result files already in `output`."""
    return set(visible_files(output)) if output.exists() else set()


def _clear_leftovers(output: Location) -> None:
    """Staging pieces and half-written local files of a run that was killed."""
    staging = output.join(STAGING_DIR)
    if staging.exists():
        output.fs.delete_dir(staging.path)
    if isinstance(output.fs, pafs.LocalFileSystem) and output.exists():
        for entry in output.fs.get_file_info(pafs.FileSelector(output.path, recursive=True)):
            name = entry.base_name
            if entry.type == pafs.FileType.File and name.startswith(".") and name.endswith(".tmp"):
                output.fs.delete_file(entry.path)


class CommitTracker:
    """Ray actor: counts the rows staged per input file and says when a file is complete."""

    def __init__(self, expected: dict[str, int], already_done: int, total: int) -> None:
        self.expected = expected
        self.rows: dict[str, int] = defaultdict(int)
        self.pieces: dict[str, list[str]] = defaultdict(list)
        self.finished: set[str] = set()
        self.publishers_done: set[str] = set()
        self.done = already_done
        self.total = total

    def add(self, relative: str, rows: int, piece: str) -> list[str] | None:
        """The pieces to publish when this one completes the file, else None."""
        # Piece names follow from the rows they hold, so a write task that Ray retries restages
        # the same piece under the same name: count it once.
        if piece in self.pieces[relative]:
            if relative in self.finished and relative not in self.publishers_done:
                # The task that completed the file may have died before publishing it, and
                # this retry may be the only one left to do it; publishing is idempotent.
                return list(self.pieces[relative])
            return None
        if relative in self.finished:
            return None
        self.rows[relative] += rows
        self.pieces[relative].append(piece)
        if self.rows[relative] > self.expected[relative]:
            raise RuntimeError(f"{relative}: more rows staged than the file holds")
        if self.rows[relative] == self.expected[relative]:
            self.finished.add(relative)
            return list(self.pieces[relative])
        return None

    def whole(self, relative: str, rows: int) -> None:
        """`relative` was published from all its rows at once, without pieces."""
        if relative in self.publishers_done:
            return
        if rows != self.expected[relative]:
            raise RuntimeError(
                f"{relative}: {rows} rows published, the file holds {self.expected[relative]}"
            )
        self.finished.add(relative)
        self.published(relative)

    def published(self, relative: str) -> None:
        if relative in self.publishers_done:
            return
        self.publishers_done.add(relative)
        self.done += 1
        logger.info("published %s (%d/%d files done)", relative, self.done, self.total)

    def unpublished(self) -> list[str]:
        """Files with rows still to stage or publish."""
        return sorted(set(self.expected) - self.publishers_done)


def _total_stats(tables: Iterable[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for stats in tables:
        for key, value in stats.items():
            totals[key] += value
    return dict(totals)


def publish(
    output: Location, relative: str, pieces: Sequence[str | pa.Table], stats: StatsFn
) -> None:
    """Merge one input file's rows, in input order, into its output file. `pieces` are staging
    pieces (paths) or tables; pieces hold no more than a batch each and are merged one at a
    time, so publishing a file of any size takes a batch's memory, not the file's."""
    tables = [p for p in pieces if isinstance(p, pa.Table)]
    paths = [p for p in pieces if isinstance(p, str)]
    infos = [_piece_info(output.fs, p) for p in paths]
    order = sorted(range(len(paths)), key=lambda i: infos[i]["first"])
    apart = all(infos[a]["last"] < infos[b]["first"] for a, b in pairwise(order))
    if tables or not apart:
        # Rows of one piece between those of another: sort them all together (a batch that
        # took row groups of one file out of order); or tables already in memory.
        loaded = tables + [pq.read_table(p, filesystem=output.fs) for p in paths]
        _publish_table(output, relative, pa.concat_tables(loaded), stats)
        return
    totals = _total_stats(info["stats"] for info in infos)

    def in_order() -> Iterator[pa.Table]:
        for i in order:
            yield _rows(pq.read_table(paths[i], filesystem=output.fs).sort_by(ROW_COLUMN))

    first = _rows(pq.read_schema(paths[order[0]], filesystem=output.fs).empty_table())
    metadata = {k: v for k, v in (first.schema.metadata or {}).items() if k != PIECE_KEY}
    metadata[STATS_KEY] = json.dumps(totals).encode()
    write_table_atomic(output.join(relative), in_order(), first.schema.with_metadata(metadata))


def _rows(table: pa.Table) -> pa.Table:
    """A table without the columns the job adds while rows are in flight."""
    return table.drop_columns([c for c in (SOURCE_COLUMN, ROW_COLUMN) if c in table.column_names])


def _publish_table(output: Location, relative: str, table: pa.Table, stats: StatsFn) -> None:
    table = _rows(table.sort_by(ROW_COLUMN) if table.num_rows else table)
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != PIECE_KEY}
    metadata[STATS_KEY] = json.dumps(stats(table)).encode()
    write_table_atomic(output.join(relative), [table], table.schema.with_metadata(metadata))


def _piece_info(fs: pafs.FileSystem, piece: str) -> dict[str, Any]:
    """The first and last row and the totals of a staged piece, from its footer."""
    return json.loads((pq.read_schema(piece, filesystem=fs).metadata or {})[PIECE_KEY])


def _storage_failed(exc: BaseException) -> bool:
    # A missing piece is another publisher having finished, not a failure to retry.
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError)


# Object stores fail a share of requests (500, 503 SlowDown, resets) beyond what pyarrow's own
# S3 retries absorb. A write task that failed was retried by Ray Data; the router actors that
# stage their own rows are not, so each write and publish is retried here: both are safe to
# repeat (an upload appears whole or not at all; a piece's name follows from its rows).
_storage_retry = retry(
    retry=retry_if_exception(_storage_failed),
    stop=stop_after_attempt(6),
    wait=wait_exponential(multiplier=0.2, max=5.0),
    reraise=True,
)


class Stager:
    """Stages routed rows and publishes each input file once all its rows are staged: what a
    job's writer does, wherever it runs (a Ray Data write task, `CommitSink`, or the job's own
    actors right after they process a batch, `run_files(commit_in_transform=True)`).

    Picklable: the filesystem, the tracker's handle and the stats function travel to every
    process that stages."""

    def __init__(self, output: Location, tracker: Any, stats: StatsFn) -> None:
        self.output = output
        self.tracker = tracker
        self.stats = stats

    def stage(self, table: pa.Table) -> int:
        """Stage `table`'s rows (publishing the files they complete); the rows staged."""
        import ray

        fs = self.output.fs
        written = 0
        sources = table.column(SOURCE_COLUMN)
        for relative in pc.unique(sources).to_pylist():
            part = table.filter(pc.equal(sources, relative))
            rows = part.column(ROW_COLUMN)
            first, last = pc.min(rows).as_py(), pc.max(rows).as_py()
            name = hashlib.sha1(f"{relative}:{first}:{last}:{len(part)}".encode()).hexdigest()
            piece = self.output.join(STAGING_DIR, f"{name}.parquet").path
            # What publishing needs without reading the rows: where they go, and their totals.
            info = {"first": first, "last": last, "stats": self.stats(_rows(part))}
            metadata = {**(part.schema.metadata or {}), PIECE_KEY: json.dumps(info).encode()}
            _storage_retry(write_table_atomic)(
                Location(fs, piece, piece), [part], part.schema.with_metadata(metadata)
            )
            written += part.num_rows
            complete = ray.get(self.tracker.add.remote(relative, part.num_rows, piece))
            if complete is not None:
                self._publish(relative, complete)
                ray.get(self.tracker.published.remote(relative))
        return written

    def publish_whole(self, relative: str, rows: int, tables: Iterable[pa.Table]) -> int:
        """Publish input file `relative` straight from `tables`, all its `rows` in input order
        (consumed one at a time: the memory of one table), with no staging pieces: one write
        of the rows instead of three (stage, read back, merge). Returns the rows published.

        A file processed whole is redone whole if the job is killed while it is in flight; the
        job keeps such files small enough (`run_files(whole_file_rows=)`). Safe to repeat: a
        file already published is not written again, and `tables` is not consumed."""
        import ray

        target = self.output.join(relative)
        if not target.exists():
            totals: list[dict[str, float]] = []
            written = 0

            def rows_of() -> Iterator[pa.Table]:
                nonlocal written
                for table in tables:
                    part = _rows(table)
                    totals.append(self.stats(part))
                    written += part.num_rows
                    yield part

            stream = rows_of()
            first = next(stream)
            # The input's own totals, if it is an earlier job's output, are not this file's:
            # the footer gets the new ones at the end.
            stale = (PIECE_KEY, STATS_KEY)
            kept = {k: v for k, v in (first.schema.metadata or {}).items() if k not in stale}
            schema = first.schema.with_metadata(kept)

            def footer() -> dict[bytes, bytes]:
                if written != rows:  # never expected; raised here, nothing is published
                    raise RuntimeError(f"{relative}: {written} rows read of its {rows}")
                return {STATS_KEY: json.dumps(_total_stats(totals)).encode()}

            write_table_atomic(
                target, chain([first], stream), schema, footer=footer, upload=_storage_retry
            )
        ray.get(self.tracker.whole.remote(relative, rows))
        return rows

    def _publish(self, relative: str, complete: list[str]) -> None:
        """Publish a file from its pieces; safe to repeat, and to race with a retried task
        doing the same (the file is the same either way, and appears atomically)."""
        fs = self.output.fs
        target = self.output.join(relative)
        if not target.exists():
            try:
                _storage_retry(publish)(self.output, relative, complete, self.stats)
            except FileNotFoundError:
                # Another publisher finished and cleared the pieces meanwhile.
                if not target.exists():
                    raise
        for path in complete:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path)


class CommitSink(Datasink, Stager):
    """Ray Data datasink: a `Stager` in the job's write tasks."""

    def __init__(self, output: Location, tracker: Any, stats: StatsFn) -> None:
        Datasink.__init__(self)
        Stager.__init__(self, output, tracker, stats)

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        from ray.data.block import BlockAccessor

        return sum(self.stage(BlockAccessor.for_block(b).to_arrow()) for b in blocks)


@dataclass(frozen=True)
class RunTiming:
    """What one run of a job processed and how long that took (see `run_files`).

    A resumed run skips the files an earlier run published: their rows count in the summary's
    totals but not here, so `rows_per_s` is this run's rate, never inflated by old work.
    """

    rows: int
    files: int
    elapsed_s: float

    def summary(self) -> dict[str, Any]:
        """The summary's throughput fields; no rate when this run had no rows to process."""
        elapsed = round(self.elapsed_s, 3)
        return {
            "rows_processed": self.rows,
            "files_processed": self.files,
            "elapsed_s": elapsed,
            "rows_per_s": round(self.rows / elapsed, 2) if self.rows and elapsed else None,
        }


def run_files(
    files: list[InputFile],
    output: Location,
    transform: Callable[[Any], Any],
    stats: StatsFn,
    empty_result: Callable[[pa.Table], pa.Table],
    *,
    commits_itself: bool = False,
    whole_file_rows: int = 0,
) -> tuple[dict[str, float], RunTiming]:
    """Process every input file without a published output; return totals over all of them
    and what this run processed, in how long.

    `transform(dataset)` returns the processed rows, which a `CommitSink` writes; with
    `commits_itself`, `transform(units, stager)` is given the work units (`unit_dataset`, a
    row group each), reads their rows where it processes them (`read_unit_rows`), stages them
    itself with the `Stager` it is given and returns a dataset with one int column: the rows
    each batch staged. No row then passes through Ray's object store. A file of at most
    `whole_file_rows` rows is then one unit, which the transform publishes itself
    (`Stager.publish_whole`)."""
    import ray

    # Timed: from here (Ray is up, the inputs are listed, the job's settings and threshold are
    # settled) until the last pending file is published. That is reading the rows, starting
    # the pipeline's actors (a router or model load included), processing and committing.
    # Not timed: starting Ray or connecting to it, listing inputs and reading their footers,
    # calibrating a threshold, writing a label sample, and adding up the totals afterwards.
    started = time.perf_counter()
    done = published(output)
    pending = [f for f in files if f.relative not in done]
    rows, count = sum(f.num_rows for f in pending), len(pending)
    _clear_leftovers(output)
    if len(done):
        logger.info("%d of %d files already done", len(files) - len(pending), len(files))
    for file in (f for f in pending if f.num_rows == 0):
        with file.location.fs.open_input_file(file.location.path) as handle:
            publish(output, file.relative, [empty_result(pq.read_table(handle))], stats)
    pending = [f for f in pending if f.num_rows]
    # On the driver's node: the tracker's counts cannot be rebuilt, and losing the node that
    # runs the driver ends the job anyway, so any other node may die and the job goes on.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tracker = (
        ray.remote(CommitTracker)
        .options(num_cpus=0, scheduling_strategy=here)
        .remote({f.relative: f.num_rows for f in pending}, len(files) - len(pending), len(files))
    )
    # Blocks of files with different columns or types cannot share a batch: one pass per schema.
    by_schema: dict[tuple[tuple[str, str], ...], list[InputFile]] = defaultdict(list)
    for file in pending:
        by_schema[file.columns].append(file)
    for group in by_schema.values():
        if commits_itself:
            units = unit_dataset(work_units(group, whole_file_rows))
            staged = transform(units, Stager(output, tracker, stats))
            # The receipts are a few bytes a batch; pulling them here is what runs the job.
            for _ in staged.iter_batches(batch_size=None, batch_format="pyarrow"):
                pass
            continue
        dataset = read_units(group[0].location.fs, work_units(group))
        # Writing is mostly waiting on storage: a sliver of CPU, so it never starves the actors.
        transform(dataset).write_datasink(
            CommitSink(output, tracker, stats), ray_remote_args={"num_cpus": WRITE_CPUS}
        )
    elapsed = time.perf_counter() - started
    missing = ray.get(tracker.unpublished.remote())
    ray.kill(tracker)
    if missing:
        # Never expected; if it happens, a rerun publishes them (and only them).
        raise RuntimeError(
            f"{len(missing)} input files were not published ({', '.join(missing[:5])}); "
            "run the job again to finish them"
        )
    _clear_leftovers(output)
    return summed_stats(output, files), RunTiming(rows, count, elapsed)


def summed_stats(output: Location, files: list[InputFile]) -> dict[str, float]:
    def read(file: InputFile) -> dict[str, float]:
        with output.fs.open_input_file(output.join(file.relative).path) as handle:
            # The footer's key-value metadata: the schema's, and what a stream added at the end.
            metadata = pq.ParquetFile(handle).metadata.metadata or {}
        return json.loads(metadata[STATS_KEY])

    with ThreadPoolExecutor(16) as pool:
        return _total_stats(pool.map(read, files))
