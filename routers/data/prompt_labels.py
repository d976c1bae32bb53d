"""Per-prompt outcome labels: how well every model did on each training prompt.

Battles say which of two answers won; for routing, the sharper question is how hard a prompt
is and how much a strong model gains over a weak one on it. Each source holds many models'
results on the same prompt (MMLU-Pro: 30 models' correctness; Arena-Hard: 14 models' grades;
AlpacaEval: about 100 models judged against gpt-4-1106; every outcome table of
`routers.data.outcome_tables`, 5 to 141 models), and averaging over them gives labels far less
noisy than one pair's single outcome. A row is one prompt, with its `source` and `task` family:

- `weak_q`, `strong_q`: the routed pair's quality on the prompt in [0, 1] (an outcome table's
  weak and strong classes, or their stand-ins; elsewhere the source's best model stands in for
  an absent strong model), used to measure routing quality.
- `all_fail`: 1 - mean quality over all models (difficulty);
- `mid_fail`: 1 - mean quality of the models nearest the weak model in overall quality;
- `top_minus_all`, `top_minus_mid`: the best models' mean quality minus those means;
- `pair_gap`: strong_q - weak_q;
- `family_gap`, `family_mid_fail`: the means of `pair_gap` and `mid_fail` over the prompt's
  task family;
- `irt_gap`: the classes' expected gap on the item from the item-response fit over every
  outcome table (`routers.data.ability`); `pair_gap` where no fit covers the source.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routers.data.ability import AbilityScale
from routers.data.model_names import (
    STRONG_CLASS,
    STRONG_MODEL,
    WEAK_CLASS,
    WEAK_MODEL,
    normalize_model_name,
)
from routers.data.outcome_tables import OutcomeTable, ability_scale, find_outcome_tables
from routers.data.sources import (
    ALPACA_FILE,
    ARENA_FILE,
    decontaminate,
    mmlu_pro_correctness,
    require_file,
)

logger = logging.getLogger(__name__)

BASE_LABELS = ("all_fail", "mid_fail", "top_minus_all", "top_minus_mid", "pair_gap")
FAMILY_LABELS = ("family_gap", "family_mid_fail")
PROMPT_LABELS = (*BASE_LABELS, *FAMILY_LABELS, "irt_gap")
LABEL_COLUMNS = ["prompt", "source", "task", "weak_q", "strong_q", *PROMPT_LABELS]
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
    tasks: Any = None,
    irt_gap: Any = None,
) -> pd.DataFrame:
    """One source's rows in `LABEL_COLUMNS` order; `pair_gap` follows from the pair, the
    family labels from the task families (`tasks`; None: the source is one family)."""
    weak_q, strong_q = (np.asarray(q, dtype=float) for q in (weak_q, strong_q))
    frame = pd.DataFrame(
        {
            "prompt": np.asarray(prompts),
            "source": source,
            "task": source if tasks is None else np.asarray(tasks),
            "weak_q": weak_q,
            "strong_q": strong_q,
            "all_fail": np.asarray(all_fail, dtype=float),
            "mid_fail": np.asarray(mid_fail, dtype=float),
            "top_minus_all": np.asarray(top_minus_all, dtype=float),
            "top_minus_mid": np.asarray(top_minus_mid, dtype=float),
            "pair_gap": strong_q - weak_q,
        }
    )
    # Where no item-response fit covers the source, the pair's own gap stands in.
    frame["irt_gap"] = frame["pair_gap"] if irt_gap is None else np.asarray(irt_gap, dtype=float)
    return with_family_labels(frame)[LABEL_COLUMNS]


def with_family_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each prompt's task family's mean gap and mean middle-model failure: what
    the family says about a prompt, before the prompt itself does. Single outcomes of one pair
    are noisy; the family's mean is not, and it is what a router needs to know on a family it
    has never seen (the weak class fails maths, not trivia)."""
    families = frame.groupby(["source", "task"], sort=False)
    return frame.assign(
        family_gap=families["pair_gap"].transform("mean"),
        family_mid_fail=families["mid_fail"].transform("mean"),
    )


