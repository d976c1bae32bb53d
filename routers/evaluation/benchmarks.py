"""The evaluation benchmarks in ../shared/data/eval (MT Bench, MMLU, GSM8K): their files, their
score scales, and loading one without its contaminated prompts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

BENCHMARKS = ("mt-bench", "mmlu", "gsm8k")
_FILES = {"mt-bench": "mt_bench.parquet", "mmlu": "mmlu.parquet", "gsm8k": "gsm8k.parquet"}
_COLUMNS = ["id", "prompt", "weak_score", "strong_score"]
# MT Bench's judge scores are 1-10; correctness is already 0/1.
SCORE_SCALE = {"mt-bench": 10.0, "mmlu": 1.0, "gsm8k": 1.0}
EVAL_FILES = tuple(_FILES.values())


def load_benchmark(name: str, data_dir: str | Path) -> pd.DataFrame:
    """Load one eval benchmark without its contaminated prompts.

    ``data_dir`` may be the ``eval`` folder or the data root holding it. The number of dropped
    rows is in ``df.attrs["contaminated_dropped"]`` so callers can report it.
    """
    if name not in _FILES:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    data_dir = Path(data_dir)
    candidates = [data_dir / _FILES[name], data_dir / "eval" / _FILES[name]]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        tried = " or ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"benchmark {name!r} not found: no file at {tried}")
    raw = pd.read_parquet(path)
    missing = [c for c in [*_COLUMNS, "contaminated"] if c not in raw.columns]
    if missing:
        # Without the contamination flag we could silently evaluate on leaked prompts.
        raise ValueError(f"{path} lacks columns {missing}")
    contaminated = raw["contaminated"].fillna(False).astype(bool)
    df = raw.loc[~contaminated, _COLUMNS].reset_index(drop=True)
    df["weak_score"] = df["weak_score"].astype(float)
    df["strong_score"] = df["strong_score"].astype(float)
    df.attrs["contaminated_dropped"] = int(contaminated.sum())
    return df
