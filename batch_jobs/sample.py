"""A reproducible sample of rows spread across an archive's files, and its hidden copy.

The rows are chosen from the files' footers alone: each file gets a share of the sample in
proportion to its rows (largest remainders, seeded ties), then that many of its rows, drawn
uniformly with the same seed. The same archive, size and seed always give the same rows.

A job that works on a sample writes the chosen rows once, as hidden input files at the same
relative paths (`OUTPUT/.sample/...`, each published whole), and then runs the ordinary
per-file machinery on those: a rerun finds them, rewrites only the ones a kill left unwritten,
and resumes exactly where the published outputs say, so no sampled row is lost or done twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch_jobs.inputs import InputFile
from batch_jobs.storage import Location, write_table_atomic

SAMPLE_DIR = ".sample"
# Rows per row group of a sample file: each is one read task, so a file's rows spread over the
# actors and stream through the stages instead of arriving as one block.
SAMPLE_ROW_GROUP = 64

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplePlan:
    """Which rows (positions in each file, ascending) a sample holds."""

    rows: dict[str, np.ndarray]  # relative path -> row positions; files without rows left out

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def digest(self) -> str:
        """Identifies the chosen rows, so a rerun on a changed archive is refused, not mixed."""
        listing = {relative: rows.tolist() for relative, rows in sorted(self.rows.items())}
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def plan_sample(files: list[InputFile], size: int, seed: int) -> SamplePlan:
    counts = np.array([f.num_rows for f in files], dtype=np.int64)
    total = int(counts.sum())
    if size >= total:
        if size > total:
            logger.warning("asked for %d rows, the archive holds %d: taking all", size, total)
        return SamplePlan({f.relative: np.arange(f.num_rows) for f in files if f.num_rows})
    rng = np.random.default_rng(seed)
    quota = size * counts / total
    shares = np.floor(quota).astype(np.int64)
    # The rows left over go to the largest fractional parts; a seeded key breaks ties, so many
    # equal small files share them at random rather than in name order.
    order = np.lexsort((rng.random(len(files)), -(quota - shares)))
    shares[order[: size - int(shares.sum())]] += 1
    rows = {}
    for file, share in zip(files, shares, strict=True):
        if share:
            rows[file.relative] = np.sort(rng.choice(file.num_rows, int(share), replace=False))
    return SamplePlan(rows)


def read_rows(file: InputFile, positions: np.ndarray, columns: list[str] | None = None) -> pa.Table:
    """The rows at `positions` (ascending) of one file, reading only the row groups they are in
    (and only those of `columns` the file has)."""
    if columns is not None:
        names = dict(file.columns)
        columns = [c for c in columns if c in names]
    bounds = np.cumsum((0, *file.row_groups))
    groups = np.searchsorted(bounds, positions, side="right") - 1
    tables = []
    with file.location.fs.open_input_file(file.location.path) as handle:
        parquet = pq.ParquetFile(handle)
        for group in np.unique(groups):
            picked = positions[groups == group] - bounds[group]
            tables.append(parquet.read_row_group(int(group), columns=columns).take(picked))
    return pa.concat_tables(tables)


def sampled_tables(
    files: list[InputFile], plan: SamplePlan, columns: list[str] | None = None
) -> Iterator[tuple[InputFile, pa.Table]]:
    for file in files:
        if file.relative in plan.rows:
            yield file, read_rows(file, plan.rows[file.relative], columns)


def write_sample(files: list[InputFile], plan: SamplePlan, output: Location) -> Location:
    """The sample's hidden input files under `output` (those a previous run wrote are kept:
    the plan, checked through the job record, is the same); returns their root."""
    root = output.join(SAMPLE_DIR)
    pending = [f for f in files if f.relative in plan.rows and not root.join(f.relative).exists()]
    for file, table in sampled_tables(pending, plan):
        slices = [table.slice(i, SAMPLE_ROW_GROUP) for i in range(0, len(table), SAMPLE_ROW_GROUP)]
        write_table_atomic(root.join(file.relative), slices, table.schema)
    if pending:
        logger.info("wrote the sample of %d rows from %d files", plan.size, len(plan.rows))
    return root
