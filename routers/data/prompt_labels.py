"""Per-prompt outcome labels: how well every model did on each training prompt.

Battles say which of two answers won; for routing, the sharper question is how hard a prompt
is and how much a strong model gains over a weak one on it. Each source holds many models'
results on the same prompt (MMLU-Pro: 30 models' correctness; Arena-Hard: 14 models' grades;
AlpacaEval: about 100 models judged against gpt-4-1106), and averaging over them gives labels
far less noisy than one pair's single outcome. A row is one prompt:

- `weak_q`, `strong_q`: the routed pair's quality on the prompt in [0, 1] (the strong model's
  stand-in where it is absent: the source's best model), used to measure routing quality.
- `all_fail`: 1 - mean quality over all models (difficulty);
- `mid_fail`: 1 - mean quality of the models nearest the weak model in overall quality;
- `top_minus_all`, `top_minus_mid`: the best models' mean quality minus those means;
- `pair_gap`: strong_q - weak_q.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routers.data.model_names import STRONG_MODEL, WEAK_MODEL, normalize_model_name
from routers.data.sources import (
    ALPACA_FILE,
    ARENA_FILE,
    MMLU_PRO_FILE,
    decontaminate,
    mmlu_derived,
    require_file,
)

logger = logging.getLogger(__name__)

PROMPT_LABELS = ("all_fail", "mid_fail", "top_minus_all", "top_minus_mid", "pair_gap")
LABEL_COLUMNS = ["prompt", "source", "weak_q", "strong_q", *PROMPT_LABELS]
TOP_MODELS = 3
MID_MODELS = 6


def _label_frame(
    prompts: Any,
    source: str,
    weak_q: Any,
    strong_q: Any,
    *,
    all_fail: Any,
    mid_fail: Any,
    top_minus_all: Any,
    top_minus_mid: Any,
) -> pd.DataFrame:
    """One source's rows in `LABEL_COLUMNS` order; `pair_gap` follows from the pair."""
    weak_q, strong_q = (np.asarray(q, dtype=float) for q in (weak_q, strong_q))
    return pd.DataFrame(
        {
            "prompt": np.asarray(prompts),
            "source": source,
            "weak_q": weak_q,
            "strong_q": strong_q,
            "all_fail": np.asarray(all_fail, dtype=float),
            "mid_fail": np.asarray(mid_fail, dtype=float),
            "top_minus_all": np.asarray(top_minus_all, dtype=float),
            "top_minus_mid": np.asarray(top_minus_mid, dtype=float),
            "pair_gap": strong_q - weak_q,
        }
    )


def labels_from_quality(
    prompts: pd.Series,
    quality: pd.DataFrame,
    source: str,
    strong_model: str = STRONG_MODEL,
    weak_model: str = WEAK_MODEL,
) -> pd.DataFrame:
    """Labels from a prompts x models quality matrix in [0, 1] (NaN: model did not answer)."""
    quality = quality.rename(columns=normalize_model_name)
    overall = quality.mean().sort_values(ascending=False)
    if weak_model not in overall.index:
        raise ValueError(f"{source}: the weak model {weak_model} has no results")
    top = overall.index[:TOP_MODELS]
    nearest = (overall - overall[weak_model]).abs().sort_values().index[:MID_MODELS]
    strong = strong_model if strong_model in overall.index else overall.index[0]
    q = quality.to_numpy(dtype=float)
    every = np.nanmean(q, axis=1)
    best = quality[top].mean(axis=1).to_numpy()
    mid = quality[nearest].mean(axis=1).to_numpy()
    frame = _label_frame(
        prompts.to_numpy(),
        source,
        quality[weak_model],
        quality[strong],
        all_fail=1 - every,
        mid_fail=1 - mid,
        top_minus_all=best - every,
        top_minus_mid=best - mid,
    )
    return frame.dropna(subset=["weak_q", "strong_q"]).reset_index(drop=True)


def mmlu_pro_labels(data_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(require_file(data_dir / MMLU_PRO_FILE))
    df = df[~mmlu_derived(df)]
    columns = [c for c in df.columns if c.startswith("correct__")]
    quality = df[columns].astype("float64")
    quality.columns = [c.removeprefix("correct__") for c in columns]
    return labels_from_quality(df["prompt"], quality.reset_index(drop=True), "mmlu_pro")


def arena_labels(data_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(require_file(data_dir / ARENA_FILE)).dropna(subset=["score"])
    grades = df.pivot_table(index="question_id", columns="model", values="score") / 10.0
    prompts = df.groupby("question_id")["prompt"].first().loc[grades.index]
    return labels_from_quality(prompts, grades.reset_index(drop=True), "arena_hard")


def alpaca_labels(data_dir: Path) -> pd.DataFrame:
    """AlpacaEval judges every model against gpt-4-1106's answer, so a prompt's labels are
    gpt-4-1106's mean win probability over the other models (and over the weak model)."""
    df = pd.read_parquet(require_file(data_dir / ALPACA_FILE))
    df = df[df["model_a"].map(normalize_model_name) == STRONG_MODEL].dropna(subset=["preference"])
    # preference 1 = model_a (the reference) preferred, 2 = model_b preferred.
    df = df.assign(ref_wins=2.0 - df["preference"], model=df["model_b"].map(normalize_model_name))
    everyone = df.groupby("prompt")["ref_wins"].mean()
    pair = df[df["model"] == WEAK_MODEL].groupby("prompt")["ref_wins"].mean()
    wins = everyone.loc[pair.index].to_numpy()
    return _label_frame(
        pair.index.to_numpy(),
        "alpaca_eval",
        1.0 - pair.to_numpy(),
        pair.to_numpy(),
        all_fail=wins,
        mid_fail=wins,
        top_minus_all=2 * wins - 1,
        top_minus_mid=2 * wins - 1,
    )


def golden_labels(
    prompts: pd.Series, weak_q: np.ndarray, strong_q: np.ndarray, source: str
) -> pd.DataFrame:
    """Labels from a benchmark's own per-prompt scores of the routed pair (already in [0, 1]):
    only the pair is known, so the difficulty labels are the weak model's failure and the gap
    labels the pair's gap."""
    weak_q = np.asarray(weak_q, dtype=float)
    strong_q = np.asarray(strong_q, dtype=float)
    gap = strong_q - weak_q
    return _label_frame(
        prompts,
        source,
        weak_q,
        strong_q,
        all_fail=1 - weak_q,
        mid_fail=1 - weak_q,
        top_minus_all=gap,
        top_minus_mid=gap,
    )


def load_prompt_labels(
    data_dir: str | Path,
    eval_dir: str | Path | None = None,
    *,
    exclude_prompts: Iterable[str] = (),
) -> pd.DataFrame:
    """Every training source's prompts with their labels, decontaminated against `eval_dir`
    and against `exclude_prompts` (a user's evaluation set)."""
    data_dir = Path(data_dir)
    frame = pd.concat(
        [mmlu_pro_labels(data_dir), arena_labels(data_dir), alpaca_labels(data_dir)],
        ignore_index=True,
    )
    frame = decontaminate(frame, eval_dir, rows="labelled prompts", also=exclude_prompts)
    logger.info(
        "prompt labels: " + ", ".join(f"{s} {n}" for s, n in frame["source"].value_counts().items())
    )
    return frame[LABEL_COLUMNS]
