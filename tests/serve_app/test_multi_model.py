"""Many models behind one endpoint, end to end on a real local Ray Serve app: an N-model router
(`router-topics`) sends each prompt to one of three OpenAI-compatible backends (three stand-ins
with fault injection, each answering with its own prefix), falls back down the rule's order
when the chosen one fails, and says in its headers which model answered and why. Also the
build-time checks of such a config against a real N-model router directory.

The app is deployed beside the package's main app when that one is up (its own route prefix,
no CPUs of its own: the main app's vLLM engine and router hold both of the run's CPUs), else on
a Serve started here."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from backends import OpenAIBackendConfig
from routeray.demo.strong_standin import StrongStandin
from routers import load_router
from routers.decision.choice import ChoiceRule, preference_order, prompt_costs
from routers.prices import ModelPrice
from serve_app.app import check_routers
from serve_app.config import RouterSpec, ServeConfig
from tests.support.multi_router import topic_router

pytestmark = pytest.mark.slow

MODELS = ["alpha-model", "beta-model", "gamma-model"]
# Equal prices: the default rule then picks each prompt's best model (topic_router's promise).
PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
KEY = "multi-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def prefix(model: str) -> str:
    return f"{model} says: "


# -- a router directory ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return topic_router(tmp_path_factory.mktemp("multi") / "topics", MODELS)


# -- the app ---------------------------------------------------------------------------------


def backend(model: str, base_url: str = "http://127.0.0.1:9/v1") -> dict:
    # No retries inside a backend: one injected fault is one failed call.
    return {"kind": "openai", "model": model, "base_url": base_url, "max_retries": 0}


def multi_config(router: Path, urls: dict[str, str] | None = None, **changes) -> ServeConfig:
    urls = urls or {}
    a, b, c = (backend(m, urls.get(m, "http://127.0.0.1:9/v1")) for m in MODELS)
    document = {
        "routers": [
            {"name": "topics", "path": str(router), "placement": "deployment"},
            {"name": "topics-local", "path": str(router), "placement": "ingress"},
            {
                "name": "topics-best",
                "path": str(router),
                "placement": "ingress",
                "rule": {"cost_weight": 0.0},
            },
        ],
        "strong": a,
        "weak": b,
        "backends": [c],
        "prices": {"models": {m: PRICE for m in MODELS}},
    }
    return ServeConfig.model_validate(document | changes)


@pytest.fixture(scope="module")
def app(topics, ray_cluster, tmp_path_factory):
    """(base URL ending in /v1, {model: its stand-in}, {model: a prompt routed to it})."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from backends import SecretRef
    from routeray.demo.config import free_port
    from serve_app.app import build
    from serve_app.config import AuthConfig, IngressConfig, RouterDeploymentConfig

    router, sent = topics
    standins = {m: StrongStandin(answer_prefix=prefix(m)).start() for m in MODELS}
    keys = tmp_path_factory.mktemp("multi-keys") / "keys"
    keys.write_text(KEY)
    config = multi_config(
        router,
        {m: s.base_url for m, s in standins.items()},
        auth=AuthConfig(api_keys=SecretRef(file=str(keys))),
        router_deployment=RouterDeploymentConfig(num_cpus=0),
        ingress=IngressConfig(num_cpus=0),
    )
    ray_cluster.ensure()
    client = _get_global_client(raise_if_no_controller_running=False)
    started = client is None
    if started:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    else:
        port = client.http_config.port
    serve.run(build(config), name="multi", route_prefix="/multi")
    try:
        yield f"http://127.0.0.1:{port}/multi/v1", standins, sent
    finally:
        serve.delete("multi")
        if started:
            serve.shutdown()
        for standin in standins.values():
            standin.stop()


@pytest.fixture()
def standins(app):
    for standin in app[1].values():
        standin.reset()
    yield app[1]
    for standin in app[1].values():
        standin.reset()


