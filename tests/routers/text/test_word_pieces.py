"""The cached-chunk path for ASCII prompts gives the Rust tokenizer's own token ids, bounds its
memory, and is taken only where it is exact; the static embedder's vectors are the same with it
or without it."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import threading
from itertools import chain, pairwise
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from routeray.demo.prompts import generate_prompts
from routers.text.static import WORD_CACHE_ENV, StaticEmbedder
from routers.text.word_pieces import CONTROL, WordPieceCache
from tests.routers.text.test_static_encode import (
    EDGE_PROMPTS,
    SHIPPED_TABLE,
    WORD_EDGE_PROMPTS,
    model2vec_vectors,
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    # As the embedder runs it: the file's 512-token truncation off, no window.
    tokenizer = Tokenizer.from_file(str(SHIPPED_TABLE / "tokenizer.json"))
    tokenizer.no_truncation()
    return tokenizer


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return EDGE_PROMPTS + WORD_EDGE_PROMPTS + generate_prompts(1500, seed=4)


@pytest.fixture(scope="module")
def without_cache() -> StaticEmbedder:
    return StaticEmbedder(SHIPPED_TABLE, word_cache=False)


def rows(ids: np.ndarray, indptr: np.ndarray) -> list[list[int]]:
    return [ids[a:b].tolist() for a, b in pairwise(indptr)]


def holds_added_token(text: str) -> bool:
    return "[pad]" in text.lower() or "[unk]" in text.lower()


def test_ids_are_the_rust_tokenizers(tokenizer: Tokenizer, prompts: list[str]):
    cache = WordPieceCache(tokenizer)
    handled, ids, indptr = cache.token_ids(prompts)
    # Every prompt but those holding an added token's text (the unicorns and CJK included).
    expected = [not holds_added_token(p) for p in prompts]
    assert handled.tolist() == expected
    chosen = [p for p, done in zip(prompts, expected, strict=True) if done]
    assert len(chosen) > 1500 and "" in chosen and "c" * 101 in chosen
    reference = [e.ids for e in tokenizer.encode_batch(chosen, add_special_tokens=False)]
    assert rows(ids, indptr) == reference
    # Unknown tokens are kept here (the embedder drops them): "c" * 101 is one [UNK].
    assert reference[chosen.index("c" * 101)] == [tokenizer.token_to_id("[UNK]")]
    # A second pass is served from the cache and gives the same ids.
    cached = len(cache)
    again = cache.token_ids(prompts)
    assert len(cache) == cached and rows(*again[1:]) == reference


def test_ids_on_the_shared_prompts(tokenizer: Tokenizer, shared_data_dir: Path):
    """Every distinct prompt of the shared training and evaluation sets (about 33,000: real
    users' English with curly quotes and symbols, Japanese, code, maths) gets the tokenizer's
    own ids, in batches of the embedder's size."""
    import pyarrow.parquet as pq

    texts: dict[str, None] = {}
    for path in sorted(shared_data_dir.glob("*/*.parquet")):
        if "prompt" in pq.read_schema(path).names:
            column = pq.read_table(path, columns=["prompt"]).column(0).to_pylist()
            texts.update(dict.fromkeys(t for t in column if isinstance(t, str)))
    prompts = list(texts)
    assert len(prompts) > 10_000 and sum(not t.isascii() for t in prompts) > 1000
    cache = WordPieceCache(tokenizer)
    for start in range(0, len(prompts), 4096):
        batch = prompts[start : start + 4096]
        handled, ids, indptr = cache.token_ids(batch)
        chosen = [t for t, done in zip(batch, handled, strict=True) if done]
        assert len(chosen) >= len(batch) - 5
        reference = tokenizer.encode_batch_fast(chosen, add_special_tokens=False)
        lengths = np.fromiter(map(len, reference), np.int64, len(reference))
        np.testing.assert_array_equal(np.diff(indptr), lengths)
        expected = np.fromiter(chain.from_iterable(e.ids for e in reference), np.int64)
        np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize(
    "texts", [[], [""], ["", "", ""], ["🦄", "日本語"], ["[PAD]"], ["", "[UNK]", "", "x"]]
)
def test_empty_and_unhandled_batches(tokenizer: Tokenizer, texts: list[str]):
    handled, ids, indptr = WordPieceCache(tokenizer).token_ids(texts)
    assert len(handled) == len(texts) and len(indptr) == handled.sum() + 1
    reference = tokenizer.encode_batch(
        [t for t, done in zip(texts, handled, strict=True) if done], add_special_tokens=False
    )
    assert rows(ids, indptr) == [e.ids for e in reference]


def test_cache_cleared_midstream_changes_nothing(
    tokenizer: Tokenizer, prompts: list[str], without_cache: StaticEmbedder
):
    """A cache far smaller than the prompts' chunks, emptied between batches of 7, gives the
    same vectors; it never holds more than its limit plus one batch's new chunks."""
    embedder = StaticEmbedder(SHIPPED_TABLE, batch_size=7)
    embedder.words = WordPieceCache(tokenizer, max_chunks=40, max_bytes=600)
    sizes = []
    for start in range(0, len(prompts), 7):
        batch = prompts[start : start + 7]
        np.testing.assert_array_equal(embedder.encode(batch), without_cache.encode(batch))
        sizes.append((len(embedder.words), embedder.words.chunk_bytes, batch))
    assert any(later < earlier for (earlier, _, _), (later, _, _) in pairwise(sizes))
    for chunks, chars, batch in sizes:
        joined = b" ".join(map(str.encode, batch)).translate(None, CONTROL).lower()
        assert chunks <= 40 + len(set(joined.split()))
        assert chars <= 600 + len(joined)


def test_memory_is_bounded_by_the_cache_not_the_traffic(tokenizer: Tokenizer):
    cache = WordPieceCache(tokenizer, max_chunks=1000, max_bytes=10**6)
    rng = np.random.default_rng(0)
    for _ in range(20):  # 20 batches of 500 new words each
        words = ["".join(rng.choice(list("abcdefghij"), 12)) for _ in range(500)]
        cache.token_ids([" ".join(words[i : i + 10]) for i in range(0, 500, 10)])
        assert len(cache) <= 1000 + 500
    for table in (cache._chunks, cache._pieces):
        # Every id covers at least one byte of a cached string; pieces are within chunks.
        assert len(table.starts) == len(table) + 1 and len(table.ids) <= table.bytes
    assert cache._pieces.bytes <= cache.chunk_bytes


def test_vectors_with_and_without_the_cache(prompts: list[str], without_cache: StaticEmbedder):
    with_cache = StaticEmbedder(SHIPPED_TABLE)
    assert with_cache.words is not None and without_cache.words is None
    ours = with_cache.encode(prompts)
    # The same ids in the same order, so the same sums: equal, not merely close.
    np.testing.assert_array_equal(ours, without_cache.encode(prompts))
    np.testing.assert_allclose(ours, model2vec_vectors(with_cache, prompts), rtol=0, atol=1e-6)


def test_threads_share_one_cache(tokenizer: Tokenizer, without_cache: StaticEmbedder):
    """Four threads encoding at once through a small cache that empties often."""
    embedder = StaticEmbedder(SHIPPED_TABLE, batch_size=16)
    embedder.words = WordPieceCache(tokenizer, max_chunks=100)
    texts = generate_prompts(400, seed=5)
    expected = without_cache.encode(texts)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = embedder.encode(texts[k * 50 :] + texts[: k * 50])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k, vectors in results.items():
        np.testing.assert_array_equal(vectors, np.roll(expected, -k * 50, axis=0))
    assert len(results) == 4


def test_invalid_text_is_refused_as_before(without_cache: StaticEmbedder):
    """A lone surrogate is not text: the tokenizer refuses it, with the cache as without."""
    texts = ["fine", "bad \ud800 one"]
    handled, _, _ = WordPieceCache(without_cache.tokenizer).token_ids(texts)
    assert handled.tolist() == [True, False]
    with pytest.raises(TypeError):
        without_cache.encode(texts)
    with pytest.raises(TypeError):
        StaticEmbedder(SHIPPED_TABLE).encode(texts)


def test_copies_start_empty(prompts: list[str], without_cache: StaticEmbedder):
    """The embedder pickles and deep-copies as it did before the cache (Ray ships routers
    so); a copy gets an empty cache of its own."""
    embedder = StaticEmbedder(SHIPPED_TABLE)
    some = prompts[:300]
    embedder.encode(some)
    assert len(embedder.words) > 100
    for copied in (pickle.loads(pickle.dumps(embedder)), copy.deepcopy(embedder)):
        assert copied.words is not embedder.words and len(copied.words) == 0
        np.testing.assert_array_equal(copied.encode(some), without_cache.encode(some))
        assert len(copied.words) == len(embedder.words)


def edited(tokenizer: Tokenizer, change: dict) -> Tokenizer:
    config = json.loads(tokenizer.to_str())
    for key, value in change.items():
        if key == "added_tokens":
            config["added_tokens"].append({**config["added_tokens"][0], "id": 5, **value})
        else:
            # A new type replaces the whole entry; otherwise the fields given change.
            config[key] = value if "type" in value else {**config[key], **value}
    return Tokenizer.from_str(json.dumps(config))


@pytest.mark.parametrize(
    "change",
    [
        {"normalizer": {"lowercase": False}},
        {"normalizer": {"clean_text": False}},
        {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}},
        {"pre_tokenizer": {"type": "Whitespace"}},
        {"added_tokens": {"content": "tab\there"}},
        {"added_tokens": {"content": "two words"}},
    ],
)
def test_other_tokenizers_are_not_chunked(tokenizer: Tokenizer, change: dict):
    assert WordPieceCache.is_supported(tokenizer)
    assert not WordPieceCache.is_supported(edited(tokenizer, change))


def test_unsupported_tokenizer_takes_the_rust_path(tmp_path: Path, prompts: list[str]):
    """A table whose tokenizer keeps case: no chunk cache, and still model2vec's vectors."""
    shutil.copytree(SHIPPED_TABLE, tmp_path / "cased")
    path = tmp_path / "cased" / "tokenizer.json"
    config = json.loads(path.read_text())
    config["normalizer"]["lowercase"] = False
    path.write_text(json.dumps(config))
    embedder = StaticEmbedder(tmp_path / "cased")
    assert embedder.words is None
    some = prompts[:200]
    np.testing.assert_allclose(
        embedder.encode(some), model2vec_vectors(embedder, some), rtol=0, atol=1e-6
    )


def test_environment_turns_the_cache_off(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(WORD_CACHE_ENV, "0")
    assert StaticEmbedder(SHIPPED_TABLE).words is None
    assert StaticEmbedder(SHIPPED_TABLE, word_cache=True).words is not None
