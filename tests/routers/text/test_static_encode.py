"""The static embedder's own batch encoding (one Rust tokenizer call and one sparse product a
batch) gives model2vec's vectors, and so the shipped `fast` router's scores, to 1e-6."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routeray.demo.prompts import generate_prompts
from routers import load_router, router_path
from routers.text.static import StaticEmbedder

SHIPPED_TABLE = router_path("fast") / "embedder"

EDGE_PROMPTS = [
    "",
    "   \n\t ",
    "hello",
    "🦄🦄🦄",  # only unknown tokens: no vector at all
    "🦄 unicorn 🦄",  # unknown tokens among known ones: left out of the mean
    "日本語のテキストを要約してください。",
    "Café naïve résumé Ærøskøbing ß İstanbul",
    "مرحبا بالعالم שלום עולם",
    "a\u0301\u200b\x00\x07 control\tand\u2028separators\r\n",
    "def f(x):\n    return x ** 2  # 🔥 {'k': [1, 2.5e-3]}",
    "word " * 20_000,  # 20,000 tokens: no window
    "Prove that there are infinitely many primes. " * 300 + "Then bake a cake.",
    "x" * 100_000,  # one word too long for WordPiece: one unknown token, no vector
]

# What the cached-chunk path (routers/text/word_pieces.py) must get right.
WORD_EDGE_PROMPTS = [
    # clean_text deletes these ASCII controls, joining their neighbours (\x0b, \x0c, \x1c-\x1f
    # are whitespace to Python's str.split: not to the tokenizer)
    "ab\x0bcd ef\x0cgh ij\x1ckl mn\x1fop qr\x7fst uv\x00wx y\x08z",
    "".join(map(chr, range(32))) + "only\x7fcontrols" + "\x7f",
    "\x0b\x0c\x1c\x7f",
    "tab\tnew\nline\rreturn\r\n  spaces",
    "".join(map(chr, range(32, 127))),  # every printable ASCII character, one chunk
    " ".join(map(chr, range(32, 127))),  # and each alone
    "a" * 99,
    "b" * 100,
    "c" * 101,  # one unknown token
    "(" + "d" * 101 + ")",  # a too-long word inside a chunk: its punctuation stays known
    "e" * 60 + "-" + "f" * 60,  # a 121-character chunk of two words that are not too long
    "abc123def 42x 3.14159 1e-10 0xFF 2nd 1,000,000 v2.0.1",
    "HELLO World MiXeD CaSe",
    "?!...,;:()[]{}<>'\"`~@#$%^&*-_=+|\\/",  # only punctuation
    "[PAD] padded [UNK] unknown",  # added tokens: matched in the raw text, before lowercasing
    "[pad] and [unk] lowercased are not added tokens",
    "",
    "",
    "repeated prompt, repeated words",
    "repeated prompt, repeated words",
    "naïve mixed with ascii",
    "repeated prompt, repeated words",
    # Non-ASCII characters stay in their chunk for the tokenizer: marks after a space or
    # around a deleted control, other Unicode spaces, a Kelvin sign that lowercases to ASCII,
    # zero-width and replacement characters, CJK runs longer than 100 characters.
    "e \u0301x e\x00\u0301\u0327 \u0301",
    "a\u00a0b\u3000c\u2028d\u0085e\u2009f",
    "\u212aELVIN İstanbul ΣΊΣΥΦΟΣ ﬁne ß Ǆ ｆｕｌｌ",
    "\u200bzero\u200bwidth\ufeff \ufffd? \U000e0041",
    "It’s “quoted” — really… 2×3 ≤ 7 ½",
    "中文字符test混合" + "長" * 120 + " " + "語" * 101,
    "\u0301",
]


def model2vec_vectors(embedder: StaticEmbedder, texts: list[str]) -> np.ndarray:
    """What the embedder returned before it encoded batches itself: model2vec's `encode` with
    no window, made unit length (a zero vector stays zero)."""
    out = embedder.model.encode(
        texts, max_length=None, batch_size=1024, use_multiprocessing=False
    ).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return EDGE_PROMPTS + WORD_EDGE_PROMPTS + generate_prompts(1500, seed=3)


@pytest.fixture(scope="module")
def shipped() -> StaticEmbedder:
    return StaticEmbedder(SHIPPED_TABLE)


def test_vectors_match_model2vec(shipped: StaticEmbedder, prompts: list[str]):
    ours = shipped.encode(prompts)
    assert ours.dtype == np.float32 and ours.shape == (len(prompts), shipped.dim)
    np.testing.assert_allclose(ours, model2vec_vectors(shipped, prompts), rtol=0, atol=1e-6)
    # The edge cases are what they claim to be: nothing known is a zero vector, the rest unit.
    norms = np.linalg.norm(ours[: len(EDGE_PROMPTS)], axis=1)
    nothing_known = [0, 1, 3, len(EDGE_PROMPTS) - 1]
    assert (norms[nothing_known] == 0.0).all()
    np.testing.assert_allclose(np.delete(norms, nothing_known), 1.0, atol=1e-5)


def test_batches_are_independent(prompts: list[str]):
    """Batch boundaries (here every 7 prompts) change nothing: a prompt's vector is its own."""
    small = StaticEmbedder(SHIPPED_TABLE, batch_size=7)
    whole = StaticEmbedder(SHIPPED_TABLE, batch_size=100_000)
    np.testing.assert_allclose(small.encode(prompts), whole.encode(prompts), rtol=0, atol=1e-7)
    assert small.encode([]).shape == (0, small.dim)


