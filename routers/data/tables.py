"""The table a router kind trains on, from the training sources or a benchmark's own labels.

Routers learn from one of two views of the same data (`BaseRouter.trains_on`): battles
(pairwise outcomes, for MF, SW ranking and the classifiers) or per-prompt labels (for the
quality-gap router). Both can take a benchmark's golden labels, which is how `routeray eval
--cross-fit` trains in the paper's augmented, in-distribution setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from routers.data.battles import BATTLE_COLUMNS, load_battles
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.data.model_outcomes import load_model_outcomes
from routers.data.prompt_labels import golden_labels, load_prompt_labels
from routers.data.sources import decontaminate
from routers.evaluation.benchmarks import SCORE_SCALE
from routers.protocol import BaseRouter

GOLDEN_PREFIX = "golden:"


def load_training_table(
    cls: type[BaseRouter],
    data_dir: str | Path,
    eval_dir: str | Path | None,
    *,
    seed: int = 0,
    exclude_prompts: Iterable[str] = (),
) -> pd.DataFrame:
    """The kind's training table (`cls.trains_on`) from the shared training sources,
    decontaminated against `eval_dir` and `exclude_prompts`."""
    if cls.trains_on == "prompt_labels":
        return load_prompt_labels(data_dir, eval_dir, exclude_prompts=exclude_prompts)
    if cls.trains_on == "model_outcomes":
        return load_model_outcomes(data_dir, eval_dir, exclude_prompts=exclude_prompts)
    return load_battles(data_dir, eval_dir, seed=seed, exclude_prompts=exclude_prompts)


def training_table(
    cls: type[BaseRouter],
    data_dir: str | Path | None,
    eval_dir: str | Path | None,
    *,
    seed: int = 0,
    extra: Sequence[tuple[str, pd.DataFrame]] = (),
    extra_weight: float = 1.0,
    exclude_prompts: Iterable[str] = (),
    sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The shared training sources (None: none; `sources`: only those named) plus a user's own
    labelled tables (`routers.data.user_labels.read_user_labels`), each weighing
    `extra_weight`; everything decontaminated against `eval_dir` and `exclude_prompts`."""
    exclude_prompts = list(exclude_prompts)
    parts = []
    if data_dir is not None:
        shared = load_training_table(
            cls, data_dir, eval_dir, seed=seed, exclude_prompts=exclude_prompts
        )
        if sources:
            unknown = sorted(set(sources) - set(shared["source"]))
            if unknown:
                raise ValueError(
                    f"no training source named {', '.join(unknown)}; the training data holds "
                    + ", ".join(sorted(shared["source"].unique()))
                )
            shared = shared[shared["source"].isin(sources)].reset_index(drop=True)
        parts.append(shared)
    if extra_weight < 0:
        raise ValueError(f"the extra data's weight must be >= 0, got {extra_weight}")
    for name, labels in extra:
        rows = golden_table(cls, labels, name, extra_weight)
        parts.append(decontaminate(rows, eval_dir, rows="labelled rows", also=exclude_prompts))
    if not parts:
        raise ValueError("nothing to train on: give the shared training data or extra data")
    return pd.concat(parts, ignore_index=True)


def golden_table(
    cls: type[BaseRouter], benchmark: pd.DataFrame, name: str, weight: float = 1.0
) -> pd.DataFrame:
    """In-domain rows (prompt, weak_score, strong_score; a benchmark's golden labels or a
    user's own, `routers.data.user_labels`) as training rows of source `golden:<name>`:
    battles of the routed pair, per-prompt labels, or per-model outcomes (`golden_outcomes`).
    Each row weighs `weight` times its own `weight` column, if the rows have one."""
    scale = SCORE_SCALE.get(name, 1.0)
    source = GOLDEN_PREFIX + name
    row_weight = weight * (
        benchmark["weight"].to_numpy(float) if "weight" in benchmark else np.ones(len(benchmark))
    )
    if cls.trains_on == "model_outcomes":
        return golden_outcomes(benchmark, source, row_weight, scale)
    weak = benchmark["weak_score"].to_numpy(float) / scale
    strong = benchmark["strong_score"].to_numpy(float) / scale
    if cls.trains_on == "prompt_labels":
        labels = golden_labels(benchmark["prompt"], weak, strong, source)
        if weight != 1.0 or "weight" in benchmark:
            labels["weight"] = row_weight
        return labels
    return pd.DataFrame(
        {
            "prompt": benchmark["prompt"].to_numpy(),
            "model_a": STRONG_MODEL,
            "model_b": WEAK_MODEL,
            "winner": np.select([strong > weak, strong < weak], ["a", "b"], "tie"),
            "source": source,
            "weight": row_weight,
        }
    )[BATTLE_COLUMNS]


def golden_outcomes(
    rows: pd.DataFrame, source: str, weight: np.ndarray, scale: float = 1.0
) -> pd.DataFrame:
    """In-domain rows as long per-model outcomes (`prompt, model, score, source, weight`): a
    long table (`model`, `score`: N models' labels, as `routeray batch label` writes for many
    models) as it is, a two-model one (`weak_score`, `strong_score`) as two rows per prompt."""
    if {"model", "score"} <= set(rows.columns):
        long = rows[["prompt", "model", "score"]].assign(weight=weight)
    else:
        n = len(rows)
        long = pd.DataFrame(
            {
                "prompt": np.concatenate([rows["prompt"].to_numpy()] * 2),
                "model": [STRONG_MODEL] * n + [WEAK_MODEL] * n,
                "score": np.concatenate(
                    [rows["strong_score"].to_numpy(float), rows["weak_score"].to_numpy(float)]
                ),
                "weight": np.concatenate([weight, weight]),
            }
        )
    long = long.assign(score=long["score"].to_numpy(float) / scale, source=source)
    return long.dropna(subset=["score"])[["prompt", "model", "score", "source", "weight"]]
