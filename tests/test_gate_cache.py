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


def test_static_code_changes_the_static_key_not_the_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """A change to the static embedder's code gives its vectors a new key and leaves the folder
    (MiniLM's vectors) as it is; a change to the rest of routers/text moves the folder."""
    from routers.shipped import router_path
    from routers.text import static

    embedder = static.StaticEmbedder(router_path("fast") / "embedder")
    folder, key = embedding_cache.fingerprint(), embedder.cache_key()
    copy = tmp_path / "static.py"
    copy.write_text(Path(static.__file__).read_text() + "\n# changed\n")
    sources = static.static_sources()
    monkeypatch.setattr(static, "static_sources", lambda: (copy, *sources[1:]))
    assert embedder.cache_key() != key
    assert embedding_cache.fingerprint() == folder
    monkeypatch.setattr(embedding_cache.routers.text, "__file__", str(tmp_path / "__init__.py"))
    (tmp_path / "embedders.py").write_text("# another embedding module\n")
    assert embedding_cache.fingerprint() != folder
