"""Head + tail truncation of token ids, shared by every router that reads a prompt's tokens.

A long prompt (few-shot examples, a pasted document) usually ends with the question that
decides the route, so a prompt over the window keeps its first `head` tokens and its end.
"""

from __future__ import annotations

from collections.abc import Sequence


def head_tail(ids: Sequence[int], budget: int, head: int) -> list[int]:
    """`ids` if they fit in `budget`, else the first `head` and the last `budget - head`."""
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    if len(ids) <= budget:
        return list(ids)
    head = min(head, budget)
    tail = budget - head
    return list(ids[:head]) + (list(ids[len(ids) - tail :]) if tail else [])