def test_model2vec_encode_is_not_used(shipped: StaticEmbedder, monkeypatch: pytest.MonkeyPatch):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("model2vec's per-prompt encode was called")

    monkeypatch.setattr(shipped.model, "encode", refuse)
    assert shipped.encode(["a prompt"]).shape == (1, shipped.dim)


def test_vocabulary_quantised_table_matches_model2vec(tmp_path: Path, prompts: list[str]):
    """A table whose tokens share rows (model2vec's vocabulary quantisation: a row per token
    through a mapping, times a weight per token) is looked up as model2vec looks it up. Built
    directly, with random sharing, rather than by model2vec's k-means (40 s here)."""
    from model2vec import StaticModel

    source = StaticModel.from_pretrained(str(SHIPPED_TABLE), force_download=False)
    rng = np.random.default_rng(0)
    rows = 500
    quantised = StaticModel(
        vectors=source.embedding[:rows].astype(np.float64),
        tokenizer=source.tokenizer,
        config=source.config,
        normalize=True,
        weights=rng.uniform(0.1, 2.0, len(source.tokens)),
        token_mapping=rng.integers(0, rows, len(source.tokens)),
    )
    quantised.save_pretrained(str(tmp_path / "vq"))
    embedder = StaticEmbedder(tmp_path / "vq")
    assert embedder.model.token_mapping is not None and embedder.model.weights is not None
    ours = embedder.encode(prompts)
    np.testing.assert_allclose(ours, model2vec_vectors(embedder, prompts), rtol=0, atol=1e-6)
    # The mapping is used: the shipped table's vectors are not these.
    assert not np.allclose(ours[2], StaticEmbedder(SHIPPED_TABLE).encode([prompts[2]])[0])


def test_fast_router_scores_match_model2vec_path(prompts: list[str]):
    # The distilled router's own scores; a probability curve the directory records (applied by
    # load_router's wrapper, `.raw` is the router inside) maps them afterwards.
    loaded = load_router(router_path("fast"))
    router = getattr(loaded, "raw", loaded)
    reference = 1.0 / (1.0 + np.exp(-router.logit(model2vec_vectors(router.embedder, prompts))))
    scores = router.score(prompts)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-6)
    # Not all one value: the comparison means something.
    assert np.ptp(scores) > 0.05