def labels_from_quality(
    prompts: pd.Series,
    quality: pd.DataFrame,
    source: str,
    strong_model: str = STRONG_MODEL,
    weak_model: str = WEAK_MODEL,
    tasks: pd.Series | None = None,
) -> pd.DataFrame:
    """Labels from a prompts x models quality matrix in [0, 1] (NaN: model did not answer),
    the pair named; the strong model's stand-in where it is absent is the source's best."""
    quality = quality.rename(columns=normalize_model_name)
    if weak_model not in quality.columns:
        raise ValueError(f"{source}: the weak model {weak_model} has no results")
    if strong_model not in quality.columns:
        strong_model = str(quality.mean().idxmax())
    return labels_from_classes(prompts, quality, source, [strong_model], [weak_model], tasks)


def labels_from_classes(
    prompts: pd.Series,
    quality: pd.DataFrame,
    source: str,
    strong: list[str],
    weak: list[str],
    tasks: pd.Series | None = None,
    irt_gap: np.ndarray | None = None,
) -> pd.DataFrame:
    """Labels from a prompts x models quality matrix in [0, 1], each class's quality the mean
    of its models' (columns `strong`, `weak`); the middle models are those nearest the weak
    class in overall quality; `irt_gap`, where given, the classes' expected gap per prompt
    (`AbilityScale.expected_gap`)."""
    overall = quality.mean().sort_values(ascending=False)
    weak_overall = float(overall[weak].mean())
    top = overall.index[:TOP_MODELS]
    nearest = (overall - weak_overall).abs().sort_values().index[:MID_MODELS]
    q = quality.to_numpy(dtype=float)
    every = np.nanmean(q, axis=1)
    best = quality[top].mean(axis=1).to_numpy()
    mid = quality[nearest].mean(axis=1).to_numpy()
    frame = _label_frame(
        prompts.to_numpy(),
        source,
        quality[weak].mean(axis=1),
        quality[strong].mean(axis=1),
        all_fail=1 - every,
        mid_fail=1 - mid,
        top_minus_all=best - every,
        top_minus_mid=best - mid,
        tasks=None if tasks is None else tasks.to_numpy(),
        irt_gap=irt_gap,
    )
    return frame.dropna(subset=["weak_q", "strong_q"]).reset_index(drop=True)


def mmlu_pro_labels(data_dir: Path) -> pd.DataFrame:
    df, quality = mmlu_pro_correctness(data_dir)
    return labels_from_quality(
        df["prompt"],
        quality,
        "mmlu_pro",
        tasks=df.get("category"),
    )


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
    subset = df.groupby("prompt")["subset"].first().loc[pair.index] if "subset" in df else None
    return _label_frame(
        pair.index.to_numpy(),
        "alpaca_eval",
        1.0 - pair.to_numpy(),
        pair.to_numpy(),
        all_fail=wins,
        mid_fail=wins,
        top_minus_all=2 * wins - 1,
        top_minus_mid=2 * wins - 1,
        tasks=None if subset is None else subset.to_numpy(),
    )


def outcome_table_labels(
    tables: list[OutcomeTable], scale: AbilityScale, share_alike: bool
) -> pd.DataFrame:
    """Labels of every outcome table's rows whose licence is (`share_alike`) or is not
    share-alike, one source per table; the pair each table stands in is logged."""
    frames = []
    for table in tables:
        shared = table.share_alike_tasks()
        keep = table.task_of.isin(shared) if share_alike else ~table.task_of.isin(shared)
        if not keep.any():
            continue
        pair = table.choose_pair(scale)
        logger.info(f"{table.name}: strong class = {pair.how['strong']}; weak = {pair.how['weak']}")
        ids = table.task_of.index[keep.to_numpy()]
        # The classes' own abilities, not their stand-ins': what GPT-4 would gain over
        # Mixtral on an item as hard as the table's models found it.
        irt_gap = scale.expected_gap(
            table.name,
            ids,
            scale.class_ability(STRONG_MODEL, STRONG_CLASS),
            scale.class_ability(WEAK_MODEL, WEAK_CLASS),
        )
        labels = labels_from_classes(
            table.prompt_of.loc[ids],
            table.quality.loc[ids],
            table.name,
            pair.strong,
            pair.weak,
            tasks=table.task_of.loc[ids],
            irt_gap=irt_gap,
        )
        frames.append(without_inverted_families(labels) if pair.stood_in else labels)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LABEL_COLUMNS)


