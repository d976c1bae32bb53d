"""Progress bars that stay silent unless switched on.

The library runs inside Ray actors and Serve replicas, where a bar per call would only be noise
in their logs, so bars are off by default; the command line turns them on (`enable_progress`)
for the runs a person watches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_enabled = False


def enable_progress(enabled: bool = True) -> None:
    """Show (True) or hide (False) every progress bar this process draws from now on."""
    global _enabled
    _enabled = bool(enabled)


def progress_is_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def progress_enabled(enabled: bool = True) -> Iterator[None]:
    """Within the block, bars are shown (or hidden); the previous setting returns after it."""
    previous = _enabled
    enable_progress(enabled)
    try:
        yield
    finally:
        enable_progress(previous)


def progress(
    iterable: Iterable[T] | None, desc: str, total: int | None = None, unit: str = "it"
) -> tqdm:
    """`iterable`, with a bar while progress is enabled; the bar is cleared when done.

    With `iterable` None the bar is advanced by hand (`bar.update(n)`, then `bar.close()`),
    as `progress_bar` gives it."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not _enabled, leave=False)


def progress_bar(desc: str, total: int, unit: str = "it") -> tqdm:
    """A bar to advance by hand (`bar.update(n)`), for work counted in other units than the
    loop's steps; use it as a context manager so that it closes."""
    return progress(None, desc, total, unit)
