"""What counts as a routable prompt, and scoring a whole table of them.

One definition serves `routeray score`, the batch jobs and the online endpoint: a bad row
gets a null score and a reason, never an exception that loses its neighbours.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from routers.protocol import Router

MAX_PROMPT_CHARS = 200_000
SCORE_COLUMN = "strong_win_rate"
ERROR_COLUMN = "error"


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


def score_table(
    router: Router,
    table: pa.Table,
    prompt_column: str = "prompt",
    max_chars: int = MAX_PROMPT_CHARS,
) -> pa.Table:
    """`table` plus `strong_win_rate` (null for bad rows) and `error` (null for good rows)."""
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
        errors = [prompt_error(v, max_chars) for v in values]
    else:
        # A non-string column (ints, structs): every non-null value is a bad prompt.
        errors = [
            "prompt is null" if v is None else f"prompt is not a string (got {column.type})"
            for v in values
        ]
    good = [i for i, e in enumerate(errors) if e is None]
    scores = np.full(len(values), np.nan)
    if good:
        scores[good] = router.score([values[i] for i in good])
    mask = pa.array([e is not None for e in errors], pa.bool_())
    score_array = pc.if_else(mask, pa.scalar(None, pa.float64()), pa.array(scores, pa.float64()))
    for name in (SCORE_COLUMN, ERROR_COLUMN):
        if name in table.column_names:
            table = table.drop_columns([name])
    return table.append_column(SCORE_COLUMN, score_array).append_column(
        ERROR_COLUMN, pa.array(errors, pa.string())
    )
