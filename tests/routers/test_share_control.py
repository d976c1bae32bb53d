"""The share controller on scripted traffic: real scores of the shipped `fast` router on
generated easy and hard prompts, arrival times and costs scripted and seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from routers import Prices, load_router, router_path
from routers.decision.share_control import ShareController, ShareTarget, replay, request_costs
from tests.support.mixed_traffic import easy_prompt, hard_prompt


@pytest.fixture(scope="module")
def fast():
    return load_router(router_path("fast"))


def test_share_returns_to_target_after_the_mix_turns_hard(fast):
    """1,500 easy requests, then 1,500 hard ones, one a second, target 30 % strong, default
    window (300 requests). Criterion: the share of requests sent strong over requests
    500..1500 after the shift (those decided once 500 hard requests have been seen) is within
    3 points of the target. A threshold fixed on the easy traffic sends most hard ones strong."""
    rng = np.random.default_rng(0)
    easy = fast.score([easy_prompt(rng) for _ in range(1500)])
    hard = fast.score([hard_prompt(rng) for _ in range(1500)])
    scores = np.concatenate([easy, hard])
    controller = ShareController(ShareTarget(strong_share=0.3))
    out = replay(controller, scores, np.arange(len(scores), dtype=float))

    before, after = out["strong"][:1500], out["strong"][1500:]
    assert abs(before[300:].mean() - 0.3) <= 0.03
    assert after[:200].mean() > 0.35  # the shift is visible: the old threshold sends more
    assert abs(after[500:1500].mean() - 0.3) <= 0.03
    assert out["threshold"][-1] > out["threshold"][1499]  # it moved up with the scores
    assert controller.observed_share == pytest.approx(after[-300:].mean())
    fixed = np.quantile(easy, 0.7)
    assert (hard >= fixed).mean() > 0.5


def scripted_arrivals(rng: np.random.Generator, per_hour: list[int]) -> np.ndarray:
    """Poisson arrivals, hour h at rate per_hour[h] requests an hour (seconds from 0)."""
    times: list[float] = []
    for hour, rate in enumerate(per_hour):
        t = hour * 3600.0
        while (t := t + rng.exponential(3600.0 / rate)) < (hour + 1) * 3600.0:
            times.append(t)
    return np.array(times)


def test_spend_target_holds_the_budget_when_the_rate_triples(fast):
    """$3/hour with default prices; an even easy/hard mix arriving at 1,000 requests an hour
    for three hours, then 3,000 an hour for three. Every hour's spend is within 10 % of the
    budget; the share that held it at the first rate would have tripled the spend."""
    rng = np.random.default_rng(1)
    times = scripted_arrivals(rng, [1000] * 3 + [3000] * 3)
    prompts = [easy_prompt(rng) if rng.random() < 0.5 else hard_prompt(rng) for _ in times]
    scores = fast.score(prompts)
    costs = request_costs(Prices(), prompts)
    controller = ShareController(ShareTarget(spend_usd_per_hour=3.0))
    out = replay(controller, scores, times, costs)

    hour = (times // 3600).astype(int)
    spend = np.bincount(hour, weights=out["cost"])
    share = np.bincount(hour, weights=out["strong"]) / np.bincount(hour)
    assert np.all(np.abs(spend / 3.0 - 1.0) <= 0.10), spend
    assert share[:3].mean() > 2.5 * share[3:].mean()  # it bought fewer strong calls
    late = hour >= 3
    held = np.where(scores[late] >= np.quantile(scores[~late], 1 - share[:3].mean()), 0, 1)
    naive = costs[late][np.arange(late.sum()), held].sum() / 3
    assert naive > 3.0 * 1.5
    assert controller.spend_per_hour == pytest.approx(3.0, rel=0.2)
    assert controller.requests_per_hour == pytest.approx(3000, rel=0.2)


def test_state_round_trips_through_json_and_the_restored_controller_goes_on_the_same():
    rng = np.random.default_rng(2)
    scores = np.concatenate([rng.beta(2, 5, 700), rng.beta(5, 2, 700)])
    times = np.cumsum(rng.exponential(2.0, len(scores)))
    costs = request_costs(Prices(), input_tokens=rng.integers(10, 2000, len(scores)))
    target = ShareTarget(spend_usd_per_hour=5.0, window=200, initial_threshold=0.5)
    first = ShareController(target)
    replay(first, scores[:900], times[:900], costs[:900], batch=16)
    restored = ShareController.from_state(json.loads(json.dumps(first.state())))
    assert restored.state() == first.state()
    a = replay(first, scores[900:], times[900:], costs[900:], batch=16)
    b = replay(restored, scores[900:], times[900:], costs[900:], batch=16)
    assert np.array_equal(a["strong"], b["strong"])
    assert np.array_equal(a["threshold"], b["threshold"])
    assert restored.snapshot() == first.snapshot()


def test_before_enough_scores_the_initial_threshold_routes_and_none_means_weak():
    held = ShareController(ShareTarget(strong_share=0.5, min_scores=20), initial_threshold=0.9)
    held.observe(np.linspace(0, 1, 10), now=0.0)
    assert held.threshold == 0.9
    held.observe(np.linspace(0, 1, 10), now=1.0)
    assert held.threshold == pytest.approx(0.5, abs=0.06)

    fresh = ShareController(ShareTarget(strong_share=0.5))
    assert fresh.threshold is None and not fresh.decide(np.array([0.99])).any()
    # Unusable prompts (no score) count for nothing.
    decided = fresh.observe(np.array([0.2, np.nan, 0.8]), now=0.0)
    assert fresh.requests == 2 and not decided.any()
    assert fresh.decide(np.array([0.8]))[0] and not fresh.decide(np.array([0.2]))[0]


def test_decisions_taken_elsewhere_are_what_the_observed_share_counts():
    controller = ShareController(ShareTarget(strong_share=0.3, window=10, min_scores=10))
    controller.observe(np.full(10, 0.5), now=0.0, strong=[True] * 7 + [False] * 3)
    assert controller.observed_share == pytest.approx(0.7)
    with pytest.raises(ValueError, match="decisions"):
        controller.observe(np.full(3, 0.5), now=1.0, strong=[True])


def test_spend_bounds_clip_the_share_and_costs_are_required():
    rng = np.random.default_rng(3)
    scores = rng.random(400)
    costs = request_costs(Prices(), input_tokens=np.full(400, 100))
    # A budget far above all-strong would send everything strong; the bound stops at 60 %.
    target = ShareTarget(spend_usd_per_hour=1000.0, max_share=0.6)
    controller = ShareController(target)
    replay(controller, scores, np.arange(400.0), costs)
    assert controller.target_share == pytest.approx(0.6)
    with pytest.raises(ValueError, match="costs"):
        controller.observe(scores[:3], now=500.0)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"strong_share": 0.3, "spend_usd_per_hour": 2.0},
        {"strong_share": 1.0},
        {"spend_usd_per_hour": 0},
        {"strong_share": 0.3, "min_share": 0.5, "max_share": 0.4},
        {"strong_share": 0.3, "window": 100, "min_scores": 200},
        {"strong_share": 0.3, "typo": 1},
    ],
)
def test_share_target_refuses_what_it_cannot_hold(fields):
    with pytest.raises(ValidationError):
        ShareTarget.model_validate(fields)
