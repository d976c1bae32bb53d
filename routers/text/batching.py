"""Length-bucketed batches: the shared way routers feed variable-length prompts to a model."""

from __future__ import annotations

import numpy as np

# Defaults in one place. An encoder batch holds at most MAX_BATCH_ROWS prompts and, padded,
# at most this many tokens (rows x longest row): the sentence embedder's, and the BERT
# classifier's at scoring time.
MAX_BATCH_ROWS = 128
EMBEDDER_BATCH_TOKENS = 8192
CLASSIFIER_BATCH_TOKENS = 16384
# Prompts per forward pass of a causal LM router, scoring and training alike: its prompts
# carry an instruction template and a model far larger than an encoder.
CAUSAL_LM_BATCH_SIZE = 8


def length_batches(lengths: np.ndarray, max_batch_size: int, batch_tokens: int) -> list[np.ndarray]:
    """Indices sorted by length, cut into batches whose padded size (rows x longest row) stays
    under `batch_tokens`: padding every prompt to the longest of a random batch costs more on
    a CPU than batching gains."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        # Sorted ascending, so the last member is the longest: the batch's padded size.
        while (
            end < len(order)
            and end - start < max_batch_size
            and (end - start + 1) * lengths[order[end]] <= batch_tokens
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches
