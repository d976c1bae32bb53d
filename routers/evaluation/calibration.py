"""Thresholds for target shares of strong-model calls."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
