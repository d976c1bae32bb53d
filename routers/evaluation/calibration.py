"""Thresholds for a target share of strong-model calls."""

from __future__ import annotations

import numpy as np


def threshold_for_strong_share(scores: np.ndarray, strong_pct: float) -> float:
    """The threshold t such that `scores >= t` sends `strong_pct` of these prompts to the
    strong model (as near as ties allow).

    `strong_pct` is a fraction in [0, 1]. 0 gives a threshold above every score.
    """
    if not 0.0 <= strong_pct <= 1.0:
        raise ValueError(f"strong_pct must be a fraction in [0, 1], got {strong_pct}")
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("cannot calibrate on zero scored prompts")
    k = round(strong_pct * scores.size)
    if k == 0:
        return float(np.nextafter(scores.max(), np.inf))
    # The k-th largest score: exactly k prompts are >= it unless it is tied.
    return float(np.partition(scores, scores.size - k)[scores.size - k])


def strong_share(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(np.asarray(scores) >= threshold))
