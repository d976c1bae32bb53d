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

A chunk not yet cached is cut further, at ASCII punctuation (BertPreTokenizer makes every
ASCII punctuation character a pre-token of its own, so a chunk's tokens are its pieces' tokens
one after another), and only pieces not yet seen reach the tokenizer: "word," "word." "(word"
cost it "word" once. On real prompts that is 2.4 times fewer strings to tokenise than distinct
chunks (docs/BENCHMARKS.md, issue 29).

Left to the caller's own tokenizer path: prompts holding an added token's text ("[PAD]",
"[UNK]": the tokenizer matches those in the raw text, before lowercasing), and strings that
are not valid text (a lone surrogate: the tokenizer refuses those, and must go on refusing).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Sequence
from itertools import chain, compress, repeat
from operator import attrgetter
from typing import Any

import numpy as np

# Between two prompts in the joined batch: a byte that UTF-8 never uses, spaced so that it is
# a chunk of its own.
SEPARATOR = b"\xff"
# What BertNormalizer's clean_text deletes from ASCII text: category Cc except \t \n \r.
CONTROL = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])

# A chunk's pieces: each ASCII punctuation character alone, the runs between them, and the
# separator that ends each chunk of a batch of new chunks.
PIECE = re.compile(rb"\xff|[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~\xff]+")

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
        cached = ("_lock", "_chunks", "_pieces")
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
        self._chunks = _IdTable()
        # A piece is a substring of a cached chunk: its table is bounded by theirs.
        self._pieces = _IdTable()

    def __len__(self) -> int:
        """Chunks cached (the separator not counted)."""
        return len(self._chunks)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of the chunks cached (their pieces, cached apart, take at most as many)."""
        return self._chunks.bytes

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
            if len(self._chunks) > self.max_chunks or self._chunks.bytes > self.max_bytes:
                self._reset()
            ids, ends, index = self._chunks.lookup(data.split(), self._chunk_ids)
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

    def _chunk_ids(self, chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths) of new distinct chunks: their pieces' ids, one after another."""
        pieces = PIECE.findall(SEPARATOR.join(chunks) + SEPARATOR)
        ids, ends, index = self._pieces.lookup(pieces, self._tokenized)
        # Chunk k's ids end where the separator after it stands.
        return ids, np.diff(ends[index == 0], prepend=0)

    def _tokenized(self, pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths) of new distinct pieces, in one Rust call."""
        return tokenized(self.tokenizer, [piece.decode() for piece in pieces])


def tokenized(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths): the token ids of `texts` one after another (no special tokens) and how
    many each text has, from one `encode_batch_fast` call into the Rust tokenizer."""
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    # map/chain/attrgetter iterate in C: no Python bytecode runs per text or per token.
    lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
    ids = np.fromiter(
        chain.from_iterable(map(attrgetter("ids"), encodings)), np.int32, int(lengths.sum())
    )
    return ids, lengths


class _IdTable:
    """Byte strings to token ids, in flat arrays (CSR); key 0 is the separator, with none."""

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {SEPARATOR: 0}
        self.bytes = 0
        self.starts = np.zeros(1, np.int64)  # where key k's ids begin in `ids`
        self.lengths = np.zeros(1, np.int64)  # how many ids key k has
        self.ids = np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.index) - 1

    def lookup(
        self, keys: list[bytes], fill: Callable[[list[bytes]], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ids of `keys` one after another, where each key's ids end, and each key's number
        (0: a separator); keys not yet held are added with `fill(new distinct keys)`'s (ids,
        lengths)."""
        index = np.fromiter(map(self.index.get, keys, repeat(-1)), np.int64, len(keys))
        missing = index < 0
        if missing.any():
            unseen = missing.tolist()
            new = list(dict.fromkeys(compress(keys, unseen)))
            self._add(new, *fill(new))
            index[missing] = np.fromiter(
                map(self.index.__getitem__, compress(keys, unseen)), np.int64
            )
        lengths = self.lengths[index]
        ends = np.cumsum(lengths)
        # Occurrence k's j-th id is ids[starts[k] + j] and lands at (ends - lengths)[k] + j:
        # one repeat of each occurrence's shift, no loop over occurrences.
        shift = np.repeat(self.starts[index] - (ends - lengths), lengths)
        return self.ids[np.arange(len(shift)) + shift], ends, index

    def _add(self, keys: list[bytes], ids: np.ndarray, lengths: np.ndarray) -> None:
        first = len(self.index)
        self.index.update(zip(keys, range(first, first + len(keys)), strict=True))
        self.bytes += sum(map(len, keys))
        self.starts = np.concatenate([self.starts, len(self.ids) + np.cumsum(lengths) - lengths])
        self.lengths = np.concatenate([self.lengths, lengths])
        self.ids = np.concatenate([self.ids, ids.astype(np.int32, copy=False)])
