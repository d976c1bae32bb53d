"""The input archive: which Parquet files, how many rows, and reading them as Ray Data blocks.

Every file's footer is read before any work starts, so a malformed file or a missing prompt
column stops the job at once with the file's name, not hours later. The work list is one unit
per row group: a big file spreads over many read tasks, and each row carries the file it came
from and its position there, which is what the per-file commit needs. A stage that reads its
own rows and commits them may take a small file as one unit (`work_units(whole_file_rows=)`),
read a row group at a time (`iter_file_rows`) and written straight to its output.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch_jobs.storage import Location, list_parquet

# Columns the job adds while rows are in flight; never written to results.
SOURCE_COLUMN = "__routeray_source"
ROW_COLUMN = "__routeray_row"
FOOTER_THREADS = 16
READ_CPUS = 0.25


class InputError(ValueError):
    """The input cannot be processed as given (the message names the file and what is wrong)."""


@dataclass(frozen=True)
class InputFile:
    location: Location
    relative: str  # path under the input root; the output file gets the same one
    columns: tuple[tuple[str, str], ...]  # (name, Arrow type) pairs
    row_groups: tuple[int, ...]  # rows in each row group

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


def _inspect(location: Location, relative: str, prompt_column: str) -> InputFile:
    try:
        with location.fs.open_input_file(location.path) as handle:
            metadata = pq.ParquetFile(handle).metadata
            schema = metadata.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{location.uri}: not a readable Parquet file ({exc})") from exc
    if prompt_column not in schema.names:
        raise InputError(
            f"{location.uri}: no column {prompt_column!r} (columns: {', '.join(schema.names)})"
        )
    groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    columns = tuple((field.name, str(field.type)) for field in schema)
    return InputFile(location, relative, columns, groups)


def inspect_inputs(root: Location, prompt_column: str) -> list[InputFile]:
    files = list_parquet(root)
    if not files:
        raise InputError(f"no Parquet files under {root.uri}")
    single = len(files) == 1 and files[0].path == root.path
    base = root.path.rstrip("/") + "/"
    relatives = [f.path.rpartition("/")[2] if single else f.path.removeprefix(base) for f in files]
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        return list(pool.map(lambda f, r: _inspect(f, r, prompt_column), files, relatives))


# A work unit's `row_group` when the unit is its whole file.
WHOLE_FILE = -1


def work_units(files: list[InputFile], whole_file_rows: int = 0) -> list[dict[str, Any]]:
    """One unit per non-empty row group; a file of at most `whole_file_rows` rows is one unit
    of its own (`row_group` WHOLE_FILE, with its `rows`)."""
    units = []
    for file in files:
        where = {"relative": file.relative, "path": file.location.path, "uri": file.location.uri}
        if 0 < file.num_rows <= whole_file_rows:
            units.append(where | {"row_group": WHOLE_FILE, "offset": 0, "rows": file.num_rows})
            continue
        offset = 0
        for index, rows in enumerate(file.row_groups):
            if rows:
                units.append(where | {"row_group": index, "offset": offset, "rows": rows})
            offset += rows
    return units


def read_row_group(fs: Any, unit: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
    try:
        with fs.open_input_file(unit["path"]) as handle:
            return pq.ParquetFile(handle).read_row_group(unit["row_group"], columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"{unit['uri']}: row group {unit['row_group']} unreadable ({exc})"
        ) from exc


def _tagged(table: pa.Table, relative: str, start: int) -> pa.Table:
    return table.append_column(SOURCE_COLUMN, pa.array([relative] * len(table))).append_column(
        ROW_COLUMN, pa.array(range(start, start + len(table)), pa.int64())
    )


def iter_file_rows(fs: Any, unit: dict[str, Any]) -> Iterator[pa.Table]:
    """A whole-file unit's rows, a row group at a time, in order, tagged as `read_unit_rows`
    tags them: the memory of one row group, whatever the file's size."""
    try:
        with fs.open_input_file(unit["path"]) as handle:
            parquet = pq.ParquetFile(handle)
            start = 0
            for index in range(parquet.num_row_groups):
                table = parquet.read_row_group(index)
                if len(table):
                    yield _tagged(table, str(unit["relative"]), start)
                start += len(table)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{unit['uri']}: unreadable ({exc})") from exc


def read_unit_rows(units: dict[str, Any], fs: Any) -> pa.Table:
    """Work units in (a batch of `work_units`, as Ray Data gives it), their rows out, tagged
    with file and position."""
    tables = []
    for i in range(len(units["path"])):
        unit = {name: values[i] for name, values in units.items()}
        if int(unit["row_group"]) == WHOLE_FILE:
            tables.extend(iter_file_rows(fs, unit))
            continue
        table = read_row_group(fs, unit)
        tables.append(_tagged(table, str(unit["relative"]), int(unit["offset"])))
    return pa.concat_tables(tables, promote_options="permissive")


def unit_dataset(units: list[dict[str, Any]]) -> Any:
    """A Ray Dataset of the work units themselves, a block each: for a stage that reads its
    rows where it processes them (`read_unit_rows`)."""
    import ray

    return ray.data.from_items(units, override_num_blocks=max(1, len(units)))


def read_units(fs: Any, units: list[dict[str, Any]]) -> Any:
    """A Ray Dataset of the rows of `units`, one read task per row group."""
    items = unit_dataset(units)
    # Reading waits on storage more than it computes; a whole CPU per read task would starve
    # the actor pools on a small machine (and deadlock once they hold every CPU).
    return items.map_batches(
        read_unit_rows, fn_kwargs={"fs": fs}, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS
    )


def calibration_sample(
    fs: Any, files: list[InputFile], prompt_column: str, size: int, seed: int = 0
) -> list[Any]:
    """About `size` prompts drawn from row groups across the whole archive, reproducibly, so a
    rerun calibrates the same threshold."""
    units = work_units(files)
    random.Random(seed).shuffle(units)
    values: list[Any] = []
    for unit in units:
        if len(values) >= 4 * size:
            break
        values.extend(read_row_group(fs, unit, [prompt_column]).column(0).to_pylist())
    random.Random(seed).shuffle(values)
    return values[:size]
