"""A real, tiny N-model router whose best model depends on the prompt's topic: model i answers
prompts about topic i and no other model does. Trained through the `multi` kind's own `train`
on generated prompts, so tests exercise the real kind end to end; it reads prompts with the
shipped static embedder (`fast`'s table), which every process that loads it opens in well
under a second, where MiniLM would take seconds in each Ray actor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TOPICS = {
    "cooking": [
        "How long should I roast a {x} in the oven?",
        "Give me a recipe for {x} soup.",
        "What spices go well with {x}?",
        "How do I bake bread with {x} flour?",
    ],
    "maths": [
        "Solve the equation {n}x + 3 = {m} for x.",
        "What is the derivative of x^{n} times sin(x)?",
        "Prove that the sum of the first {n} odd numbers is a square.",
        "Compute the integral of x^{n} from 0 to {m}.",
    ],
    "programming": [
        "Write a Python function that reverses a list of {x}.",
        "Why does my JavaScript loop over {x} throw a TypeError?",
        "Explain recursion in Rust with an example about {x}.",
        "How do I sort a dictionary of {x} by value in Python?",
    ],
    "travel": [
        "What should I pack for a week of hiking near {x}?",
        "Which museums are worth visiting in {x}?",
        "How do I get from the airport to the centre of {x}?",
        "Plan a three day trip to {x} on a budget.",
    ],
}
FILL = {
    "cooking": ["chicken", "pumpkin", "lentil", "carrot", "tomato", "rye"],
    "programming": ["strings", "users", "numbers", "files", "orders", "tokens"],
    "travel": ["Lisbon", "Kyoto", "Oslo", "Lima", "Cairo", "Dublin"],
}


def topic_prompts(topic: str, count: int, offset: int = 0) -> list[str]:
    templates = TOPICS[topic]
    out = []
    for i in range(offset, offset + count):
        template = templates[i % len(templates)]
        fill = FILL.get(topic, ["x"])
        out.append(template.format(x=fill[i % len(fill)], n=i % 7 + 2, m=3 * i + 5))
    return out


def topic_router(directory: Path, models: list[str]) -> tuple[Path, dict[str, str]]:
    """A `multi` router over `models` (at most four) saved in `directory`, and for each model a
    prompt (not trained on) that the router, under the default rule with equal prices, sends to
    it."""
    from routers import SHIPPED, load_router, save_router
    from routers.decision.choice import choose
    from routers.kinds.multi import MultiModelRouter

    if not 2 <= len(models) <= len(TOPICS):
        raise ValueError(f"topic_router takes 2 to {len(TOPICS)} models")
    topics = list(TOPICS)[: len(models)]
    rows = [
        {"prompt": prompt, "model": model, "score": float(i == j), "source": "topics"}
        for i, topic in enumerate(topics)
        for prompt in topic_prompts(topic, 24)
        for j, model in enumerate(models)
    ]
    # mf: an item-response model ranks models the same way on every prompt, so it cannot
    # learn that each model is best on a topic of its own.
    router = MultiModelRouter.train(
        pd.DataFrame(rows),
        recipe="mf",
        min_labels=10,
        dim=8,
        learning_rate=2e-2,
        max_epochs=150,
        embedder={"model_path": str(SHIPPED["fast"] / "embedder")},
    )
    path = save_router(router, directory)
    loaded = load_router(path, models=models)
    sent = {
        model: topic_prompts(topic, 1, offset=40)[0]
        for model, topic in zip(models, topics, strict=True)
    }
    chosen = choose(loaded.qualities(list(sent.values())), np.zeros(len(models)))
    got = [models[i] for i in chosen]
    if got != list(sent):
        raise AssertionError(f"topic router sends {list(sent.values())} to {got}")
    return path, sent
