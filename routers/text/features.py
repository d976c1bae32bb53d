"""Cheap features of a prompt's surface: length, numbers, code and math markers, task verbs.

Sentence embeddings say what a prompt is about; these say how it is built (a long multi-step
word problem, a code block), which matters for how hard it is and costs microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

FEATURES = (
    "log_chars",
    "log_words",
    "numbers_per_word",
    "log_numbers",
    "lines_per_word",
    "code_marker",
    "operators_per_char",
    "questions",
    "solve_verb",
    "writing_verb",
    "code_word",
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SOLVE = re.compile(r"\b(calculate|compute|how many|how much|solve|prove|find)\b", re.I)
_WRITE = re.compile(r"\b(write|story|poem|essay|email|letter|describe)\b", re.I)
_CODE = re.compile(
    r"\b(code|function|python|program|sql|javascript|c\+\+|algorithm|implement)\b", re.I
)


def prompt_features(prompts: Sequence[str]) -> np.ndarray:
    """One row of `FEATURES` per prompt, float32."""
    rows = []
    for text in prompts:
        chars, words = len(text), len(text.split())
        numbers = len(_NUMBER.findall(text))
        rows.append(
            [
                np.log1p(chars),
                np.log1p(words),
                numbers / (words + 1),
                np.log1p(numbers),
                text.count("\n") / (words + 1),
                float("```" in text or "def " in text or "{" in text or ";" in text),
                sum(text.count(c) for c in "=+-*/^<>") / (chars + 1),
                float(text.count("?")),
                float(bool(_SOLVE.search(text))),
                float(bool(_WRITE.search(text))),
                float(bool(_CODE.search(text))),
            ]
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FEATURES))
