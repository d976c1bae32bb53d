"""What a job calibrated to a strong share must have done, whatever the router's scores."""

from __future__ import annotations

import numpy as np
import pytest


def assert_calibrated(scores: object, summary: dict, strong_pct: float) -> None:
    """`summary` (a route job's) routed `scores` (its usable rows' scores) at the k-th largest
    score, k = rint(strong_pct x rows): the share is strong_pct as near as ties at the threshold
    allow (rows with one score route together), and it is the share the threshold gives."""
    scores = np.asarray(scores, dtype=np.float64)
    threshold = summary["threshold"]
    k = int(np.rint(strong_pct * scores.size))
    above, at_or_above = int((scores > threshold).sum()), int((scores >= threshold).sum())
    assert above < k <= at_or_above, (k, above, at_or_above, threshold)
    assert summary["strong_share"] == pytest.approx(at_or_above / scores.size)
