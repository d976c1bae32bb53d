"""A hand-made labelled outcome table, its prices and its frontier worked out by hand, for the
N-model `simulate` and `eval` tests, and a router directory that knows its three models."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

# cheap, mid, dear: what each prompt costs on them (USD), whatever its length.
MODELS = ["mistral-7b-instruct-v0.2", "mixtral-8x7b-instruct-v0.1", "gpt-4-1106-preview"]
COSTS = [0.001, 0.005, 0.02]
# True quality: p1 any model answers; p2 needs mid; p3 needs dear; p4 gets 0 / 0.5 / 1.
TRUE = np.array(
    [
        [1.0, 1.0, 1.0],
        [0.0, 1.0, 1.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.5, 1.0],
    ]
)
LO, HI = COSTS[0], COSTS[-1]
# Each model alone: (cost, mean quality); all three are vertices of the zero router's hull
# (slopes cheap->mid .375 / .004 = 93.75 > mid->dear .375 / .015 = 25).
SINGLE = [(0.001, 0.25), (0.005, 0.625), (0.02, 1.0)]
ZERO_ROUTER_AIQ = (0.004 * (0.25 + 0.625) / 2 + 0.015 * (0.625 + 1.0) / 2) / (HI - LO)
# The oracle from all-cheap (.004 and 1 summed over the four prompts), taking each prompt's
# upgrade in order of quality per dollar: p2 cheap->mid (250), p4 cheap->mid (125), p3
# cheap->dear (52.6), p4 mid->dear (33.3); as means over the four prompts.
ORACLE = [(0.001, 0.25), (0.002, 0.5), (0.003, 0.625), (0.00775, 0.875), (0.0115, 1.0)]
ORACLE_AIQ = (
    sum((c1 - c0) * (q0 + q1) / 2 for (c0, q0), (c1, q1) in itertools.pairwise(ORACLE))
    + (HI - ORACLE[-1][0]) * 1.0  # flat at the best quality up to the dearest model
) / (HI - LO)


def write_prices(path: Path) -> Path:
    """Input tokens free, 1,000 answer tokens at 1 / 5 / 20 USD per million: COSTS."""
    models = {
        m: {"input_per_million": 0.0, "output_per_million": c * 1000, "mean_output_tokens": 1000}
        for m, c in zip(MODELS, COSTS, strict=True)
    }
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def write_table(path: Path, prompts: list[str]) -> Path:
    """The four prompts' outcomes in the long format (`id, prompt, model, score`)."""
    rows = [
        {"id": f"p{i + 1}", "prompt": prompt, "model": model, "score": TRUE[i, j]}
        for i, prompt in enumerate(prompts)
        for j, model in enumerate(MODELS)
    ]
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def router_and_prompts(directory: Path) -> tuple[Path, list[str]]:
    """A trained N-model router over MODELS (tests/support/multi_router.py's topic router) and
    four prompts: one each that it sends to each model, and one more."""
    from tests.support.multi_router import topic_router

    path, sent = topic_router(directory, MODELS)
    return path, [*(sent[m] for m in MODELS), "Explain how a transformer language model works."]
