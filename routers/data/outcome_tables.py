"""Outcome tables: many models graded on the same prompts, in one long format.

Any Parquet file in the training directory with the columns `id, prompt, task, model, score`
(score in [0, 1]) is one, whatever its name, so a user can drop in their own. Each becomes
per-prompt strong-vs-weak labels (`routers.data.prompt_labels`) by one rule:

- the strong class and the weak class are `routers.data.model_names.STRONG_CLASS` and
  `WEAK_CLASS` (the routed pair and their siblings, under the one name normaliser, so a GGUF
  copy of Mixtral is Mixtral); a class's quality on a prompt is the mean of its members' scores;
- a table without a member of a class (answering at least `MIN_COVERAGE` of its prompts)
  stands in the `CLASS_NEIGHBOURS` models whose ability is nearest that class's, on a scale
  fitted across all the tables (`routers.data.ability`).

A table is one training source, named after its file: its task families stay together, so
that a held-out table also asks whether the router knows which of its families the weak
class fails.

Licences travel with the rows: a file's provenance (Parquet schema metadata `source`, or the
`<file>.source.json` beside it) names its licence, per task where tasks differ. Rows under a
share-alike licence (CC-BY-SA) are not trained on unless asked: what a router learned from
them would have to be shared alike. They are still read, as a check of transfer
(`transfer_checks`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from routers.data.ability import AbilityScale, fit_ability
from routers.data.model_names import (
    STRONG_CLASS,
    STRONG_MODEL,
    WEAK_CLASS,
    WEAK_MODEL,
    normalize_model_name,
)

logger = logging.getLogger(__name__)

OUTCOME_COLUMNS = ("id", "prompt", "task", "model", "score")
MIN_COVERAGE = 0.5
CLASS_NEIGHBOURS = 2
_SHARE_ALIKE = re.compile(r"\bCC[- ]BY(?:-NC)?-SA\b|share[- ]alike", re.IGNORECASE)


def is_share_alike(licence: str) -> bool:
    return bool(_SHARE_ALIKE.search(licence))


def _provenance(path: Path) -> dict[str, Any]:
    metadata = pq.read_schema(path).metadata or {}
    if b"source" in metadata:
        return json.loads(metadata[b"source"])
    sidecar = path.with_name(path.name + ".source.json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


@dataclass
class PairChoice:
    """Which of a table's models (as the table spells them) stand for each class, and why."""

    strong: list[str]
    weak: list[str]
    how: dict[str, str] = field(default_factory=dict)
    # The sides ("strong", "weak") stood in by the models nearest them in ability.
    stood_in: set[str] = field(default_factory=set)


@dataclass
class OutcomeTable:
    name: str
    rows: pd.DataFrame
    provenance: dict[str, Any]

    @cached_property
    def quality(self) -> pd.DataFrame:
        """Prompts (by id) x models (as spelled), NaN where a model has no score."""
        return self.rows.pivot_table(index="id", columns="model", values="score", aggfunc="mean")

    @cached_property
    def prompt_of(self) -> pd.Series:
        return self.rows.groupby("id")["prompt"].first()

    @cached_property
    def task_of(self) -> pd.Series:
        return self.rows.groupby("id")["task"].first()

    def licence(self, task: str) -> str:
        """The licence that covers `task`'s rows: the file's, or, where the provenance names
        licences per task, the repository's and the task's together."""
        given = self.provenance.get("licence", "not stated in the file's provenance")
        if not isinstance(given, dict):
            return str(given)
        parts = [given[k] for k in ("repository", task) if k in given]
        return "; ".join(str(p) for p in parts) or json.dumps(given)

    def share_alike_tasks(self) -> set[str]:
        return {t for t in self.rows["task"].unique() if is_share_alike(self.licence(t))}

    def choose_pair(self, scale: AbilityScale) -> PairChoice:
        coverage = self.quality.notna().mean()
        usable = [m for m in self.quality.columns if coverage[m] >= MIN_COVERAGE]
        choice = PairChoice([], [])
        for side, members, anchor in (
            ("strong", STRONG_CLASS, STRONG_MODEL),
            ("weak", WEAK_CLASS, WEAK_MODEL),
        ):
            chosen = [m for m in usable if normalize_model_name(m) in members]
            how = "class members"
            if not chosen:
                target = scale.class_ability(anchor, members)
                if target is None:
                    raise ValueError(f"{self.name}: no model of the {side} class on any table")
                distance = {m: abs(scale.of(m) - target) for m in usable}
                chosen = sorted(distance, key=distance.__getitem__)[:CLASS_NEIGHBOURS]
                how = "nearest in ability"
                choice.stood_in.add(side)
            getattr(choice, side).extend(chosen)
            choice.how[side] = f"{how}: {', '.join(chosen)}"
        return choice


def find_outcome_tables(data_dir: str | Path) -> list[OutcomeTable]:
    """Every long-format outcome table under `data_dir` (by its columns), sorted by name."""
    tables = []
    for path in sorted(Path(data_dir).glob("*.parquet")):
        if not set(OUTCOME_COLUMNS) <= set(pq.read_schema(path).names):
            continue
        rows = pd.read_parquet(path, columns=list(OUTCOME_COLUMNS)).dropna(subset=["score"])
        outside = ~rows["score"].between(0, 1)
        if outside.any():
            raise ValueError(
                f"{path}: {int(outside.sum())} scores outside [0, 1]; scale grades to [0, 1]"
            )
        tables.append(OutcomeTable(path.name.removesuffix(".parquet"), rows, _provenance(path)))
    return tables


def ability_scale(tables: list[OutcomeTable]) -> AbilityScale:
    return fit_ability({t.name: t.rows for t in tables})
