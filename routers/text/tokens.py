"""A prompt's tokens for a model with a fixed window, shared by every router that reads tokens.

A long prompt (few-shot examples, a pasted document) usually ends with the question that
decides the route, so a prompt over the window keeps its first `head` tokens and its end
(`head_tail`). `TokenWindow` does that for an encoder: the model's own special tokens around
the text, and batches padded only to their longest member."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def head_tail(ids: Sequence[int], budget: int, head: int) -> list[int]:
    """`ids` if they fit in `budget`, else the first `head` and the last `budget - head`."""
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    if len(ids) <= budget:
        return list(ids)
    head = min(head, budget)
    tail = budget - head
    return list(ids[:head]) + (list(ids[len(ids) - tail :]) if tail else [])


class TokenWindow:
    """Ids from a fast (Rust) tokenizer for a `max_tokens` window.

    Where the tokenizer puts its special tokens ([CLS] ... [SEP], <s> ... </s>) is read off one
    encoding, so that any tokenizer works; the text between them keeps its first `head_tokens`
    and its end, where a long prompt's question usually is."""

    def __init__(self, tokenizer: Any, max_tokens: int, head_tokens: int) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.backend.no_truncation()
        self.backend.no_padding()
        bare = self.backend.encode("routing", add_special_tokens=False).ids
        full = self.backend.encode("routing", add_special_tokens=True).ids
        at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        self.prefix, self.suffix = full[:at], full[at + len(bare) :]
        if max_tokens <= len(self.prefix) + len(self.suffix):
            raise ValueError(f"max_tokens={max_tokens} leaves no room for the prompt")
        self.max_tokens = max_tokens
        self.head_tokens = head_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.wants_types = "token_type_ids" in tokenizer.model_input_names

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, cut to the window as head + tail."""
        body = self.max_tokens - len(self.prefix) - len(self.suffix)
        encoded = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [
            self.prefix + head_tail(enc.ids, body, self.head_tokens) + self.suffix
            for enc in encoded
        ]

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """One batch of model inputs (on the CPU), padded only to its own longest member."""
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self.wants_types:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return features