def without_inverted_families(labels: pd.DataFrame) -> pd.DataFrame:
    """`labels` without the task families in which the strong side does worse than the weak
    one on average. Applied where a table's classes are stood in by the models nearest them in
    ability: there an inverted family says the stand-ins differ from the classes in what the
    family's scores measure, answer format under exact match (LLMRouter's natural_qa and
    trivia_qa, where its strongest models answer at length) or a format nobody follows (its
    logic grid). Where the classes themselves answered, an inverted family is a fact about
    them (GPT-4 refuses more of XSTest's privacy prompts than Llama-2 does) and stays."""
    inverted = labels["family_gap"] < 0
    for (source, task), rows in labels[inverted].groupby(["source", "task"]):
        logger.info(
            f"{source}/{task}: left out, the stood-in strong side does worse than the weak "
            f"(mean gap {rows['family_gap'].iloc[0]:+.3f} over {len(rows)} prompts)"
        )
    return labels[~inverted].reset_index(drop=True)


# The three sources read by file name, with their licences (../shared/data/README.md).
OLDER_SOURCE_LICENCES = {
    "mmlu_pro": "Apache-2.0 (TIGER-AI-Lab/MMLU-Pro eval_results)",
    "arena_hard": "Apache-2.0 (lmarena/arena-hard-auto data/arena-bench-v1)",
    "alpaca_eval": "Apache-2.0 (tatsu-lab/alpaca_eval results/*/annotations.json)",
}


def source_licences(data_dir: str | Path) -> dict[str, str]:
    """Each training source's licence, by source name (an outcome table's per task family
    where its families differ)."""
    licences = dict(OLDER_SOURCE_LICENCES)
    for table in find_outcome_tables(data_dir):
        by_task = {t: table.licence(t) for t in sorted(table.rows["task"].unique())}
        if len(set(by_task.values())) == 1:
            licences[table.name] = next(iter(by_task.values()))
        else:
            licences.update({f"{table.name}/{t}": text for t, text in by_task.items()})
    return licences


def licences_of(table: pd.DataFrame, data_dir: str | Path) -> dict[str, str]:
    """The licence of each source in a training table, from the task families it holds."""
    known = source_licences(data_dir)
    out = {}
    for source in table["source"].unique():
        if source in known:
            out[source] = known[source]
            continue
        tasks = table.loc[table["source"] == source, "task"] if "task" in table else []
        texts = sorted({known[f"{source}/{t}"] for t in set(tasks) if f"{source}/{t}" in known})
        out[source] = "; ".join(texts) if texts else "not recorded (a user's own data?)"
    return out


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
    share_alike: bool = False,
) -> pd.DataFrame:
    """Every training source's prompts with their labels (the three older sources and every
    outcome table), decontaminated against `eval_dir` and against `exclude_prompts` (a user's
    evaluation set). Rows under a share-alike licence are left out unless `share_alike`."""
    data_dir = Path(data_dir)
    tables = find_outcome_tables(data_dir)
    parts = [mmlu_pro_labels(data_dir), arena_labels(data_dir), alpaca_labels(data_dir)]
    if tables:
        scale = ability_scale(tables)
        parts.append(outcome_table_labels(tables, scale, share_alike=False))
        if share_alike:
            parts.append(outcome_table_labels(tables, scale, share_alike=True))
    frame = pd.concat(parts, ignore_index=True)
    frame = decontaminate(frame, eval_dir, rows="labelled prompts", also=exclude_prompts)
    logger.info(
        "prompt labels: " + ", ".join(f"{s} {n}" for s, n in frame["source"].value_counts().items())
    )
    return frame[LABEL_COLUMNS]


def transfer_checks(data_dir: str | Path, eval_dir: str | Path | None = None) -> pd.DataFrame:
    """The outcome tables' share-alike rows, which shipped routers never train on, as labels to
    check transfer on (empty if there are none); sources are named `<table>/<task>`."""
    tables = find_outcome_tables(data_dir)
    if not any(t.share_alike_tasks() for t in tables):
        return pd.DataFrame(columns=LABEL_COLUMNS)
    frame = outcome_table_labels(tables, ability_scale(tables), share_alike=True)
    frame["source"] = frame["source"] + "/" + frame["task"]
    return decontaminate(frame, eval_dir, rows="check prompts")[LABEL_COLUMNS]
