"""The N-model decision rule (routers.decision.choice) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from routers.decision.choice import ChoiceRule, choose, preference_order, prompt_costs
from routers.decision.names import ModelNameError, parse_router_model
from routers.prices import ModelPrice, Prices

# Three models, cheap to dear, on three prompts.
Q = np.array(
    [
        [0.50, 0.70, 0.90],  # each step up buys 0.2
        [0.80, 0.82, 0.83],  # nothing to buy
        [0.10, 0.60, 0.62],  # the mid model buys 0.5, the dear one 0.02 more
    ]
)
C = np.array([0.001, 0.01, 0.03])  # USD per prompt


def hand_choice(q: np.ndarray, c: np.ndarray, lam: float) -> list[int]:
    """Written out the slow way: every model's value, the first of the best."""
    picks = []
    for row in q:
        values = [row[m] - lam * c[m] for m in range(len(c))]
        best = max(values)
        picks.append(next(m for m in range(len(c)) if values[m] >= best - 1e-12))
    return picks


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 5.0, 10.0, 19.0, 21.0, 25.0, 50.0, 1e3, 1e6])
def test_every_cost_weight_picks_what_the_hand_computation_picks(lam):
    assert choose(Q, C, ChoiceRule(cost_weight=lam)).tolist() == hand_choice(Q, C, lam)


def test_cost_weight_ends_are_best_and_cheapest():
    assert choose(Q, C, ChoiceRule(cost_weight=0)).tolist() == [2, 2, 2]
    assert choose(Q, C, ChoiceRule(cost_weight=1e6)).tolist() == [0, 0, 0]
    # lambda = 20: prompt 1's step mid->dear (0.2 for 0.02 USD) is exactly break-even and
    # goes to the cheaper; prompt 3's step cheap->mid (0.5 for 0.009) is well worth it.
    assert choose(Q, C, ChoiceRule(cost_weight=20)).tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        (0.0, [2, 2, 2]),
        (0.05, [2, 0, 1]),  # within 0.05 of the best: only dear / all / mid and dear
        (0.2, [1, 0, 1]),
        (0.4, [0, 0, 1]),
        (1.0, [0, 0, 0]),
    ],
)
def test_margin_picks_the_cheapest_within_the_margin(margin, expected):
    assert choose(Q, C, ChoiceRule(margin=margin)).tolist() == expected


def test_default_rule_is_a_margin_of_five_points():
    assert ChoiceRule().describe() == "margin=0.05"
    assert choose(Q, C).tolist() == choose(Q, C, ChoiceRule(margin=0.05)).tolist()


def test_ties_go_to_the_cheaper_then_the_first_listed():
    q = np.array([[0.7, 0.7, 0.7]])
    assert choose(q, np.array([0.03, 0.01, 0.01]), ChoiceRule(cost_weight=0)).tolist() == [1]


def test_fallback_order_is_the_same_rule_on_what_is_left():
    # Prompt 3 at margin 0.05: mid first; without mid, dear (the best left) ; then cheap.
    assert preference_order(Q[2], C, ChoiceRule(margin=0.05)) == [1, 2, 0]
    # At lambda 20 on prompt 1: mid (0.5), then cheap (0.48) before dear (0.3).
    assert preference_order(Q[0], C, ChoiceRule(cost_weight=20)) == [1, 0, 2]


def test_unavailable_models_are_never_chosen():
    available = np.array([True, False, True])
    assert choose(Q, C, ChoiceRule(margin=0.2), available=available).tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="at least one model"):
        choose(Q, C, available=np.zeros(3, bool))


def test_one_form_only():
    with pytest.raises(ValidationError, match="not both"):
        ChoiceRule(cost_weight=1, margin=0.1)


def test_prompt_costs_are_input_tokens_and_mean_answer_at_each_price():
    prices = [
        ModelPrice(input_per_million=1.0, output_per_million=2.0, mean_output_tokens=100),
        ModelPrice(input_per_million=10.0, output_per_million=30.0, mean_output_tokens=300),
    ]
    costs = prompt_costs(prices, tokens=[1000, 0])
    assert costs == pytest.approx(np.array([[1.2e-3, 1.9e-2], [2e-4, 9e-3]]))
    assert prompt_costs(prices, ["x" * 4000]).shape == (1, 2)


def test_prices_are_found_under_any_spelling_and_missing_ones_say_how_to_add_them():
    prices = Prices(
        models={
            "mixtral-8x7b-instruct-v0.1": ModelPrice(input_per_million=0.6, output_per_million=0.6)
        }
    )
    assert prices.for_model("mistralai/Mixtral-8x7B-Instruct-v0.1").input_per_million == 0.6
    with pytest.raises(ValueError, match="add it under `models:`"):
        prices.for_model("gpt-4-1106-preview")


def test_names_carry_the_rule():
    assert parse_router_model("router-multi-lambda20", ["multi"]).rule == ChoiceRule(cost_weight=20)
    assert parse_router_model("router-multi-margin0.1", ["multi"]).rule == ChoiceRule(margin=0.1)
    with pytest.raises(ModelNameError, match="margin"):
        parse_router_model("router-multi-margin1.5", ["multi"])
