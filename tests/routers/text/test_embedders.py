"""The sentence embedder: normalisation, length bucketing, head+tail truncation, disk cache."""

import hashlib

import numpy as np
import pytest

from routers.text.embedders import CachedEmbedder, Embedder, get_embedder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)
        e = get_embedder()
    assert isinstance(e, Embedder)
    return e


def n_tokens(embedder: Embedder, text: str) -> int:
    return len(embedder.window.backend.encode(text, add_special_tokens=False).ids)


# ~11 tokens per sentence, each sentence different so that no two windows look alike.
SENTENCES = [f"Item {i} of the inventory list is recorded here." for i in range(60)]
INTRO = "Please read this inventory report carefully before answering my question at the end."


def long_prompt(middle_word: str = "apple", question: str = "How many items are listed?") -> str:
    # ~680 tokens. The varying word sits ~150 tokens in, i.e. well past the 64 head tokens, and
    # ~500 tokens before the end, i.e. well before the 190 tail tokens of a 256-token window.
    head, tail = " ".join(SENTENCES[:12]), " ".join(SENTENCES[12:])
    return f"{INTRO} {head} The secret word is {middle_word}. {tail}\n\nQuestion: {question}"


MIXED = [
    "hi",
    "What is the derivative of x^3 + 2x?",
    "Write a short story about a lighthouse keeper who befriends a seagull. " * 3,
    long_prompt(),
    "ok",
    "Explain the difference between TCP and UDP, with examples of when to use each. " * 6,
    "Translate 'good morning' into French, Spanish and German.",
]


@pytest.fixture(scope="module")
def singles(embedder) -> np.ndarray:
    """MIXED encoded one prompt at a time: no padding, no bucketing."""
    return np.stack([embedder.encode([p])[0] for p in MIXED])


def test_encode_is_float32_and_unit_norm(embedder):
    out = embedder.encode(MIXED)
    assert out.dtype == np.float32
    assert out.shape == (len(MIXED), embedder.dim) == (len(MIXED), 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Different prompts, different vectors.
    sims = out @ out.T
    assert (sims[~np.eye(len(MIXED), dtype=bool)] < 0.99).all()


def test_encode_empty_list(embedder):
    out = embedder.encode([])
    assert out.shape == (0, embedder.dim)
    assert out.dtype == np.float32


def test_batched_encode_equals_one_by_one(embedder, singles):
    lengths = [len(ids) for ids in embedder.token_ids(MIXED)]
    assert min(lengths) <= 4 and max(lengths) == embedder.max_tokens  # really mixed
    np.testing.assert_allclose(embedder.encode(MIXED), singles, atol=1e-5)


def test_small_token_budget_batches_give_same_result(embedder, singles, monkeypatch):
    # Force several length buckets (and a batch-size cap) so the sort/scatter path is exercised.
    monkeypatch.setattr(embedder, "batch_tokens", 300)
    monkeypatch.setattr(embedder, "max_batch_size", 2)
    lengths = np.array([len(ids) for ids in embedder.token_ids(MIXED)])
    batches = embedder._batches(lengths)
    assert len(batches) >= 4
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(MIXED)))
    for batch in batches:
        assert len(batch) <= 2
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 300
    np.testing.assert_allclose(embedder.encode(MIXED), singles, atol=1e-5)
    # Reversed input order gives the reversed output: rows follow the input, not the buckets.
    np.testing.assert_allclose(embedder.encode(MIXED[::-1]), singles[::-1], atol=1e-5)


def test_duplicates_in_a_batch(embedder):
    out = embedder.encode(["same prompt", "other", "same prompt"])
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)


