"""The pieces of N-model serving that need no Ray: the serve config's backends and prices, how
a `model` name resolves for an N-model router, and a decision as the ordered list of backends
the endpoint tries (serve_app.plans)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from backends import BackendError
from routers.decision.choice import ChoiceRule, preference_order, prompt_costs
from routers.prices import ModelPrice
from serve_app.config import RouterSpec, ServeConfig
from serve_app.errors import APIError
from serve_app.plans import direct_plan, multi_decisions, multi_plan, two_model_plan
from serve_app.requests import resolve_model, resolve_router


def backend(model: str) -> dict:
    return {"kind": "openai", "model": model, "base_url": "http://127.0.0.1:9/v1"}


def config(**changes) -> ServeConfig:
    document = {
        "strong": backend("model-a"),
        "weak": backend("model-b"),
        "backends": [backend("model-c")],
        "prices": {
            "models": {
                "model-a": {"input_per_million": 10, "output_per_million": 30},
                "model-c": {"input_per_million": 1, "output_per_million": 2},
            }
        },
    }
    return ServeConfig.model_validate(document | changes)


# -- the config ------------------------------------------------------------------------------


def test_backends_are_keyed_strong_weak_then_by_model_name():
    c = config()
    assert list(c.backend_configs()) == ["strong", "weak", "model-c"]
    assert c.backend_for("model-c") == "model-c"
    assert c.backend_for("model-a") == "strong"
    # Any spelling the one normaliser maps to a configured name finds it.
    assert c.backend_for("someorg/Model_C") == "model-c"
    assert c.backend_for("model-z") is None


def test_prices_come_from_prices_models_then_the_pair_defaults():
    c = config()
    assert c.price_of("model-c").input_per_million == 1
    # An entry under prices.models wins for the strong backend too ...
    assert c.price_of("strong").input_per_million == 10
    # ... and the weak one, unlisted there, keeps prices.weak.
    assert c.price_of("weak") == c.prices.weak
    unpriced = config(backends=[backend("model-c"), backend("model-d")])
    with pytest.raises(ValueError, match="no price for model 'model-d'"):
        unpriced.price_of("model-d")


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ([backend("model-a")], "'model-a' is configured twice"),
        ([backend("model-c"), backend("model-c")], "'model-c' is configured twice"),
        # Two spellings of one model are one model: which would the router's labels mean?
        ([backend("org/Model_B")], "the same as 'model-b'"),
        ([backend("strong")], "'strong' and 'weak' name the two-model pair"),
    ],
)
def test_backend_names_must_be_unique(backends, message):
    with pytest.raises(ValidationError, match=message):
        config(backends=backends)


def test_existing_two_backend_configs_stay_valid():
    c = ServeConfig.model_validate({"strong": backend("s"), "weak": backend("w")})
    assert c.backends == [] and list(c.backend_configs()) == ["strong", "weak"]


def test_a_rule_belongs_to_an_n_model_router_and_a_threshold_to_a_pair():
    spec = RouterSpec(name="multi", rule=ChoiceRule(cost_weight=20))
    assert spec.rule.describe() == "cost_weight=20"
    with pytest.raises(ValidationError, match="give one of them"):
        RouterSpec(name="multi", rule=ChoiceRule(margin=0.1), threshold=0.5)


# -- names -----------------------------------------------------------------------------------

THRESHOLDS = {"gap": 0.3}
MULTI = {"multi": None, "cheap": ChoiceRule(cost_weight=100)}


def resolve(model: str, *, route_only: bool = False):
    function = resolve_router if route_only else resolve_model
    return function(model, THRESHOLDS, "model-a", "model-b", multi=MULTI, others=["model-c"])


def test_an_n_model_router_takes_its_configured_rule_or_the_default():
    assert resolve("router-multi").rule == ChoiceRule()
    assert resolve("router-cheap").rule == ChoiceRule(cost_weight=100)
    target = resolve("router-multi-lambda20")
    assert target.rule == ChoiceRule(cost_weight=20) and target.pinned
    assert resolve("router-cheap-margin0.1").rule == ChoiceRule(margin=0.1)
    assert resolve("router-multi").threshold is None


def test_a_two_model_router_keeps_its_threshold_names():
    assert resolve("router-gap").threshold == 0.3 and resolve("router-gap").rule is None
    assert resolve("router-gap-0.7").threshold == 0.7


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("router-multi-0.5", "chooses among N models by a rule"),
        ("router-multi-30pct", "chooses among N models by a rule"),
        ("router-gap-lambda20", "chooses between two models at a threshold"),
        ("router-gap-margin0.1", "chooses between two models at a threshold"),
        ("router-multi-margin2", "margin"),
    ],
)
def test_a_parameter_of_the_other_router_type_is_a_400(model, message):
    with pytest.raises(APIError, match=message) as error:
        resolve(model)
    assert error.value.status == 400


def test_every_backend_can_be_named_directly_but_route_only_needs_a_router():
    assert resolve("model-c").backend == "model-c"
    assert resolve("model-a").backend == "strong"
    with pytest.raises(APIError) as error:
        resolve("model-c", route_only=True)
    assert error.value.status == 400 and "router-multi" in error.value.message
    with pytest.raises(APIError) as error:
        resolve("model-z")
    assert error.value.status == 404 and "'model-c'" in error.value.message


# -- decisions -------------------------------------------------------------------------------

MODELS = ["model-a", "model-b", "model-c"]
KEYS = ["strong", "weak", "model-c"]
SERVICE_FAILURE = BackendError("upstream 500", status=500, retryable=True)


def test_a_two_model_decision_is_today_s_rule():
    strong = two_model_plan(0.8, 0.5)
    assert (strong.order, strong.route) == (["strong", "weak"], "strong")
    assert strong.headers == {"x-routeray-score": "0.800000", "x-routeray-threshold": "0.500000"}
    weak = two_model_plan(0.2, 0.5)
    assert (weak.order, weak.route) == (["weak"], "weak")
    kwargs = {"fallback_to_weak": True, "fallback_to_next": False}
    assert strong.may_try_next("strong", SERVICE_FAILURE, **kwargs)
    assert not strong.may_try_next(
        "strong", SERVICE_FAILURE, fallback_to_weak=False, fallback_to_next=True
    )
    assert not weak.may_try_next("weak", SERVICE_FAILURE, **kwargs)
    assert not direct_plan("strong").may_try_next("strong", SERVICE_FAILURE, **kwargs)


@pytest.mark.parametrize(
    "rule",
    [
        ChoiceRule(),
        ChoiceRule(margin=0.0),
        ChoiceRule(cost_weight=0.0),
        ChoiceRule(cost_weight=2000.0),
        ChoiceRule(margin=1.0),
    ],
    ids=lambda r: r.describe(),
)
def test_an_n_model_decision_tries_models_in_the_rule_s_preference_order(rule):
    qualities = [0.9, 0.5, 0.85]
    costs = [0.003, 0.0001, 0.0002]
    plan = multi_plan(MODELS, KEYS, qualities, costs, rule)
    expected = preference_order(np.array(qualities), np.array(costs), rule)
    assert plan.order == [KEYS[i] for i in expected]
    chosen = expected[0]
    assert plan.route == MODELS[chosen] and plan.multi
    assert float(plan.headers["x-routeray-score"]) == pytest.approx(qualities[chosen], abs=1e-6)
    assert float(plan.headers["x-routeray-cost"]) == pytest.approx(costs[chosen], abs=1e-8)
    assert plan.headers["x-routeray-rule"] == rule.describe()


def test_hand_computed_orders():
    qualities, costs = [0.9, 0.5, 0.87], [0.003, 0.0001, 0.0002]
    # margin 0.05: model-c is within 0.05 of the best and cheaper; then model-a (the best of
    # the two left, and model-b is not within 0.05 of it); then model-b.
    assert multi_plan(MODELS, KEYS, qualities, costs, ChoiceRule()).order == [
        "model-c",
        "strong",
        "weak",
    ]
    # lambda 0: quality alone.
    assert multi_plan(MODELS, KEYS, qualities, costs, ChoiceRule(cost_weight=0)).order == [
        "strong",
        "model-c",
        "weak",
    ]
    # margin 1: price alone.
    assert multi_plan(MODELS, KEYS, qualities, costs, ChoiceRule(margin=1)).order == [
        "weak",
        "model-c",
        "strong",
    ]


def test_an_n_model_fallback_follows_the_same_criterion_as_the_pair():
    plan = multi_plan(MODELS, KEYS, [0.9, 0.5, 0.87], [0.003, 0.0001, 0.0002], ChoiceRule())
    on = {"fallback_to_weak": False, "fallback_to_next": True}
    for status in (429, 500, 502, 503, 504):
        failure = BackendError("down", status=status, retryable=True)
        assert plan.may_try_next("model-c", failure, **on)
        assert plan.may_try_next("strong", failure, **on)
        assert not plan.may_try_next("weak", failure, **on)  # the last one
    for status in (400, 401, 403, 422):
        assert not plan.may_try_next("model-c", BackendError("no", status=status), **on)
    off = {"fallback_to_weak": True, "fallback_to_next": False}
    assert not plan.may_try_next("model-c", SERVICE_FAILURE, **off)


def test_route_only_decisions_for_many_prompts():
    prices = [
        ModelPrice(input_per_million=10, output_per_million=30),
        ModelPrice(input_per_million=0.1, output_per_million=0.1),
        ModelPrice(input_per_million=1, output_per_million=2),
    ]
    texts = ["short", "a much longer prompt " * 50]
    qualities = np.array([[0.9, 0.5, 0.87], [0.6, 0.59, 0.2]])
    costs = prompt_costs(prices, texts)
    data = multi_decisions(MODELS, qualities, costs, ChoiceRule())
    assert [d["model"] for d in data] == ["model-c", "model-b"]
    assert data[1]["route"] == "model-b"
    assert data[0]["qualities"] == {"model-a": 0.9, "model-b": 0.5, "model-c": 0.87}
    assert data[1]["cost_usd"] == pytest.approx(costs[1, 1])
    assert data[0]["rule"] == "margin=0.05"


def test_the_example_multi_config_loads():
    from pathlib import Path

    example = ServeConfig.from_yaml(Path(__file__).parents[2] / "serve_config.multi.yaml")
    assert [b.model for b in example.backend_configs().values()] == [
        "gpt-4-1106-preview",
        "mixtral-8x7b-instruct-v0.1",
        "gpt-3.5-turbo-1106",
    ]
    spec = example.routers[0]
    assert spec.rule == ChoiceRule(margin=0.05)
    # Every model the router is narrowed to has a backend and a price.
    for model in spec.options["models"]:
        assert example.price_of(example.backend_for(model)).input_per_million > 0
