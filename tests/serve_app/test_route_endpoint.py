"""`POST /v1/route`, the routing decision alone, on the same real local Ray Serve app as
test_app.py (the `endpoint` fixture of conftest.py): scores match the router's own, nothing is
generated, and bad requests get OpenAI-style 4xx errors."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
pytestmark = pytest.mark.slow

from ray import serve  # noqa: E402

from routeray.demo.config import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from tests.serve_app.conftest import (  # noqa: E402
    KEY,
    LIGHT_SHARES,
    MAX_ROUTE_PROMPTS,
    check_prompts_not_logged,
    scrape_metrics,
)

AUTH = {"authorization": f"Bearer {KEY}"}
PROMPTS = [
    "Write a haiku about spring.",
    "Prove that the square root of 2 is irrational.",
    "hi",
    "Explain the difference between TCP and UDP, with examples of when to use each.",
    "Derive the closed form of the sum of the first n cubes and prove it by induction.",
    "What is the capital of France?",
]


def post(endpoint, payload, headers=AUTH) -> httpx.Response:
    url = f"{endpoint[0]}/route"
    if isinstance(payload, bytes):
        headers = {**headers, "content-type": "application/json"}
        return httpx.post(url, content=payload, headers=headers, timeout=60)
    return httpx.post(url, json=payload, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def router(endpoint):
    return serve.get_deployment_handle("Router", app_name="routeray")


def router_score(router, name: str, text: str) -> float:
    return router.score.remote((name, text)).result()


def check_decision(item: dict, score: float, threshold: float) -> None:
    assert item["score"] == pytest.approx(score, abs=1e-5)
    assert item["threshold"] == threshold
    expected = "strong" if item["score"] >= threshold else "weak"
    assert item["route"] == expected
    assert item["model"] == (STRONG_MODEL if expected == "strong" else WEAK_MODEL)


def test_a_chat_body_gets_one_decision_and_nothing_is_generated(endpoint, router):
    standin = endpoint[1]
    before = standin.requests
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": PROMPTS[0]},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": PROMPTS[1]},
    ]
    # router-gap-0.0 would send it to the strong stand-in; stream and max_tokens are ignored.
    body = {"model": "router-gap-0.0", "messages": messages, "stream": True, "max_tokens": 8}
    response = post(endpoint, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    reply = response.json()
    assert reply["object"] == "route" and len(reply["data"]) == 1
    item = reply["data"][0]
    # The router reads the last user message, as the chat path does.
    check_decision(item, router_score(router, "gap", PROMPTS[1]), 0.0)
    assert item["route"] == "strong" and item["model"] == STRONG_MODEL
    assert response.headers["x-routeray-route"] == "strong"
    assert float(response.headers["x-routeray-score"]) == pytest.approx(item["score"], abs=1e-6)
    assert float(response.headers["x-routeray-threshold"]) == 0.0
    assert standin.requests == before


def test_prompts_get_one_decision_each_in_order_from_one_batched_call(endpoint, router):
    standin = endpoint[1]
    before, batches_before = standin.requests, Counter(router.batch_stats.remote().result())
    threshold = router.describe.remote().result()["default"]
    response = post(endpoint, {"model": "router-default", "prompts": PROMPTS})
    assert response.status_code == 200, response.text
    batches = Counter(router.batch_stats.remote().result()) - batches_before
    data = response.json()["data"]
    assert len(data) == len(PROMPTS)
    expected = [router_score(router, "default", p) for p in PROMPTS]
    for item, score in zip(data, expected, strict=True):
        check_decision(item, score, threshold)
    assert len({round(s, 4) for s in expected}) > 1  # the order is checked on distinct scores
    # The prompts reached the router together: its dynamic batching scored them in batches.
    assert max(batches) > 1, batches
    assert "x-routeray-route" not in response.headers  # one decision per prompt: in the body
    assert standin.requests == before


@pytest.mark.parametrize("threshold", ["0.5", "0.0", "1.0"])
def test_an_explicit_threshold_is_honoured(endpoint, router, threshold):
    data = post(endpoint, {"model": f"router-default-{threshold}", "prompts": PROMPTS[:3]})
    chat = post(
        endpoint,
        {"model": f"router-gap-{threshold}", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert data.status_code == chat.status_code == 200
    for item in [*data.json()["data"], *chat.json()["data"]]:
        assert item["threshold"] == float(threshold)
        assert item["route"] == ("strong" if item["score"] >= float(threshold) else "weak")
    if threshold == "0.0":
        assert {i["route"] for i in data.json()["data"]} == {"strong"}
    check_decision(chat.json()["data"][0], router_score(router, "gap", "hi"), float(threshold))


def test_a_single_prompt_in_the_prompts_form_gets_the_headers_too(endpoint):
    response = post(endpoint, {"model": "router-gap-1.0", "prompts": ["hi"]})
    assert response.status_code == 200
    assert response.headers["x-routeray-route"] == response.json()["data"][0]["route"]


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong-key"}, {"authorization": f"Basic {KEY}"}]
)
def test_a_key_is_required(endpoint, headers):
    response = post(endpoint, {"model": "router-gap", "prompts": ["hi"]}, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"


USER = [{"role": "user", "content": "hi"}]
SYSTEM_ONLY = [{"role": "system", "content": "be brief"}]
TOO_MANY = ["hi"] * (MAX_ROUTE_PROMPTS + 1)
BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "router-gap", "prompts": [', 400, None),
    ("not an object", b'["hi"]', 400, None),
    ("neither messages nor prompts", {"model": "router-gap"}, 400, "messages"),
    (
        "both messages and prompts",
        {"model": "router-gap", "messages": USER, "prompts": []},
        400,
        "prompts",
    ),
    ("prompts not a list", {"model": "router-gap", "prompts": "hi"}, 400, "prompts"),
    ("prompts null", {"model": "router-gap", "prompts": None}, 400, "prompts"),
    ("empty prompts", {"model": "router-gap", "prompts": []}, 400, "prompts"),
    ("non-string prompt", {"model": "router-gap", "prompts": ["hi", 3]}, 400, "prompts.1"),
    ("object prompt", {"model": "router-gap", "prompts": [{"text": "hi"}]}, 400, "prompts.0"),
    ("blank prompt", {"model": "router-gap", "prompts": ["hi", "  \n"]}, 400, "prompts.1"),
    ("too many prompts", {"model": "router-gap", "prompts": TOO_MANY}, 400, "prompts"),
    ("missing model", {"prompts": ["hi"]}, 400, "model"),
    ("empty model", {"model": "", "prompts": ["hi"]}, 400, "model"),
    ("strong backend model", {"model": STRONG_MODEL, "prompts": ["hi"]}, 400, "model"),
    ("weak backend model, chat body", {"model": WEAK_MODEL, "messages": USER}, 400, "model"),
    ("unknown model", {"model": "gpt-9", "prompts": ["hi"]}, 404, "model"),
    ("unknown router", {"model": "router-nope", "prompts": ["hi"]}, 404, "model"),
    ("threshold above 1", {"model": "router-gap-1.5", "prompts": ["hi"]}, 400, "model"),
    ("empty messages", {"model": "router-gap", "messages": []}, 400, "messages"),
    ("no user text", {"model": "router-gap", "messages": SYSTEM_ONLY}, 400, "messages"),
    ("oversized body", {"model": "router-gap", "prompts": ["x" * 70_000]}, 413, None),
]


@pytest.mark.parametrize(
    ("case", "payload", "status", "param"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors(endpoint, case, payload, status, param):
    response = post(endpoint, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


def test_a_backend_model_name_is_refused_with_the_router_models(endpoint):
    error = post(endpoint, {"model": WEAK_MODEL, "prompts": ["hi"]}).json()["error"]
    assert "/v1/route needs a router model" in error["message"]
    assert "router-default" in error["message"] and "router-gap" in error["message"]
    assert error["code"] == "router_model_required"


def test_decisions_are_counted_in_metrics(endpoint):
    assert post(endpoint, {"model": "router-gap-0.0", "prompts": PROMPTS[:2]}).status_code == 200

    def strong_decisions(lines: list[str]) -> list[str]:
        return [
            line
            for line in lines
            if line.startswith("ray_routeray_route_decisions_total")
            and 'route="strong"' in line
            and f'model="{STRONG_MODEL}"' in line
        ]

    def counted(lines: list[str]) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in strong_decisions(lines))

    # Each scored batch adds to the counter and the exporter samples it every few seconds: a
    # scrape between two batches of one request sees part of it, so wait for the whole.
    lines = scrape_metrics(endpoint[2], lambda lines: counted(lines) >= 2)
    assert counted(lines) >= 2
    assert "# TYPE ray_routeray_route_decisions_total counter" in lines
    assert "# TYPE ray_routeray_router_latency_seconds histogram" in lines
    assert "# TYPE ray_routeray_strong_share gauge" in lines


def test_prompts_are_not_logged(endpoint):
    def send(base_url: str, text: str) -> None:
        # Both forms of the request: a list of prompts, and a chat body.
        for body in (
            {"model": "router-gap", "prompts": [text, "hi"]},
            {"model": "router-gap", "messages": [{"role": "user", "content": f"{text} again"}]},
        ):
            response = httpx.post(f"{base_url}/route", json=body, headers=AUTH, timeout=60)
            assert response.status_code == 200, response.text

    check_prompts_not_logged(endpoint, send, "violet-walrus-5519", "amber-heron-2287")


def test_a_batch_that_mixes_routers_gives_each_prompt_its_own_routers_score(router):
    """Items queued together form one batch in the replica whatever their router; each must
    get the score its own router gives alone, computed here from the router directories."""
    from routers.checkpoint import load_router
    from routers.shipped import router_path

    items = [(name, p) for p in PROMPTS for name in ("gap", "minilm")]
    batches_before = Counter(router.batch_stats.remote().result())
    scores = router.score_many.remote(items).result()
    batches = Counter(router.batch_stats.remote().result()) - batches_before
    # Twelve items at once, under max_batch_size: scored together, both routers in a batch.
    assert max(batches) > 2, batches
    local = {"gap": load_router(router_path(None)), "minilm": load_router(router_path("minilm"))}
    expected = [float(local[name].score([p])[0]) for name, p in items]
    assert scores == pytest.approx(expected, abs=1e-5)
    # The two routers disagree on these prompts, so a mix-up could not pass unseen.
    assert any(abs(a - b) > 1e-3 for a, b in zip(expected[::2], expected[1::2], strict=True))


def test_a_light_router_scores_in_the_ingress_with_the_same_scores(endpoint, router):
    """`light` (the shipped default, placement auto: a static router) is scored in the ingress
    process: its scores are the router's own, and the router deployment sees none of them."""
    from routers import load_router

    light_dir = next(r.path for r in endpoint[3].routers if r.name == "light")
    batches_before = Counter(router.batch_stats.remote().result())
    data = post(endpoint, {"model": "router-light-0.5", "prompts": PROMPTS}).json()["data"]
    expected = load_router(light_dir).score(PROMPTS)
    for item, score in zip(data, expected, strict=True):
        check_decision(item, float(score), 0.5)
    assert Counter(router.batch_stats.remote().result()) == batches_before
    # A chat request through the same in-ingress router, to the strong stand-in.
    body = {"model": "router-light-0.0", "messages": [{"role": "user", "content": PROMPTS[1]}]}
    response = httpx.post(f"{endpoint[0]}/chat/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-routeray-route"] == "strong"
    assert float(response.headers["x-routeray-score"]) == pytest.approx(expected[1], abs=1e-5)


@pytest.mark.parametrize(("pct", "threshold"), [("30pct", 0.6), ("20pct", 0.75), ("90pct", 0.2)])
def test_a_strong_share_in_the_model_name_routes_at_the_recorded_threshold(
    endpoint, pct, threshold
):
    assert LIGHT_SHARES[0.3] == 0.6  # the table the fixture records (20 % is interpolated)
    response = post(endpoint, {"model": f"router-light-{pct}", "prompts": PROMPTS[:2]})
    assert response.status_code == 200, response.text
    for item in response.json()["data"]:
        assert item["threshold"] == pytest.approx(threshold)
        assert item["route"] == ("strong" if item["score"] >= item["threshold"] else "weak")


@pytest.mark.parametrize(
    ("model", "says"),
    [("router-light-5pct", "outside the recorded range"), ("router-light-100pct", "below 100pct")],
)
def test_a_share_the_router_cannot_honour_is_a_400(endpoint, model, says):
    response = post(endpoint, {"model": model, "prompts": ["hi"]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert says in error["message"] and error["param"] == "model"
