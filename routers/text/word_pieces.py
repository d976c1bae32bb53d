"""Token ids of prompts, each distinct whitespace-delimited chunk tokenised once and cached.

For a BERT tokenizer (BertNormalizer with clean_text and lowercase, BertPreTokenizer,
WordPiece), a prompt's tokens are the concatenation of its pre-tokens' WordPiece tokens, and a
pre-token's tokens depend on that pre-token alone. BertPreTokenizer splits on whitespace first
and on punctuation within each piece, so the same holds one level up: a prompt's tokens are the
concatenation of its whitespace-delimited chunks' tokens (the tokenizer run on the chunk alone
splits its punctuation as it would inside the prompt). Prompts repeat their chunks ("the",
"of", "x:"), so tokenising each distinct chunk once and looking it up in a dict replaces most
of the Rust tokenizer's work (about 90 % of the static embedder's time, docs/BENCHMARKS.md
issue 29) with C-level `bytes.split` and dict lookups.

The batch is handled as UTF-8 bytes, and only its ASCII is normalised here: the ASCII control
characters other than tab, newline and carriage return are deleted (clean_text removes
category Cc, joining the neighbours), ASCII letters lowercased (a key shared by "The" and
"the"), and the text split at ASCII whitespace, which the normaliser makes a space. Every
other character stays in its chunk for the tokenizer to normalise, and that gives what it
gives inside the whole prompt: BertNormalizer works character by character (cleaning, spaces
around CJK characters, lowercasing), and its accent stripping (NFD, then dropping
non-spacing marks) reorders only runs of combining marks, which no space interrupts. UTF-8
puts no byte below 0x80 inside a multi-byte character and never uses 0xFF (the separator).

Left to the caller's own tokenizer path: prompts holding an added token's text ("[PAD]",
"[UNK]": the tokenizer matches those in the raw text, before lowercasing), and strings that
are not valid text (a lone surrogate: the tokenizer refuses those, and must go on refusing).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Sequence
from itertools import chain, compress, repeat
from operator import attrgetter
from typing import Any

import numpy as np

# Between two prompts in the joined batch: a byte that UTF-8 never uses, spaced so that it is
# a chunk of its own.
SEPARATOR = b"\xff"
# What BertNormalizer's clean_text deletes from ASCII text: category Cc except \t \n \r.
CONTROL = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])

DEFAULT_MAX_CHUNKS = 1 << 18
DEFAULT_MAX_BYTES = 1 << 23


def _findable(content: str) -> bool:
    """Whether `token_ids` finds every prompt holding the added token `content` by looking for
    it lowercased in the normalised batch: non-empty, printable ASCII (clean_text deletes
    nothing from it) and within one chunk (no space)."""
    return bool(content) and content.isascii() and content.isprintable() and " " not in content


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class WordPieceCache:
    """Token ids of a batch of prompts through a bounded cache of chunk -> ids.

    Memory: the cache is emptied before a batch once it holds more than `max_chunks` chunks
    or `max_bytes` bytes of chunks (UTF-8; a token covers at least one byte, so this also
    bounds the ids), so it never exceeds those limits plus one batch's new chunks, whatever
    the traffic: about 150 bytes a chunk of English (measured in docs/BENCHMARKS.md), so
    some 40 MB at the default limits. Thread-safe: a lock covers the lookups and the
    cache's growth.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """`tokenizer`: a `tokenizers.Tokenizer` that `is_supported` accepts."""
        # Our own copy: a chunk must not be padded or cut, whatever the caller's settings.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # Matched as it would be after normalising, so that every prompt the tokenizer could
        # match an added token in is found (some that it would not are too: they just take
        # the caller's path).
        self.added = [
            str(token["content"]).lower().encode()
            for token in json.loads(tokenizer.to_str()).get("added_tokens", [])
        ]
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._reset()

    @staticmethod
    def is_supported(tokenizer: Any) -> bool:
        """Whether the chunking is exact for `tokenizer` (its JSON): BertNormalizer with
        clean_text and lowercase, BertPreTokenizer, WordPiece, and added tokens that
        `token_ids` can find. BertNormalizer's other settings (Chinese characters, accents)
        act within a chunk, in the tokenizer itself."""
        config = json.loads(tokenizer.to_str())
        normalizer = config.get("normalizer") or {}
        return (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("clean_text") is True
            and normalizer.get("lowercase") is True
            and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and (config.get("model") or {}).get("type") == "WordPiece"
            and all(_findable(str(token["content"])) for token in config.get("added_tokens", []))
        )

    def __getstate__(self) -> dict[str, Any]:
        # A copy (Ray ships routers to its workers this way) starts with an empty cache of its
        # own: no lock to copy, and no cached chunks to carry.
        cached = ("_lock", "_index", "_bytes", "_starts", "_lengths", "_ids")
        return {k: v for k, v in self.__dict__.items() if k not in cached}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._reset()

    def clear(self) -> None:
        """Forget every chunk."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        # Chunk 0 is the separator between prompts: no tokens.
        self._index: dict[bytes, int] = {SEPARATOR: 0}
        self._bytes = 0
        self._starts = np.zeros(1, np.int64)  # where chunk k's ids begin in `_ids`
        self._lengths = np.zeros(1, np.int64)  # how many ids chunk k has
        self._ids = np.zeros(0, np.int32)

    def __len__(self) -> int:
        """Chunks cached (the separator not counted)."""
        return len(self._index) - 1

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(handled, ids, indptr): which of `texts` this path tokenised (a bool per text),
        and their token ids as CSR rows in input order (the ids of handled text i are
        ids[indptr[k]:indptr[k + 1]], k its rank among the handled), unknown tokens
        included, as the tokenizer returns them without special tokens."""
        handled = np.ones(len(texts), bool)
        try:
            data = self._joined(texts, handled)
        except UnicodeEncodeError:
            handled = np.fromiter(map(_encodable, texts), bool, len(texts))
            data = self._joined(texts, handled)
        if self.added and any(token in data for token in self.added):
            handled[np.flatnonzero(handled)[self._holding_added(data)]] = False
            data = self._joined(texts, handled)
        count = int(handled.sum())
        if not count:
            return handled, np.zeros(0, np.int32), np.zeros(1, np.int64)
        with self._lock:
            ids, ends, index = self._ids_of(data.split())
        # Text k's ids end where the separator after it stands (the separator has none).
        indptr = np.empty(count + 1, np.int64)
        indptr[0] = 0
        indptr[1:-1] = ends[index == 0]
        indptr[-1] = len(ids)
        return handled, ids, indptr

    def _joined(self, texts: Sequence[str], handled: np.ndarray) -> bytes:
        """The handled texts as one normalised byte string, separated by ` \\xff `."""
        chosen = texts if handled.all() else list(compress(texts, handled.tolist()))
        return b" \xff ".join(map(str.encode, chosen)).translate(None, CONTROL).lower()

    def _holding_added(self, data: bytes) -> np.ndarray:
        """Ranks (among the texts joined in `data`) of those holding an added token's text."""
        found = []
        for token in self.added:
            at = data.find(token)
            while at >= 0:
                found.append(at)
                at = data.find(token, at + 1)
        separators = np.flatnonzero(np.frombuffer(data, np.uint8) == SEPARATOR[0])
        return np.unique(np.searchsorted(separators, found))

    def _ids_of(self, chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ids of `chunks` one after another, where each chunk's ids end, and each
        chunk's number in the cache (0: a separator)."""
        if len(self) > self.max_chunks or self._bytes > self.max_bytes:
            self._reset()
        index = np.fromiter(map(self._index.get, chunks, repeat(-1)), np.int64, len(chunks))
        missing = index < 0
        if missing.any():
            unseen = missing.tolist()
            self._add(list(dict.fromkeys(compress(chunks, unseen))))
            index[missing] = np.fromiter(
                map(self._index.__getitem__, compress(chunks, unseen)), np.int64
            )
        lengths = self._lengths[index]
        ends = np.cumsum(lengths)
        # Occurrence k's j-th id is _ids[_starts[k] + j] and lands at (ends - lengths)[k] + j:
        # one repeat of each occurrence's shift, no loop over occurrences.
        shift = np.repeat(self._starts[index] - (ends - lengths), lengths)
        return self._ids[np.arange(len(shift)) + shift], ends, index

    def _add(self, chunks: list[bytes]) -> None:
        """Tokenise `chunks` (new, distinct) in one Rust call and append them to the cache."""
        encodings = self.tokenizer.encode_batch_fast(
            [chunk.decode() for chunk in chunks], add_special_tokens=False
        )
        lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
        ids = np.fromiter(
            chain.from_iterable(map(attrgetter("ids"), encodings)), np.int32, int(lengths.sum())
        )
        first = len(self._index)
        self._index.update(zip(chunks, range(first, first + len(chunks)), strict=True))
        self._bytes += sum(map(len, chunks))
        self._starts = np.concatenate([self._starts, len(self._ids) + np.cumsum(lengths) - lengths])
        self._lengths = np.concatenate([self._lengths, lengths])
        self._ids = np.concatenate([self._ids, ids])
