"""A user's own labelled prompts (judge labels of their traffic, correctness they measured) in
one schema, read as training rows (`routeray train --extra-data`) or as an evaluation set
(`routeray eval --data`).

The schema, one row per prompt:

- `prompt` (text, required);
- either `strong_score` and `weak_score`, the quality of each model's answer in [0, 1] (a
  correctness label is 0 or 1; a 1-10 grade divided by 10), or `winner` in {strong, weak,
  tie}, a judged battle between the two answers (1, 0.5 or 0 to the strong side); a row with
  both uses the scores;
- optional `weight` (>= 0, default 1) and `id`.

`routeray batch label` writes exactly this. With `backends:` in its config it writes per-model
labels instead, the long outcome format (`prompt, model, score`, one row per prompt and model),
which `read_user_outcomes` reads for an N-model router.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from routers.data.model_names import normalize_model_name
from routers.prompts import prompt_error

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("strong_score", "weak_score")
WINNER_SCORES = {"strong": (1.0, 0.0), "weak": (0.0, 1.0), "tie": (0.5, 0.5)}
USER_LABEL_COLUMNS = ["prompt", "strong_score", "weak_score", "weight"]


class UserLabelError(ValueError):
    """A labelled table that cannot be used as given (the message says what is wrong)."""


def read_user_labels(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """`frame` in the schema above as rows of `USER_LABEL_COLUMNS` (plus `id` if given).

    Rows without a usable prompt or without a label are left out and counted in the log; a
    score outside [0, 1], an unknown winner or a negative weight is an error, since a silently
    clipped label would train the router on something the user did not mean."""
    if "prompt" not in frame.columns:
        raise UserLabelError(f"{name}: no `prompt` column (columns: {', '.join(frame.columns)})")
    has_scores = all(c in frame.columns for c in SCORE_COLUMNS)
    if not has_scores and "winner" not in frame.columns:
        raise UserLabelError(
            f"{name}: no labels: give `strong_score` and `weak_score` (in [0, 1]) or `winner` "
            "(strong, weak or tie)"
        )
    n = len(frame)
    strong = np.full(n, np.nan)
    weak = np.full(n, np.nan)
    if has_scores:
        strong = pd.to_numeric(frame["strong_score"], errors="coerce").to_numpy(float, copy=True)
        weak = pd.to_numeric(frame["weak_score"], errors="coerce").to_numpy(float, copy=True)
        scored = ~(np.isnan(strong) | np.isnan(weak))
        outside = scored & ((strong < 0) | (strong > 1) | (weak < 0) | (weak > 1))
        if outside.any():
            raise UserLabelError(
                f"{name}: {int(outside.sum())} rows have a score outside [0, 1] (first at row "
                f"{int(np.flatnonzero(outside)[0])}); scale grades into [0, 1], e.g. 1-10 by 10"
            )
    if "winner" in frame.columns:
        winners = frame["winner"].astype("string").str.strip().str.lower()
        unknown = winners.notna() & ~winners.isin(list(WINNER_SCORES))
        if unknown.any():
            raise UserLabelError(
                f"{name}: winner must be strong, weak or tie; got {winners[unknown].iloc[0]!r}"
            )
        missing = np.isnan(strong) | np.isnan(weak)
        for label, (s, w) in WINNER_SCORES.items():
            rows = missing & (winners == label).fillna(False).to_numpy()
            strong[rows], weak[rows] = s, w
    weight = np.ones(n)
    if "weight" in frame.columns:
        weight = pd.to_numeric(frame["weight"], errors="coerce").fillna(1.0).to_numpy(float)
        if (weight < 0).any():
            raise UserLabelError(f"{name}: weights must be >= 0")
    prompts = frame["prompt"].tolist()
    bad_prompt = np.array([prompt_error(p) is not None for p in prompts], dtype=bool)
    unlabelled = (np.isnan(strong) | np.isnan(weak)) & ~bad_prompt
    keep = ~(bad_prompt | unlabelled)
    if not keep.any():
        raise UserLabelError(f"{name}: no row has both a usable prompt and a label")
    if (~keep).any():
        logger.info(
            "%s: left out %d rows without a usable prompt and %d without a label",
            name,
            int(bad_prompt.sum()),
            int(unlabelled.sum()),
        )
    out = pd.DataFrame(
        {"prompt": prompts, "strong_score": strong, "weak_score": weak, "weight": weight}
    )
    if "id" in frame.columns:
        out["id"] = frame["id"].to_numpy()
    return out[keep].reset_index(drop=True)


# The long outcome format, one row per (prompt, model): what `batch label` writes when its
# config lists `backends:`, and the columns of the training data's outcome tables.
OUTCOME_LABEL_COLUMNS = ["prompt", "model", "score", "source", "weight"]


def read_user_outcomes(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """A user's per-model labels (`prompt`, `model`, `score` in [0, 1], optional `weight` >= 0
    and `id`) as training rows of `OUTCOME_LABEL_COLUMNS` (plus `id` if given), every row of
    source `name`, for an N-model router.

    Model names pass through the one normaliser, as the shared outcomes' do, so a model is one
    column whichever way it is spelled; a (prompt, model) pair labelled more than once (two
    label runs) is one row, its scores and weights averaged. Rows without a usable prompt, a
    model or a score (a failed answer or grade) are left out and counted in the log; a score
    outside [0, 1] or a negative weight is an error, as in `read_user_labels`."""
    missing = [c for c in ("prompt", "model", "score") if c not in frame.columns]
    if missing:
        raise UserLabelError(
            f"{name}: no {', '.join(f'`{c}`' for c in missing)} column: per-model labels have "
            f"`prompt`, `model` and `score` in [0, 1] (columns: {', '.join(frame.columns)})"
        )
    score = pd.to_numeric(frame["score"], errors="coerce").to_numpy(float, copy=True)
    outside = ~np.isnan(score) & ((score < 0) | (score > 1))
    if outside.any():
        raise UserLabelError(
            f"{name}: {int(outside.sum())} rows have a score outside [0, 1] (first at row "
            f"{int(np.flatnonzero(outside)[0])}); scale grades into [0, 1], e.g. 1-10 by 10"
        )
    weight = np.ones(len(frame))
    if "weight" in frame.columns:
        weight = pd.to_numeric(frame["weight"], errors="coerce").fillna(1.0).to_numpy(float)
        if (weight < 0).any():
            raise UserLabelError(f"{name}: weights must be >= 0")
    prompts = frame["prompt"].tolist()
    models = frame["model"].astype("string").str.strip()
    bad_prompt = np.array([prompt_error(p) is not None for p in prompts], dtype=bool)
    no_model = (models.isna() | (models == "")).to_numpy(bool) & ~bad_prompt
    unlabelled = np.isnan(score) & ~bad_prompt & ~no_model
    keep = ~(bad_prompt | no_model | unlabelled)
    if not keep.any():
        raise UserLabelError(f"{name}: no row has a usable prompt, a model and a score")
    if (~keep).any():
        logger.info(
            "%s: left out %d rows without a usable prompt, %d without a model and %d without "
            "a score",
            name,
            int(bad_prompt.sum()),
            int(no_model.sum()),
            int(unlabelled.sum()),
        )
    out = pd.DataFrame(
        {
            "prompt": np.asarray(prompts, dtype=object)[keep],
            "model": models[keep].map(normalize_model_name).to_numpy(object),
            "score": score[keep],
            "source": name,
            "weight": weight[keep],
        }
    )
    aggregate = {"score": ("score", "mean"), "source": ("source", "first")}
    aggregate["weight"] = ("weight", "mean")
    if "id" in frame.columns:
        out["id"] = frame["id"].to_numpy()[keep]
        aggregate["id"] = ("id", "first")
    grouped = out.groupby(["prompt", "model"], as_index=False, sort=False).agg(**aggregate)
    return grouped[[*OUTCOME_LABEL_COLUMNS, *(["id"] if "id" in out else [])]]
