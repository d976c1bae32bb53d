"""The training sources in ../shared/data/train, read into one battle table.

A battle is (prompt, model_a, model_b, winner in {a, b, tie}, source, weight). Pairwise
judgements are battles already; per-model scores and per-model correctness become battles
between the models that answered the same prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from routers.data.model_names import normalize_model_name
from routers.data.sources import (
    ALPACA_FILE,
    ARENA_FILE,
    MMLU_PRO_FILE,
    decontaminate,
    mmlu_derived,
    require_file,
)

logger = logging.getLogger(__name__)

BATTLE_COLUMNS = ["prompt", "model_a", "model_b", "winner", "source", "weight"]


def alpaca_battles(data_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(require_file(data_dir / ALPACA_FILE))
    df = df[df["winner"].isin(["model_a", "model_b", "tie"])]
    return pd.DataFrame(
        {
            "prompt": df["prompt"].to_numpy(),
            "model_a": df["model_a"].map(normalize_model_name).to_numpy(),
            "model_b": df["model_b"].map(normalize_model_name).to_numpy(),
            "winner": df["winner"].map({"model_a": "a", "model_b": "b", "tie": "tie"}).to_numpy(),
            "source": "alpaca_eval",
            "weight": 1.0,
        }
    )


def _pairwise(
    groups: Iterable[tuple[str, list[str], np.ndarray]],
    source: str,
    max_pairs: int | None,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Every pair of models graded on one prompt becomes a battle; higher grade wins."""
    prompts, a_names, b_names, winners = [], [], [], []
    for prompt, models, grades in groups:
        pairs = list(combinations(range(len(models)), 2))
        if max_pairs is not None and len(pairs) > max_pairs:
            pairs = [pairs[i] for i in rng.choice(len(pairs), max_pairs, replace=False)]
        for i, j in pairs:
            prompts.append(prompt)
            a_names.append(models[i])
            b_names.append(models[j])
            winners.append(
                "a" if grades[i] > grades[j] else "b" if grades[i] < grades[j] else "tie"
            )
    return pd.DataFrame(
        {
            "prompt": prompts,
            "model_a": a_names,
            "model_b": b_names,
            "winner": winners,
            "source": source,
            "weight": 1.0,
        }
    )


def arena_battles(data_dir: Path, rng: np.random.Generator) -> pd.DataFrame:
    df = pd.read_parquet(require_file(data_dir / ARENA_FILE)).dropna(subset=["score"])
    df["model"] = df["model"].map(normalize_model_name)
    groups = (
        (g["prompt"].iloc[0], g["model"].tolist(), g["score"].to_numpy())
        for _, g in df.groupby("question_id", sort=True)
    )
    return _pairwise(groups, "arena_hard", None, rng)


def mmlu_pro_battles(
    data_dir: Path, rng: np.random.Generator, max_pairs_per_question: int | None
) -> tuple[pd.DataFrame, int]:
    """Golden labels from MMLU-Pro correctness; MMLU-derived questions are left out because
    their stems are MMLU eval prompts. Returns the battles and how many questions were left out."""
    df = pd.read_parquet(require_file(data_dir / MMLU_PRO_FILE))
    derived = mmlu_derived(df)
    df = df[~derived]
    columns = [c for c in df.columns if c.startswith("correct__")]
    names = np.array([normalize_model_name(c.removeprefix("correct__")) for c in columns])
    correct = df[columns].astype("float64").to_numpy()

    def groups() -> Iterable[tuple[str, list[str], np.ndarray]]:
        for prompt, row in zip(df["prompt"], correct, strict=True):
            answered = ~np.isnan(row)
            yield prompt, names[answered].tolist(), row[answered]

    return _pairwise(groups(), "mmlu_pro", max_pairs_per_question, rng), int(derived.sum())


def load_battles(
    data_dir: str | Path,
    eval_dir: str | Path | None = None,
    *,
    sources: Iterable[str] = ("alpaca_eval", "arena_hard", "mmlu_pro"),
    source_weights: dict[str, float] | None = None,
    max_pairs_per_question: int | None = 45,
    seed: int = 0,
    exclude_prompts: Iterable[str] = (),
) -> pd.DataFrame:
    """All chosen sources as one battle table, decontaminated against `eval_dir` if given
    and against `exclude_prompts` (a user's evaluation set)."""
    data_dir = Path(data_dir)
    rng = np.random.default_rng(seed)
    wanted = set(sources)
    parts = []
    if "alpaca_eval" in wanted:
        parts.append(alpaca_battles(data_dir))
    if "arena_hard" in wanted:
        parts.append(arena_battles(data_dir, rng))
    if "mmlu_pro" in wanted:
        battles, derived = mmlu_pro_battles(data_dir, rng, max_pairs_per_question)
        logger.info(f"decontamination: mmlu_pro: left out {derived} MMLU-derived questions")
        parts.append(battles)
    unknown = wanted - {"alpaca_eval", "arena_hard", "mmlu_pro"}
    if unknown:
        raise ValueError(f"unknown training sources: {sorted(unknown)}")
    battles = pd.concat(parts, ignore_index=True)[BATTLE_COLUMNS]
    battles = decontaminate(battles, eval_dir, also=exclude_prompts)
    for source, weight in (source_weights or {}).items():
        battles.loc[battles["source"] == source, "weight"] = float(weight)
    counts = battles["source"].value_counts()
    logger.info("battles: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return battles
