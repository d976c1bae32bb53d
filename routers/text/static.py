"""Static embeddings: one vector per vocabulary token, averaged over a prompt (model2vec).

The table is distilled from a sentence-transformers encoder (the default MiniLM) by running
each vocabulary token through it once, then reducing the vectors with PCA and weighting them
by token frequency. Encoding a prompt is then tokenisation plus a mean of table rows: no
transformer pass, so the cost per prompt is about that of the tokenizer alone. No window
either: every token of a long prompt counts, the decisive tail included.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np

from routers.text.hf import offline
from routers.text.word_pieces import WordPieceCache, tokenized

MODEL_TYPE = "model2vec"
# "0" turns the chunk cache off (bench.batch_route compares the two paths this way).
WORD_CACHE_ENV = "ROUTERAY_STATIC_WORD_CACHE"


def is_static_model(path: str | Path | None) -> bool:
    """Whether `path` is a directory holding a model2vec static model."""
    if path is None:
        return False
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


class StaticEmbedder:
    """Encodes prompts to L2-normalised float32 vectors with a model2vec static model; the same
    interface as `routers.text.embedders.Embedder`.

    Loaded by model2vec, but encoded here: model2vec's `encode` walks its batch in Python
    (one list per prompt, one gather per distinct length), while a batch is one call into the
    Rust tokenizer and one sparse product here. The vectors are model2vec's (`encode` with
    `max_length=None`, its settings otherwise) to float rounding: tests/routers/text/
    test_static_encode.py holds the two to 1e-6.

    Where the tokenizer is BERT's (the shipped tables'), prompts skip most of it: their
    whitespace-delimited chunks are tokenised once each and cached (`routers.text.word_pieces`),
    which gives the tokenizer's own ids; the few prompts that path leaves go through the Rust
    tokenizer whole. `word_cache=False` (or ROUTERAY_STATIC_WORD_CACHE=0) sends every prompt
    through the tokenizer.
    """

    def __init__(
        self, model_path: str | Path, *, batch_size: int = 4096, word_cache: bool | None = None
    ) -> None:
        offline()
        from model2vec import StaticModel

        self.model_path = str(model_path)
        self.name = Path(model_path).name
        self.model = StaticModel.from_pretrained(self.model_path, force_download=False)
        self.dim = int(self.model.dim)
        self.batch_size = batch_size
        # model2vec's own copy with its padding off; our copy also without truncation, as no
        # window is the point (model2vec lifts it per call when asked for max_length=None).
        self.tokenizer = copy.deepcopy(self.model.tokenizer)
        self.tokenizer.no_truncation()
        self.unk_token_id = self.model.unk_token_id
        self.table = _token_table(self.model)
        if word_cache is None:
            word_cache = os.environ.get(WORD_CACHE_ENV, "1") != "0"
        supported = word_cache and WordPieceCache.is_supported(self.tokenizer)
        self.words = WordPieceCache(self.tokenizer) if supported else None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # One Rust call per batch (in parallel on RAYON_NUM_THREADS threads), like model2vec's.
        parts = [
            self._encode_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self.words is None:
            return self._pool(*self._tokenized(texts))
        handled, ids, indptr = self.words.token_ids(texts)
        if handled.all():
            return self._pool(ids, indptr)
        vectors = np.empty((len(texts), self.dim), np.float32)
        vectors[handled] = self._pool(ids, indptr)
        rest = ~handled
        vectors[rest] = self._pool(*self._tokenized(list(compress(texts, rest.tolist()))))
        return vectors

    def _tokenized(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of `texts` by the Rust tokenizer, as CSR rows (ids, indptr)."""
        ids, lengths = tokenized(self.tokenizer, texts)
        indptr = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return ids, indptr

    def _pool(self, ids: np.ndarray, indptr: np.ndarray) -> np.ndarray:
        """Unit-length mean of the table rows of each CSR row of token ids."""
        import scipy.sparse

        if self.unk_token_id is not None:
            # model2vec drops unknown tokens (they carry no meaning, word-level models have
            # many): not summed and not counted in the mean.
            known = ids != self.unk_token_id
            if not known.all():
                kept = np.zeros(len(ids) + 1, np.int64)
                np.cumsum(known, out=kept[1:])
                ids, indptr = ids[known], kept[indptr]
        lengths = np.diff(indptr)
        # Row i of `tokens` counts prompt i's tokens: its product with the table is each
        # prompt's sum of token vectors, without materialising a vector per token (a gather
        # and np.add.reduceat moves 1 KiB per token and was 50x slower here).
        tokens = scipy.sparse.csr_matrix(
            (np.ones(len(ids)), ids, indptr), shape=(len(indptr) - 1, len(self.table))
        )
        sums = np.asarray(tokens @ self.table)
        # model2vec's mean, then its normalisation: float32, a zero vector stays zero.
        means = (sums / np.maximum(lengths, 1)[:, None]).astype(np.float32)
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return means / np.where(norms > 0, norms, 1.0)

    def cache_key(self) -> str:
        # By content, not name: every router carries its table in a directory named
        # `embedder/`, and two different tables of one size must not share cached vectors.
        # The code that turns text into vectors here is in the key too, so that a cache never
        # answers for other code (and other embedders' cached vectors need not depend on it).
        digest = hashlib.sha256()
        for path in (*static_sources(), *(Path(self.model_path) / n for n in MODEL_FILES)):
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
        return f"static-{self.dim}-{digest.hexdigest()[:16]}"


# What decides a static vector besides the libraries: this module, the chunk cache, and the
# model's table, tokenizer and settings.
MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")


def static_sources() -> tuple[Path, ...]:
    """The source files of the static embedder (in its cache key)."""
    from routers.text import word_pieces

    return (Path(__file__), Path(word_pieces.__file__))


def _token_table(model: Any) -> np.ndarray:
    """One float64 vector per token id, as model2vec's `_encode_helper` looks them up: the
    table's row (through the vocabulary quantisation's mapping, where there is one) times the
    token's weight (where there are weights). Float64, as model2vec sums: in float32 a prompt
    of 20,000 tokens drifts by 1e-4 (60 MB for a 30,000-token, 256-dim table)."""
    rows = model.embedding if model.token_mapping is None else model.embedding[model.token_mapping]
    if model.weights is not None:
        # In the table's own dtype, as model2vec multiplies.
        rows = rows * model.weights[:, None]
    return np.ascontiguousarray(rows, dtype=np.float64)


def distill_static(
    source: str | Path,
    output: str | Path,
    dims: int = 256,
    dtype: str = "int8",
    source_name: str | None = None,
) -> Path:
    """Distil a static model from the sentence-transformers model at `source` into `output`,
    its table stored as `dtype` (int8 halves float16's size; what that costs in routing is
    measured in docs/BENCHMARKS.md).

    Runs locally from the encoder's own vocabulary: nothing is downloaded."""
    offline()
    from model2vec import StaticModel
    from model2vec.distill import distill

    output = Path(output)
    distill(model_name=str(source), pca_dims=dims).save_pretrained(str(output))
    quantized = StaticModel.from_pretrained(str(output), force_download=False, quantize_to=dtype)
    quantized.save_pretrained(str(output))
    config_path = output / "config.json"
    config = json.loads(config_path.read_text())
    # model2vec records the source as given (an absolute path on this machine).
    config["tokenizer_name"] = source_name or Path(source).name
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    # A generated model card whose links point at the hub under the directory's name.
    (output / "README.md").unlink(missing_ok=True)
    for path in output.iterdir():
        os.chmod(path, 0o644)
    return output
