"""The quality gates' embedding cache (tests/support/embedding_cache.py) answers only for the
code and libraries of this run: a change to either gives an empty folder, and older folders go."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import embedding_cache


def test_a_folder_per_fingerprint_and_stale_ones_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    root = tmp_path / "cache"
    stale = root / f"{embedding_cache.PREFIX}0123456789abcdef"
    stale.mkdir(parents=True)
    unrelated = root / "someone-elses"
    unrelated.mkdir()
    monkeypatch.setenv(embedding_cache.ENV, str(root))
    folder = embedding_cache.cache_dir(tmp_path / "scratch")
    assert folder == root / f"{embedding_cache.PREFIX}{embedding_cache.fingerprint()}"
    assert folder.is_dir() and not stale.exists() and unrelated.is_dir()
    # The same code and libraries find the same folder, with what was put there.
    (folder / "vectors").write_text("kept")
    assert embedding_cache.cache_dir(tmp_path / "scratch") == folder
    assert (folder / "vectors").read_text() == "kept"


def test_another_library_version_is_another_fingerprint(monkeypatch: pytest.MonkeyPatch):
    before = embedding_cache.fingerprint()
    monkeypatch.setattr(embedding_cache, "version", lambda name: "0.0.0-other")
    assert embedding_cache.fingerprint() != before


def test_off_gives_the_run_its_own_empty_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(embedding_cache.ENV, "off")
    assert embedding_cache.cache_dir(tmp_path) == tmp_path
