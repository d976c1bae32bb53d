"""The threshold sweep of the cost simulation, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from routers.evaluation.simulation import pareto_front, quality_labels, sweep, thresholds_for


def test_sweep_equals_one_pass_per_threshold():
    rng = np.random.default_rng(0)
    n = 2000
    scores = rng.uniform(size=n).round(2)  # ties included
    cs, cw = rng.uniform(0.01, 0.1, n), rng.uniform(0.0, 0.01, n)
    qs, qw, estimate = quality_labels(scores, rng.uniform(size=n), rng.uniform(size=n))
    grid = np.concatenate([thresholds_for(scores, 50), [0.0, 1.0, 2.0]])
    for t, point in zip(grid, sweep(scores, grid, cs, cw, qs, qw, estimate), strict=True):
        strong = scores >= t
        assert point.cost == pytest.approx(np.where(strong, cs, cw).sum())
        assert point.quality == pytest.approx(np.where(strong, qs, qw).mean())
        assert point.strong_share == strong.mean()


def test_pareto_front_drops_dominated_points():
    costs = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    quality = np.array([0.5, 0.7, 0.6, 0.65, 0.9])
    assert pareto_front(costs, quality).tolist() == [True, True, False, False, True]
