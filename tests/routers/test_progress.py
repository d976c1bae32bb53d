"""Progress bars are silent unless switched on (Ray actors and Serve replicas print nothing)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from routers.progress import (
    enable_progress,
    progress,
    progress_bar,
    progress_enabled,
    progress_is_enabled,
)


@pytest.fixture(autouse=True)
def _restore_the_switch() -> Iterator[None]:
    """The switch is process-wide (and the command line's tests turn it on): put it back."""
    before = progress_is_enabled()
    yield
    enable_progress(before)


def _draw() -> list[int]:
    items = list(progress(range(3), "items", total=3))
    with progress_bar("prompts", total=5, unit="prompt") as bar:
        bar.update(5)
    return items


def test_a_fresh_process_draws_no_bars():
    code = (
        "from routers.progress import progress, progress_bar, progress_is_enabled\n"
        "assert not progress_is_enabled()\n"
        "assert list(progress(range(3), 'items', total=3)) == [0, 1, 2]\n"
        "with progress_bar('prompts', total=5) as bar:\n"
        "    bar.update(5)\n"
        "from routers.text.embedders import get_embedder\n"
        "embedder = get_embedder()\n"
        "import sys\n"
        "print('--- loaded ---', file=sys.stderr)\n"
        "embedder.encode(['What is 2 + 2?', 'Hello there!'] * 40)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Loading the model may draw the model library's own bars; nothing after that.
    assert done.stdout == ""
    assert done.stderr.split("--- loaded ---", 1)[1].strip() == ""
    assert "items" not in done.stderr and "prompts" not in done.stderr


def test_switched_off_nothing_is_drawn(capsys):
    with progress_enabled(False):
        assert _draw() == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_enabled_draws_and_restores(capsys):
    enable_progress(False)
    with progress_enabled():
        assert progress_is_enabled()
        assert _draw() == [0, 1, 2]
    assert not progress_is_enabled()
    assert "items" in capsys.readouterr().err


def test_enable_progress_switches_the_whole_process():
    enable_progress(True)
    assert progress_is_enabled()
    with progress_enabled(False):
        assert not progress_is_enabled()
    assert progress_is_enabled()
