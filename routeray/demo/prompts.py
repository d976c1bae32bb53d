"""Generated prompts of mixed kind and length, for the demo job, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_TOPICS = [
    "photosynthesis",
    "the French Revolution",
    "binary search trees",
    "inflation",
    "black holes",
    "the immune system",
    "supply chains",
    "quantum entanglement",
    "the Roman Empire",
    "neural networks",
    "climate change",
    "compound interest",
]
_NAMES = ["Ava", "Liam", "Noah", "Mia", "Zoe", "Omar", "Ivan", "Lena"]
_ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "coins"]
_LANGS = ["Python", "Rust", "Go", "TypeScript", "SQL"]
_TASKS = [
    "parses a CSV file and sums a column",
    "implements an LRU cache",
    "finds the longest palindromic substring",
    "merges overlapping intervals",
    "retries an HTTP request with exponential backoff",
]
_FILLER = (
    "The committee met again on Tuesday to review the quarterly figures, and several "
    "members raised concerns about the methodology used in the previous report. "
)


def _chat(rng: np.random.Generator) -> str:
    return str(
        rng.choice(
            [
                "hi! how are you today?",
                f"Give me three fun facts about {rng.choice(_TOPICS)}.",
                f"Write a haiku about {rng.choice(_TOPICS)}.",
                "What's a good name for a golden retriever puppy?",
                f"Summarise {rng.choice(_TOPICS)} in one sentence.",
            ]
        )
    )


def _math(rng: np.random.Generator) -> str:
    a, b, c = (int(x) for x in rng.integers(2, 90, size=3))
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return (
        f"{name} has {a} {item}. She buys {b} packs with {c} {item} in each pack and gives "
        f"away a third of everything she has. How many {item} does {name} keep? "
        "Show your reasoning step by step."
    )


def _code(rng: np.random.Generator) -> str:
    return (
        f"Write a {rng.choice(_LANGS)} function that {rng.choice(_TASKS)}. Include type "
        "annotations, handle edge cases, and explain the time complexity."
    )


def _explain(rng: np.random.Generator) -> str:
    topic = rng.choice(_TOPICS)
    return (
        f"I am preparing a lecture on {topic} for first-year students. Explain the key "
        f"ideas of {topic}, common misconceptions, and a worked example, and suggest two "
        "exercises with solutions."
    )


def _long_context(rng: np.random.Generator) -> str:
    passage = _FILLER * int(rng.integers(5, 40))
    return (
        f"Read the following meeting notes.\n\n{passage}\n\nBased on the notes, what "
        f"should the committee do next about {rng.choice(_TOPICS)}? Answer in detail."
    )


_KINDS = (_chat, _math, _code, _explain, _long_context)
_WEIGHTS = np.array([0.3, 0.2, 0.2, 0.2, 0.1])


def generate_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` prompts from 3 to about 700 words, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(_KINDS), size=n, p=_WEIGHTS)
    return [_KINDS[k](rng) for k in kinds]


def write_sample(directory: Path, n: int, seed: int = 0) -> Path:
    """`n` generated prompts as `directory/prompts.parquet`, in about eight row groups so that
    a small sample still spreads over several readers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prompts.parquet"
    table = pa.table({"id": range(n), "prompt": generate_prompts(n, seed)})
    pq.write_table(table, path, row_group_size=max(1, n // 8))
    return path