def test_token_ids_head_and_tail(embedder):
    prompt = long_prompt()
    assert n_tokens(embedder, prompt) > 2 * embedder.max_tokens  # well over the window
    (ids,) = embedder.token_ids([prompt])
    assert len(ids) == embedder.max_tokens == 256
    full = embedder.window.backend.encode(prompt, add_special_tokens=False).ids
    body = ids[len(embedder.window.prefix) : len(ids) - len(embedder.window.suffix)]
    tail = len(body) - embedder.head_tokens
    assert body == full[: embedder.head_tokens] + full[-tail:]
    assert ids[: len(embedder.window.prefix)] == embedder.window.prefix
    assert ids[len(ids) - len(embedder.window.suffix) :] == embedder.window.suffix
    # A short prompt is left whole.
    short = "What is 2 + 2?"
    window = embedder.window
    assert (
        embedder.token_ids([short])[0]
        == (window.prefix + window.backend.encode(short, add_special_tokens=False).ids)
        + window.suffix
    )


def test_long_prompts_differing_in_final_question_differ(embedder):
    a, b = embedder.encode(
        [
            long_prompt(question="What is the capital of France?"),
            long_prompt(question="Write a Python function that reverses a linked list."),
        ]
    )
    assert np.abs(a - b).max() > 1e-3
    assert float(a @ b) < 0.999


def test_long_prompts_differing_only_in_the_middle_are_identical(embedder):
    p1, p2 = long_prompt(middle_word="apple"), long_prompt(middle_word="zebra")
    assert p1 != p2
    a, b = embedder.encode([p1, p2])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # ...whereas the same change in a short prompt does change the vector.
    s1, s2 = embedder.encode(["The secret word is apple.", "The secret word is zebra."])
    assert np.abs(s1 - s2).max() > 1e-3


def test_long_prompts_differing_at_the_start_differ(embedder):
    # The head is kept too: this is head+tail truncation, not tail-only.
    a, b = embedder.encode(
        ["Ignore the report. " + long_prompt(), "Summarise it. " + long_prompt()]
    )
    assert np.abs(a - b).max() > 1e-3


def test_cache_key_names_the_truncation(embedder):
    assert embedder.cache_key() == "all-MiniLM-L6-v2-256-64"


# --- CachedEmbedder ---------------------------------------------------------------------------


class CountingEmbedder:
    """Wraps an embedder (or makes up vectors) and records every call."""

    def __init__(self, inner=None, dim: int = 4, key: str = "fake-v1"):
        self.inner = inner
        self.dim = inner.dim if inner is not None else dim
        self.name = inner.name if inner is not None else "fake"
        self._key = inner.cache_key() if inner is not None else key
        self.calls: list[list[str]] = []

    def cache_key(self) -> str:
        return self._key

    def encode(self, texts):
        self.calls.append(list(texts))
        if self.inner is not None:
            return self.inner.encode(texts)
        # Deterministic per text, distinct between texts.
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.md5(t.encode()).digest()[:4], "little")
            rows.append(np.random.default_rng(seed).normal(size=self.dim))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)

    @property
    def n_texts(self) -> int:
        return sum(len(c) for c in self.calls)


def test_cached_embedder_matches_the_embedder(embedder, tmp_path):
    texts = ["What is 12 squared?", "hello", "Explain photosynthesis briefly."]
    counting = CountingEmbedder(embedder)
    cached = CachedEmbedder(counting, tmp_path)
    assert cached.dim == embedder.dim and cached.name == embedder.name
    np.testing.assert_allclose(cached.encode(texts), embedder.encode(texts), atol=1e-6)
    assert counting.n_texts == 3
    # Second call: all hits, same vectors, no new embedding.
    np.testing.assert_allclose(cached.encode(texts[::-1]), embedder.encode(texts[::-1]), atol=1e-6)
    assert counting.n_texts == 3
    assert cached.path.name == f"embeddings-{embedder.cache_key()}.npz"


