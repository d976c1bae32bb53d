"""The route job's actors read their own row groups (issue 29): a batch of work units in, the
units' rows routed in calls of at most `call_rows`, in order, tagged with file and row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch_jobs.inputs import ROW_COLUMN, SOURCE_COLUMN, inspect_inputs, read_unit_rows, work_units
from batch_jobs.route import RouteBatch
from batch_jobs.storage import locate
from routers.prices import Prices


class CountingRouter:
    """Passes calls through to a real router, keeping each call's size."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.calls: list[int] = []

    def score(self, prompts: list[str]) -> np.ndarray:
        self.calls.append(len(prompts))
        return self.router.score(prompts)


def as_ray_batch(units: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Work units as Ray Data's numpy batch format hands them to a stage."""
    return {key: np.array([u[key] for u in units]) for key in units[0]}


def test_actor_reads_its_units_and_routes_them_in_calls(tmp_path: Path, tiny_router_dir: Path):
    for name, start in (("a.parquet", 0), ("b.parquet", 100)):
        prompts = [f"prompt number {start + i} about topic {i % 3}" for i in range(12)]
        pq.write_table(
            pa.table({"prompt": prompts, "id": list(range(start, start + 12))}),
            tmp_path / name,
            row_group_size=5,
        )
    units = work_units(inspect_inputs(locate(str(tmp_path)), "prompt"))
    assert len(units) == 6  # 5 + 5 + 2 rows per file
    fs = pafs.LocalFileSystem()
    prices = Prices().model_dump()
    reader = RouteBatch(str(tiny_router_dir), 0.5, "prompt", prices, fs=fs, call_rows=2)
    counting = CountingRouter(reader.router)
    reader.router = counting

    batch = [units[1], units[2], units[3]]  # a's second and third groups, b's first
    routed = reader(as_ray_batch(batch))

    assert routed.column("id").to_pylist() == [5, 6, 7, 8, 9, 10, 11, 100, 101, 102, 103, 104]
    assert routed.column(SOURCE_COLUMN).to_pylist() == ["a.parquet"] * 7 + ["b.parquet"] * 5
    assert routed.column(ROW_COLUMN).to_pylist() == [5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4]
    assert max(counting.calls) <= 2 and sum(counting.calls) == 12
    # The same routes as routing the rows read apart, in one call.
    whole = RouteBatch(str(tiny_router_dir), 0.5, "prompt", prices)
    expected = whole(read_unit_rows(as_ray_batch(batch), fs))
    assert routed.column("route").to_pylist() == expected.column("route").to_pylist()
    np.testing.assert_allclose(
        routed.column("strong_win_rate").to_numpy(), expected.column("strong_win_rate").to_numpy()
    )
