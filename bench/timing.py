"""What the benchmark scripts share: timing a call, a process's peak memory, and a prompt
set repeated to a size."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """fn(*args) and the wall-clock seconds it took."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def repeated(distinct: Sequence[str], rows: int) -> list[str]:
    """`rows` prompts: `distinct` repeated in order. Generating prompts is slow and no router
    caches anything, so a repeated prompt costs what a new one would."""
    return (list(distinct) * -(-rows // len(distinct)))[:rows]
