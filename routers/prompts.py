"""What counts as a routable prompt, and scoring a whole table of them.

One definition serves `routeray score`, the batch jobs and the online endpoint: a bad row
gets a null score and a reason, never an exception that loses its neighbours. A two-model
router's table gets `strong_win_rate`; an N-model router's gets one `quality:<model>` column
per model it predicts (`quality_table`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from routers.protocol import MultiRouter, Router

MAX_PROMPT_CHARS = 200_000
SCORE_COLUMN = "strong_win_rate"
ERROR_COLUMN = "error"
# An N-model router's predicted quality of each model: `quality:<model name as configured>`.
QUALITY_PREFIX = "quality:"


def prompt_error(value: Any, max_chars: int = MAX_PROMPT_CHARS) -> str | None:
    """None for a routable prompt, else why not."""
    if value is None:
        return "prompt is null"
    if not isinstance(value, str):
        return f"prompt is not a string (got {type(value).__name__})"
    if not value.strip():
        return "prompt is empty"
    if len(value) > max_chars:
        return f"prompt is too long ({len(value)} characters > {max_chars})"
    return None


def prompt_errors(
    table: pa.Table, prompt_column: str = "prompt", max_chars: int = MAX_PROMPT_CHARS
) -> tuple[list[Any], list[str | None]]:
    """The prompt column's values and, per row, None for a routable prompt or why not."""
    if prompt_column not in table.column_names:
        raise KeyError(
            f"prompt column {prompt_column!r} not found; "
            f"columns are: {', '.join(table.column_names)}"
        )
    column = table.column(prompt_column)
    if pa.types.is_dictionary(column.type) or pa.types.is_string_view(column.type):
        # Categorical columns and string views are strings too, just encoded differently.
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column = column.cast(pa.large_string())
    values = column.to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return values, [prompt_error(v, max_chars) for v in values]
    # A non-string column (ints, structs): every non-null value is a bad prompt.
    return values, [
        "prompt is null" if v is None else f"prompt is not a string (got {column.type})"
        for v in values
    ]


def _with_columns(
    table: pa.Table, columns: dict[str, pa.Array], errors: list[str | None]
) -> pa.Table:
    """`table` plus `columns` and the error column, replacing any of the same names."""
    names = [*columns, ERROR_COLUMN]
    table = table.drop_columns([n for n in names if n in table.column_names])
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table.append_column(ERROR_COLUMN, pa.array(errors, pa.string()))


def score_table(
    router: Router,
    table: pa.Table,
    prompt_column: str = "prompt",
    max_chars: int = MAX_PROMPT_CHARS,
) -> pa.Table:
    """`table` plus `strong_win_rate` (null for bad rows) and `error` (null for good rows)."""
    values, errors = prompt_errors(table, prompt_column, max_chars)
    good = [i for i, e in enumerate(errors) if e is None]
    scores = np.full(len(values), np.nan)
    if good:
        scores[good] = router.score([values[i] for i in good])
    mask = pa.array([e is not None for e in errors], pa.bool_())
    score_array = pc.if_else(mask, pa.scalar(None, pa.float64()), pa.array(scores, pa.float64()))
    return _with_columns(table, {SCORE_COLUMN: score_array}, errors)


def quality_column(model: str) -> str:
    """The column holding an N-model router's predicted quality of `model`."""
    return f"{QUALITY_PREFIX}{model}"


def quality_table(
    router: MultiRouter | None,
    table: pa.Table,
    prompt_column: str = "prompt",
    max_chars: int = MAX_PROMPT_CHARS,
    models: Sequence[str] | None = None,
) -> pa.Table:
    """`table` plus one `quality:<model>` column per model of an N-model router, in the order
    of `router.models` (null for bad rows), and `error`. `models` names the columns when no
    router is needed (a table without a routable row: `router` may then be None)."""
    names = list(router.models if models is None else models)
    values, errors = prompt_errors(table, prompt_column, max_chars)
    good = [i for i, e in enumerate(errors) if e is None]
    qualities = np.full((len(values), len(names)), np.nan)
    if good:
        if router is None:
            raise ValueError("quality_table needs a router for a table with routable prompts")
        predicted = np.asarray(router.qualities([values[i] for i in good]), dtype=np.float64)
        if predicted.shape != (len(good), len(names)):
            raise ValueError(
                f"router gave qualities of shape {predicted.shape}, expected "
                f"({len(good)}, {len(names)}) for models {names}"
            )
        qualities[good] = predicted
    bad = np.array([e is not None for e in errors], bool)
    columns = {
        quality_column(name): pa.array(qualities[:, m], pa.float64(), mask=bad)
        for m, name in enumerate(names)
    }
    return _with_columns(table, columns, errors)
