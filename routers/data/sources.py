"""The training sources in ../shared/data/train, and the contamination rule every training table
obeys: no prompt equal to an evaluation prompt (after whitespace and case folding), and no
MMLU-Pro question derived from MMLU."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from routers.evaluation.benchmarks import EVAL_FILES

logger = logging.getLogger(__name__)

ALPACA_FILE = "alpaca_eval_pairwise.parquet"
ARENA_FILE = "arena_bench_v1_scores.parquet"
MMLU_PRO_FILE = "mmlu_pro_correctness.parquet"


def fold_text(text: str) -> str:
    """Whitespace and case folding: the contamination match key."""
    return " ".join(str(text).split()).casefold()


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"training source {path} is missing")
    return path


def mmlu_derived(mmlu_pro: pd.DataFrame) -> pd.Series:
    """MMLU-Pro questions taken from MMLU: their stems are MMLU eval prompts."""
    return mmlu_pro["from_original_mmlu"].astype(bool) | mmlu_pro["src"].str.startswith("ori_mmlu")


def mmlu_pro_correctness(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MMLU-Pro's questions not taken from MMLU, and each model's correctness on them (one
    column per model as the file names it, NaN where it has no answer), row for row."""
    df = pd.read_parquet(require_file(data_dir / MMLU_PRO_FILE))
    df = df[~mmlu_derived(df)].reset_index(drop=True)
    columns = [c for c in df.columns if c.startswith("correct__")]
    quality = df[columns].astype("float64")
    quality.columns = [c.removeprefix("correct__") for c in columns]
    return df, quality


def eval_prompts(eval_dir: Path) -> set[str]:
    """Folded text of every eval prompt (MT Bench second turns too), contaminated or not."""
    folded: set[str] = set()
    for name in EVAL_FILES:
        df = pd.read_parquet(require_file(eval_dir / name))
        for column in ("prompt", "prompt_turn2"):
            if column in df:
                folded.update(fold_text(t) for t in df[column].dropna())
    return folded


def decontaminate(
    battles: pd.DataFrame,
    eval_dir: str | Path | None,
    rows: str = "battles",
    also: Iterable[str] = (),
) -> pd.DataFrame:
    """Drop rows (battles, or whatever `rows` names) whose prompt equals an eval prompt after
    whitespace and case folding: the prompts under `eval_dir` (None: none) and those in `also`
    (a user's own evaluation set); any frame with `prompt` and `source` columns will do. With
    nothing to drop against, the frame is returned as it is."""
    banned = eval_prompts(Path(eval_dir)) if eval_dir is not None else set()
    banned |= {fold_text(p) for p in also}
    if not banned:
        return battles
    folded = battles["prompt"].map(fold_text)
    hit = folded.isin(banned)
    for source, count in (
        battles.loc[hit, "source"]
        .value_counts()
        .reindex(battles["source"].unique(), fill_value=0)
        .items()
    ):
        prompts = battles.loc[hit & (battles["source"] == source), "prompt"].nunique()
        logger.info(f"decontamination: {source}: dropped {count} {rows} ({prompts} prompts)")
    return battles[~hit].reset_index(drop=True)