def chat(app, prompt: str, model: str = "router-topics", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    return httpx.post(f"{app[0]}/chat/completions", json=body, headers=AUTH, timeout=60)


def decision(app, prompt: str, model: str = "router-topics") -> dict:
    body = {"model": model, "prompts": [prompt]}
    response = httpx.post(f"{app[0]}/route", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]


def expected_order(app, prompt: str) -> list[str]:
    """The models in the order the default rule picks them for `prompt`, from the qualities
    the endpoint reports and the configured prices."""
    q = decision(app, prompt)["qualities"]
    # In the router's order, as the endpoint lists them: a tie goes to the one listed first.
    names = list(q)
    costs = prompt_costs([ModelPrice(**PRICE)] * 3, [prompt])[0]
    return [names[i] for i in preference_order(np.array([q[m] for m in names]), costs)]


def answered_by(response: httpx.Response) -> str:
    content = response.json()["choices"][0]["message"]["content"]
    return next(m for m in MODELS if content.startswith(prefix(m)))


@pytest.mark.parametrize("router", ["router-topics", "router-topics-local"])
def test_three_prompts_reach_three_backends_through_one_router(app, standins, router):
    for model, prompt in app[2].items():
        response = chat(app, prompt, router)
        assert response.status_code == 200, response.text
        assert answered_by(response) == model
        headers = response.headers
        assert headers["x-routeray-model"] == model
        assert headers["x-routeray-route"] == model
        assert headers["x-routeray-rule"] == "margin=0.05"
        assert "x-routeray-fallback" not in headers and "x-routeray-threshold" not in headers
        seen = decision(app, prompt, router)
        assert seen["model"] == seen["route"] == model
        assert float(headers["x-routeray-score"]) == pytest.approx(
            seen["qualities"][model], abs=1e-5
        )
        assert float(headers["x-routeray-cost"]) == pytest.approx(seen["cost_usd"], rel=1e-4)
        assert seen["cost_usd"] > 0 and seen["rule"] == "margin=0.05"
    assert all(s.requests == 1 for s in standins.values())


def test_the_chosen_model_failing_is_answered_by_the_next_by_the_rule(app, standins):
    for chosen, prompt in app[2].items():
        order = expected_order(app, prompt)
        assert order[0] == chosen
        standins[order[0]].inject("500")
        response = chat(app, prompt)
        assert response.status_code == 200, response.text
        assert answered_by(response) == order[1]
        assert response.headers["x-routeray-model"] == order[1]
        assert response.headers["x-routeray-route"] == chosen
        assert response.headers["x-routeray-fallback"] == f"{chosen}-failed"
        assert standins[order[0]].requests == 1 and standins[order[2]].requests == 0
        standins[order[0]].reset()
        standins[order[1]].reset()


def test_with_the_second_failing_too_the_third_answers(app, standins):
    prompt = app[2][MODELS[0]]
    order = expected_order(app, prompt)
    standins[order[0]].inject("503")
    standins[order[1]].inject("429")
    response = chat(app, prompt, stream=False)
    assert response.status_code == 200, response.text
    assert answered_by(response) == order[2]
    assert response.headers["x-routeray-model"] == order[2]
    assert response.headers["x-routeray-fallback"] == f"{order[0]}-failed,{order[1]}-failed"


def test_a_stream_falls_back_before_its_first_chunk(app, standins):
    prompt = app[2][MODELS[2]]
    order = expected_order(app, prompt)
    standins[order[0]].inject("502")
    messages = [{"role": "user", "content": prompt}]
    body = {"model": "router-topics", "stream": True, "messages": messages}
    response = httpx.post(f"{app[0]}/chat/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-routeray-model"] == order[1]
    assert response.headers["x-routeray-fallback"] == f"{order[0]}-failed"
    assert prefix(order[1]).split()[0] in response.text and response.text.endswith("[DONE]\n\n")


def test_all_failing_is_the_last_failure_and_a_refusal_never_falls_back(app, standins):
    prompt = app[2][MODELS[1]]
    order = expected_order(app, prompt)
    for model in order:
        standins[model].inject("500")
    response = chat(app, prompt)
    assert response.status_code == 502, response.text
    assert response.headers["x-routeray-fallback"] == ",".join(f"{m}-failed" for m in order[:2])
    assert order[2] in response.json()["error"]["message"]
    for standin in standins.values():
        standin.reset()
    # A request the chosen model refuses is the client's to see, on that model only.
    standins[order[0]].inject("400")
    response = chat(app, prompt)
    assert response.status_code == 400
    assert "x-routeray-fallback" not in response.headers
    assert standins[order[1]].requests == 0


def test_the_rule_comes_from_the_name_or_the_config(app, standins):
    prompt = app[2][MODELS[0]]
    assert decision(app, prompt, "router-topics-lambda20")["rule"] == "cost_weight=20"
    assert decision(app, prompt, "router-topics-margin0.2")["rule"] == "margin=0.2"
    assert decision(app, prompt, "router-topics-best")["rule"] == "cost_weight=0"
    response = chat(app, prompt, "router-topics-lambda0", max_tokens=4)
    assert response.status_code == 200
    assert response.headers["x-routeray-rule"] == "cost_weight=0"
    for wrong in ("router-topics-0.5", "router-topics-30pct"):
        response = chat(app, prompt, wrong)
        assert response.status_code == 400, response.text
        assert "by a rule" in response.json()["error"]["message"]


def test_every_backend_is_listed_and_can_be_named(app, standins):
    listed = httpx.get(f"{app[0]}/models", headers=AUTH, timeout=30).json()["data"]
    names = {m["id"] for m in listed}
    assert set(MODELS) | {"router-topics", "router-topics-local", "router-topics-best"} <= names
    response = chat(app, "Hello there", MODELS[2])
    assert response.status_code == 200 and answered_by(response) == MODELS[2]
    assert response.headers["x-routeray-route"] == MODELS[2]
    # A request naming a model means that model: its failure is not routed elsewhere.
    standins[MODELS[2]].inject("500")
    assert chat(app, "Hello there", MODELS[2]).status_code == 502


def test_route_only_for_many_prompts(app, standins):
    prompts = list(app[2].values())
    body = {"model": "router-topics", "prompts": prompts}
    response = httpx.post(f"{app[0]}/route", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["model"] for d in data] == list(app[2])
    assert all(set(d["qualities"]) == set(MODELS) for d in data)
    assert all(0.0 <= q <= 1.0 for d in data for q in d["qualities"].values())
    assert sum(s.requests for s in standins.values()) == 0  # nothing generated


# -- build-time checks -----------------------------------------------------------------------


def test_the_build_pins_the_backends_the_router_has_labels_for(topics):
    extra = backend("delta-model")
    prices = {"models": {m: PRICE for m in [*MODELS, "delta-model"]}}
    config = multi_config(topics[0], backends=[backend(MODELS[2]), extra], prices=prices)
    checked = check_routers(config.with_absolute_paths())
    # delta-model has a backend but no labels: left out; the pair and the third kept, in the
    # router's own order.
    pinned = checked.routers[0].options["models"]
    assert sorted(pinned) == MODELS
    assert pinned == [m for m in load_router(topics[0]).models if m in MODELS]


def test_narrowing_keeps_the_order_given_and_the_configured_spellings(topics):
    config = multi_config(topics[0])
    config.routers[0].options["models"] = ["Org/Gamma_Model", "alpha-model"]
    checked = check_routers(config.with_absolute_paths())
    assert checked.routers[0].options["models"] == ["gamma-model", "alpha-model"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unpriced", "no price for model 'gamma-model'"),
        ("unlabelled", "no labels for model 'delta-model'"),
        ("no backend", "model 'omega-model' has no backend"),
        ("threshold", "not at a threshold"),
        ("rule on a pair", "routes at a threshold, not by a rule"),
    ],
)
def test_a_config_the_router_cannot_serve_fails_at_build_time(topics, change, message):
    config = multi_config(topics[0])
    spec = config.routers[0]
    if change == "unpriced":
        del config.prices.models["gamma-model"]
    elif change == "unlabelled":
        config.backends.append(OpenAIBackendConfig(**backend("delta-model")))
        config.prices.models["delta-model"] = ModelPrice(**PRICE)
        spec.options["models"] = [*MODELS, "delta-model"]
    elif change == "no backend":
        spec.options["models"] = ["alpha-model", "omega-model"]
    elif change == "threshold":
        spec.threshold = 0.5
    else:
        config.routers.append(RouterSpec(name="pair", rule=ChoiceRule(margin=0.1)))
    with pytest.raises(ValueError, match=message):
        check_routers(config.with_absolute_paths())
