"""Per-model outcomes: how well each of many models did on each training prompt, in one long
table (`prompt, model, score, source`), the table an N-model router trains on.

Every source that grades many models on the same prompts gives rows:

- every outcome table (`routers.data.outcome_tables`), one source per file, its scores as
  they are (correctness, or a grade scaled to [0, 1]); rows under a share-alike licence only
  when asked;
- MMLU-Pro's `correct__<model>` columns (questions taken from MMLU left out: their stems are
  MMLU eval prompts);
- Arena-Hard's GPT-4 grades of 14 models, divided by 10;
- AlpacaEval's battles against gpt-4-1106-preview's answer: a model's score on a prompt is
  the judge's preference for it over the reference (0 to 1), and the reference scores 0.5.

Model names pass through the one normaliser (`routers.data.model_names`), so a model is one
column whichever source names it; two spellings of one model on one prompt are averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from routers.data.model_names import STRONG_MODEL, normalize_model_name
from routers.data.outcome_tables import find_outcome_tables
from routers.data.sources import (
    ALPACA_FILE,
    ARENA_FILE,
    decontaminate,
    mmlu_pro_correctness,
    require_file,
)

logger = logging.getLogger(__name__)

# `task`: the task family (a file's own where it has them, else the source's name), which
# decides the licence of a source that licences its tasks apart.
OUTCOME_COLUMNS = ["prompt", "model", "score", "source", "task"]


def _long(
    prompts: pd.Series,
    models: pd.Series,
    scores: pd.Series,
    source: str,
    tasks: pd.Series | None = None,
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "prompt": prompts.to_numpy(),
            "model": models.map(normalize_model_name).to_numpy(),
            "score": scores.to_numpy(float),
            "source": source,
            "task": source if tasks is None else tasks.to_numpy(),
        }
    ).dropna(subset=["score"])
    return frame.groupby(["prompt", "model"], as_index=False, sort=False).agg(
        score=("score", "mean"), source=("source", "first"), task=("task", "first")
    )


def mmlu_pro_outcomes(data_dir: Path) -> pd.DataFrame:
    df, quality = mmlu_pro_correctness(data_dir)
    melted = quality.assign(prompt=df["prompt"]).melt(
        id_vars="prompt", var_name="model", value_name="score"
    )
    return _long(melted["prompt"], melted["model"], melted["score"], "mmlu_pro")


def arena_outcomes(data_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(require_file(data_dir / ARENA_FILE)).dropna(subset=["score"])
    return _long(df["prompt"], df["model"], df["score"] / 10.0, "arena_hard")


def alpaca_outcomes(data_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(require_file(data_dir / ALPACA_FILE)).dropna(subset=["preference"])
    # `example` is AlpacaEval's sample of its own file format, not a model.
    df = df[
        (df["model_a"].map(normalize_model_name) == STRONG_MODEL) & (df["model_b"] != "example")
    ]
    # preference 1 = the reference (model_a) preferred, 2 = model_b preferred.
    battles = _long(df["prompt"], df["model_b"], df["preference"] - 1.0, "alpaca_eval")
    reference = pd.DataFrame(
        {"prompt": df["prompt"].unique(), "model": STRONG_MODEL, "score": 0.5}
    ).assign(source="alpaca_eval", task="alpaca_eval")
    battles = battles[battles["model"] != STRONG_MODEL]
    return pd.concat([battles, reference], ignore_index=True)


def table_outcomes(data_dir: Path, share_alike: bool = False) -> list[pd.DataFrame]:
    frames = []
    for table in find_outcome_tables(data_dir):
        rows = table.rows
        if not share_alike:
            rows = rows[~rows["task"].isin(table.share_alike_tasks())]
        if len(rows):
            frames.append(
                _long(rows["prompt"], rows["model"], rows["score"], table.name, rows["task"])
            )
    return frames


def load_model_outcomes(
    data_dir: str | Path,
    eval_dir: str | Path | None = None,
    *,
    exclude_prompts: Iterable[str] = (),
    share_alike: bool = False,
    sources: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Every training source's (prompt, model, score, source) rows, decontaminated against
    `eval_dir` and `exclude_prompts`; only the `sources` named, when given."""
    data_dir = Path(data_dir)
    parts = [mmlu_pro_outcomes(data_dir), arena_outcomes(data_dir), alpaca_outcomes(data_dir)]
    parts += table_outcomes(data_dir, share_alike)
    frame = pd.concat(parts, ignore_index=True)
    if sources is not None:
        wanted = set(sources)
        unknown = sorted(wanted - set(frame["source"]))
        if unknown:
            raise ValueError(
                f"no training source named {', '.join(unknown)}; the training data holds "
                + ", ".join(sorted(frame["source"].unique()))
            )
        frame = frame[frame["source"].isin(wanted)]
    frame = decontaminate(
        frame.reset_index(drop=True), eval_dir, rows="outcome rows", also=exclude_prompts
    )
    logger.info(
        "model outcomes: "
        + ", ".join(
            f"{s} {g['prompt'].nunique()} prompts x {g['model'].nunique()} models"
            for s, g in frame.groupby("source")
        )
    )
    return frame[OUTCOME_COLUMNS].reset_index(drop=True)


def label_counts(outcomes: pd.DataFrame) -> pd.Series:
    """Prompts with a label, per model (normalised name), most first."""
    return outcomes.groupby("model")["prompt"].nunique().sort_values(ascending=False)
