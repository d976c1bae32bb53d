"""Generated prompts that the shipped `fast` router scores low (easy) or high (hard), each
with a random detail so that ties do not make a strong share jump in steps: the scripted
traffic mixes of the share controller tests."""

from __future__ import annotations

import numpy as np

from routeray.demo import prompts as demo


def easy_prompt(rng: np.random.Generator) -> str:
    """Chat, explanations and notes to summarise."""
    name, topic = rng.choice(demo._NAMES), rng.choice(demo._TOPICS)
    kind = rng.integers(3)
    if kind == 0:
        return f"hi {name}! how are you today? I read about {topic} on day {rng.integers(400)}."
    if kind == 1:
        return demo._explain(rng) + f" Keep it under {rng.integers(50, 900)} words."
    return demo._long_context(rng)


def hard_prompt(rng: np.random.Generator) -> str:
    """Word problems and coding tasks."""
    if rng.random() < 0.5:
        return demo._math(rng)
    return demo._code(rng) + f" The input may hold up to {rng.integers(10, 10**6)} items."