def test_cached_embedder_persists_and_reloads(tmp_path):
    texts = ["alpha", "beta", "gamma", "alpha"]
    first = CountingEmbedder()
    cache = CachedEmbedder(first, tmp_path / "cache")
    vectors = cache.encode(texts)
    # The duplicate is embedded once.
    assert len(first.calls) == 1
    assert sorted(first.calls[0]) == ["alpha", "beta", "gamma"]
    np.testing.assert_array_equal(vectors[0], vectors[3])
    assert not np.array_equal(vectors[0], vectors[1])
    assert cache.path.is_file()
    assert cache.path.parent == tmp_path / "cache"

    second = CountingEmbedder()
    reloaded = CachedEmbedder(second, tmp_path / "cache")
    np.testing.assert_array_equal(reloaded.encode(["gamma", "alpha", "beta"]), vectors[[2, 0, 1]])
    assert second.calls == []

    # A new text alongside cached ones: only the new one is embedded, and the file grows.
    mixed = reloaded.encode(["beta", "delta"])
    assert second.calls == [["delta"]]
    np.testing.assert_array_equal(mixed[0], vectors[1])
    np.testing.assert_array_equal(mixed[1], CountingEmbedder().encode(["delta"])[0])

    third = CountingEmbedder()
    again = CachedEmbedder(third, tmp_path / "cache")
    np.testing.assert_array_equal(
        again.encode(["delta", "alpha", "beta", "gamma"]),
        np.concatenate([mixed[1:], vectors[[0, 1, 2]]]),
    )
    assert third.calls == []


def test_cache_files_are_keyed_by_embedder_settings(tmp_path):
    CachedEmbedder(CountingEmbedder(key="model-256-64"), tmp_path).encode(["x"])
    other = CountingEmbedder(key="model-128-32")
    CachedEmbedder(other, tmp_path).encode(["x"])
    # A different truncation setting must not reuse the other setting's vectors.
    assert other.calls == [["x"]]
    assert len(list(tmp_path.glob("embeddings-*.npz"))) == 2


def _texts_whose_sha1_ends_in_zero(n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        t = f"prompt number {i}"
        if hashlib.sha1(t.encode()).digest()[-1] == 0:
            out.append(t)
        i += 1
    return out


def test_cache_reload_with_keys_ending_in_a_zero_byte(tmp_path):
    # About 1 prompt in 256 has a SHA-1 digest that ends in b"\x00"; a cache of a few thousand
    # prompts is all but sure to hold some. They must survive a reload like any other key.
    texts = ["first", *_texts_whose_sha1_ends_in_zero(1), "last"]
    vectors = CachedEmbedder(CountingEmbedder(), tmp_path).encode(texts)

    second = CountingEmbedder()
    reloaded = CachedEmbedder(second, tmp_path)
    np.testing.assert_array_equal(reloaded.encode(texts), vectors)
    assert second.calls == []
    reloaded.encode(["a new prompt"])  # and the cache can still be extended and saved
    assert second.calls == [["a new prompt"]]


def test_a_window_too_small_for_the_special_tokens_is_refused(embedder: Embedder):
    from routers.text.tokens import TokenWindow

    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        TokenWindow(embedder.tokenizer, len(embedder.window.prefix + embedder.window.suffix), 1)


def test_routers_sharing_a_cache_do_not_drop_each_others_vectors(tmp_path, monkeypatch):
    # A teacher and a router refitted from it both embed through the cache; each used to hold
    # its own index and rewrite the file from it, so one's additions vanished on the other's
    # next save and were embedded again by every later run.
    from routers.shipped import router_path
    from routers.text.embedders import embedding_cache

    static = str(router_path("fast") / "embedder")
    with embedding_cache(tmp_path):
        first, second = get_embedder(static), get_embedder(static)
        first.encode(["one"])
        second.encode(["two"])
        first.encode(["three"])
    monkeypatch.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)
    counting = CountingEmbedder(get_embedder(static))
    reloaded = CachedEmbedder(counting, tmp_path)
    reloaded.encode(["one", "two", "three"])
    assert counting.calls == []
