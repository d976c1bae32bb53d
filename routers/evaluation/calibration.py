"""Thresholds for target shares of strong-model calls, and the fit that makes scores
probabilities (`routers.decision.probability`): labelled prompts a router never trained on, a curve
fitted on them, and how well it holds on a source it did not see (reliability tables, ECE)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from routers.decision.probability import ProbabilityCurve


def thresholds_for_shares(scores: np.ndarray, shares: Sequence[float] | np.ndarray) -> np.ndarray:
    """For each share, the threshold t such that `scores >= t` sends that share of these
    prompts to the strong model (as near as ties allow): the k-th largest score, k = share x n,
    or just above the top score for a share of 0. Non-finite scores are left out."""
    shares = np.asarray(shares, dtype=np.float64)
    bad = shares[~((shares >= 0.0) & (shares <= 1.0))]
    if bad.size:
        raise ValueError(f"a strong share must be a fraction in [0, 1], got {bad[0]}")
    scores = np.asarray(scores, dtype=np.float64)
    descending = np.sort(scores[np.isfinite(scores)])[::-1]
    if descending.size == 0:
        raise ValueError("cannot calibrate on zero scored prompts")
    ks = np.rint(shares * descending.size).astype(np.int64)
    above_top = np.nextafter(descending[0], np.inf)
    # k prompts at or above the k-th largest score, unless it is tied.
    return np.where(ks > 0, descending[np.maximum(ks, 1) - 1], above_top)


def threshold_for_strong_share(scores: np.ndarray, strong_pct: float) -> float:
    """The one threshold that sends `strong_pct` (a fraction in [0, 1]) of these prompts to
    the strong model; 0 gives a threshold above every score."""
    return float(thresholds_for_shares(scores, [strong_pct])[0])


def strong_share(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(np.asarray(scores) >= threshold))


# -- thresholds recorded per strong share ----------------------------------------------------

SHARE_STEP = 0.01


def share_key(share: float) -> str:
    """The key a share is recorded under in `share_thresholds` ("0.30")."""
    return f"{share:.2f}"


def share_thresholds(scores: np.ndarray, step: float = SHARE_STEP) -> dict[str, float]:
    """{share: threshold} for every share from `step` to 1 - `step` (every 1 % by default):
    the table a router directory records as `metadata.share_thresholds`."""
    shares = np.round(np.arange(step, 1.0 - step / 2, step), 10)
    return {
        share_key(s): float(t)
        for s, t in zip(shares, thresholds_for_shares(scores, shares), strict=True)
    }


# -- how well scores match win rates ---------------------------------------------------------

RELIABILITY_BINS = 10


def reliability(
    predicted: np.ndarray, observed: np.ndarray, bins: int = RELIABILITY_BINS
) -> pd.DataFrame:
    """A reliability table: predicted probabilities cut into `bins` equal-width bins, each with
    its prompt count, mean prediction and observed win rate (empty bins left out)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    which = np.clip((predicted * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for b in np.unique(which):
        hit = which == b
        rows.append(
            {
                "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                "count": int(hit.sum()),
                "mean_predicted": float(predicted[hit].mean()),
                "observed": float(observed[hit].mean()),
            }
        )
    return pd.DataFrame(rows, columns=["bin", "count", "mean_predicted", "observed"])


def expected_calibration_error(
    predicted: np.ndarray, observed: np.ndarray, bins: int = RELIABILITY_BINS
) -> float:
    """ECE: the count-weighted mean gap between mean prediction and observed rate per bin."""
    table = reliability(predicted, observed, bins)
    gaps = (table["mean_predicted"] - table["observed"]).abs()
    return float((gaps * table["count"]).sum() / table["count"].sum())


# -- fitting a probability curve on labelled prompts ------------------------------------------


def trained_sources(router_dir: str | Path) -> set[str]:
    """The training sources a router directory says it learned from (its metadata); a
    ValueError when it does not say, since then no labelled source is known to be unseen."""
    from routers.checkpoint import read_config

    training = read_config(router_dir).get("metadata", {}).get("training") or {}
    sources = training.get("sources")
    if not isinstance(sources, dict):
        raise ValueError(
            f"{router_dir} does not record its training sources (metadata.training.sources): "
            "cannot tell which labelled prompts it has not seen"
        )
    return set(sources)


def calibration_labels(
    data_dir: str | Path, eval_dir: str | Path | None, exclude_sources: set[str]
) -> pd.DataFrame:
    """Labelled prompts (`prompt`, `source`, `win`) of every training source not in
    `exclude_sources`; share-alike rows are never among them (they are a check only)."""
    from routers.data.prompt_labels import load_prompt_labels
    from routers.decision.probability import win_labels

    labels = load_prompt_labels(data_dir, eval_dir)
    labels = labels[~labels["source"].isin(exclude_sources)].reset_index(drop=True)
    if labels.empty:
        raise ValueError(
            f"no labelled prompts left in {data_dir} once the router's own training sources "
            f"({', '.join(sorted(exclude_sources))}) are left out"
        )
    return pd.DataFrame(
        {
            "prompt": labels["prompt"].astype(str),
            "source": labels["source"],
            "win": win_labels(labels["weak_q"], labels["strong_q"]),
        }
    )


def fit_probability(
    raw_scores: np.ndarray, labels: pd.DataFrame, fitted_on: dict[str, Any] | None = None
) -> ProbabilityCurve:
    """The isotonic curve of `labels["win"]` on `raw_scores`, every prompt weighing the same.
    (Giving every source the same total weight instead measured worse held out: a 40-prompt
    table then sets whole stretches of the curve; docs/BENCHMARKS.md.)"""
    from routers.decision.probability import fit_isotonic

    counts = labels["source"].value_counts().sort_index()
    described = {
        "label": "strong outcome strictly better than weak (a tie is not a win)",
        "sources": {str(s): int(n) for s, n in counts.items()},
        "prompts": len(labels),
        "weighting": "every prompt the same",
        **(fitted_on or {}),
    }
    return fit_isotonic(raw_scores, labels["win"].to_numpy(float), fitted_on=described)


def leave_one_source_out(raw_scores: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    """Each row's probability from a curve fitted on every other source: how the curve does
    on a source it has never seen."""
    raw_scores = np.asarray(raw_scores, dtype=np.float64)
    held_out = np.full(len(labels), np.nan)
    for source in labels["source"].unique():
        out = (labels["source"] == source).to_numpy()
        curve = fit_probability(raw_scores[~out], labels[~out].reset_index(drop=True))
        held_out[out] = curve(raw_scores[out])
    return held_out
