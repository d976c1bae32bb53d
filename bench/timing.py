"""The one timing helper the benchmark scripts share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """fn(*args) and the wall-clock seconds it took."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start
