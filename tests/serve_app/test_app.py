"""The online endpoint end to end: a real local Ray Serve, the real vLLM engine on a tiny
model, the shipped router, the strong-API stand-in with faults, and the real `openai` SDK.
The app is the `endpoint` fixture of conftest.py, shared with the other serve test modules."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
pytestmark = pytest.mark.slow

import openai  # noqa: E402

from routeray.demo.config import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from tests.serve_app.conftest import (  # noqa: E402
    KEY,
    check_prompts_not_logged,
    scrape_metrics,
)
from tests.support.metric_names import families  # noqa: E402


@pytest.fixture()
def client(endpoint) -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint[0], api_key=KEY, max_retries=0, timeout=60)


def ask(client: openai.OpenAI, model: str, text: str = "What is 2 + 2?", **kwargs):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=8, **kwargs
    )


def test_threshold_zero_routes_strong_and_one_routes_weak(client):
    strong = ask(client, "router-gap-0.0")
    assert strong.headers["x-routeray-route"] == "strong"
    assert 0.0 <= float(strong.headers["x-routeray-score"]) <= 1.0
    assert strong.parse().model == STRONG_MODEL
    weak = ask(client, "router-gap-1.0")
    assert weak.headers["x-routeray-route"] == "weak"
    body = weak.parse()
    assert body.model == WEAK_MODEL
    assert body.usage.completion_tokens <= 8


def test_both_tiers_are_served_by_name(client):
    """router-minilm scores with its own router: same prompt, another score than router-gap;
    router-fast is another name of router-gap (the default is the fast tier)."""
    text = "Prove that every bounded monotone sequence of real numbers converges."
    minilm = ask(client, "router-minilm", text)
    gap = ask(client, "router-gap", text)
    fast = ask(client, "router-fast", text)
    assert minilm.headers["x-routeray-score"] != gap.headers["x-routeray-score"]
    assert minilm.headers["x-routeray-threshold"] != gap.headers["x-routeray-threshold"]
    assert fast.headers["x-routeray-score"] == gap.headers["x-routeray-score"]
    assert ask(client, "router-minilm-0.0", text).headers["x-routeray-route"] == "strong"


def test_router_names_and_aliases_use_the_calibrated_threshold(client):
    for model in ("router-gap", "router-default", "router-default-0.5"):
        reply = ask(client, model)
        score = float(reply.headers["x-routeray-score"])
        threshold = float(reply.headers["x-routeray-threshold"])
        expected = "strong" if score >= threshold else "weak"
        assert reply.headers["x-routeray-route"] == expected
        assert reply.parse().model == (STRONG_MODEL if expected == "strong" else WEAK_MODEL)


def test_backend_model_names_skip_routing(client):
    reply = ask(client, WEAK_MODEL)
    assert reply.headers["x-routeray-route"] == "weak"
    assert "x-routeray-score" not in reply.headers
    assert reply.parse().model == WEAK_MODEL


def test_the_router_reads_the_last_user_message(client):
    texts = ["Write a haiku about spring.", "Prove that the square root of 2 is irrational."]
    scores = []
    for last in texts:
        messages = [
            {"role": "user", "content": texts[0] if last == texts[1] else texts[1]},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": last},
        ]
        reply = client.chat.completions.with_raw_response.create(
            model="router-gap-0.5", messages=messages, max_tokens=4
        )
        alone = ask(client, "router-gap-0.5", last)
        assert reply.headers["x-routeray-score"] == alone.headers["x-routeray-score"]
        scores.append(float(alone.headers["x-routeray-score"]))
    assert scores[0] != scores[1]


def test_streaming_sync(client):
    for model in ("router-gap-0.0", "router-gap-1.0"):
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            stream=True,
        )
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert {c.model for c in chunks} == {STRONG_MODEL if model.endswith("0.0") else WEAK_MODEL}


def test_async_and_concurrent_requests(endpoint):
    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=endpoint[0], api_key=KEY, max_retries=0) as aclient:

            async def one(i: int) -> str:
                reply = await aclient.chat.completions.create(
                    model="router-gap-1.0" if i % 2 else "router-gap-0.0",
                    messages=[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
                    max_tokens=4,
                )
                return reply.model

            stream = await aclient.chat.completions.create(
                model="router-gap-1.0",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                stream=True,
            )
            assert [c async for c in stream][-1].choices[0].finish_reason is not None
            return await asyncio.gather(*(one(i) for i in range(12)))

    models = asyncio.run(main())
    assert models.count(STRONG_MODEL) == 6 and models.count(WEAK_MODEL) == 6


def test_strong_failure_falls_back_to_weak(client, endpoint):
    standin = endpoint[1]
    standin.inject("500", times=2)  # the first try and its one retry
    reply = ask(client, "router-gap-0.0")
    assert reply.headers["x-routeray-route"] == "weak"
    assert reply.headers["x-routeray-fallback"] == "strong-failed"
    assert reply.parse().model == WEAK_MODEL


def test_strong_failure_fallback_when_streaming(client, endpoint):
    endpoint[1].inject("503", times=2)
    stream = client.chat.completions.with_raw_response.create(
        model="router-gap-0.0",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
    )
    assert stream.headers["x-routeray-fallback"] == "strong-failed"
    assert {c.model for c in stream.parse()} == {WEAK_MODEL}


@pytest.mark.parametrize("status", ["400", "422"])
def test_a_request_the_strong_model_rejects_is_the_clients_error_not_a_fallback(
    client, endpoint, status
):
    endpoint[1].inject(status, times=1)
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, "router-gap-0.0")
    assert info.value.status_code == int(status)
    assert "strong model rejected the request" in info.value.body["message"]
    # Neither retried nor sent elsewhere: one fault was queued, so a retry would have succeeded.
    assert "x-routeray-fallback" not in info.value.response.headers


@pytest.mark.parametrize("status", ["401", "403"])
def test_a_refused_strong_key_surfaces_as_a_502_not_a_quiet_downgrade(client, endpoint, status):
    endpoint[1].inject(status, times=1)
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, "router-gap-0.0")
    # Our upstream key is the operator's problem, not the client's: a server error, and
    # ray_routeray_upstream_auth_failures_total counts it (test_metrics_are_exported...).
    assert info.value.status_code == 502
    assert info.value.body["type"] == "api_error"
    assert "x-routeray-fallback" not in info.value.response.headers
    # The next request, with the key accepted again, is answered by the strong model.
    assert ask(client, "router-gap-0.0").parse().model == STRONG_MODEL


def test_naming_the_strong_model_gets_its_error_not_a_fallback(client, endpoint):
    endpoint[1].inject("500", times=2)
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, STRONG_MODEL)
    assert info.value.status_code == 502
    assert info.value.body["type"] == "api_error"


def test_models_lists_routers_and_backends(endpoint):
    base = endpoint[0]
    models = httpx.get(f"{base}/models", headers={"authorization": f"Bearer {KEY}"}).json()
    ids = {m["id"] for m in models["data"]}
    assert {"router-gap", "router-default", "router-fast", "router-minilm"} <= ids
    assert {STRONG_MODEL, WEAK_MODEL} <= ids


BAD_REQUESTS = [
    ("malformed JSON", b'{"model": "router-gap", "messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("missing messages", {"model": "router-gap"}, 400, "messages"),
    ("missing model", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    (
        "wrong-typed field",
        {
            "model": "router-gap",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": "hot",
        },
        400,
        "temperature",
    ),
    ("wrong-typed messages", {"model": "router-gap", "messages": "hi"}, 400, "messages"),
    (
        "unknown role",
        {"model": "router-gap", "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        None,
    ),
    ("empty messages", {"model": "router-gap", "messages": []}, 400, "messages"),
    (
        "no user text",
        {"model": "router-gap", "messages": [{"role": "system", "content": "be brief"}]},
        400,
        "messages",
    ),
    (
        "unknown router",
        {"model": "router-nope", "messages": [{"role": "user", "content": "hi"}]},
        404,
        "model",
    ),
    (
        "unknown model",
        {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]},
        404,
        "model",
    ),
    (
        "threshold above 1",
        {"model": "router-gap-1.5", "messages": [{"role": "user", "content": "hi"}]},
        400,
        "model",
    ),
    (
        "threshold below 0",
        {"model": "router-gap--0.2", "messages": [{"role": "user", "content": "hi"}]},
        400,
        "model",
    ),
    (
        "threshold not a number",
        {"model": "router-gap-abc", "messages": [{"role": "user", "content": "hi"}]},
        400,
        "model",
    ),
    (
        "oversized body",
        {"model": "router-gap", "messages": [{"role": "user", "content": "x" * 70_000}]},
        413,
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "payload", "status", "param"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors(endpoint, case, payload, status, param):
    url = f"{endpoint[0]}/chat/completions"
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    if isinstance(payload, bytes):
        response = httpx.post(url, content=payload, headers=headers, timeout=30)
    else:
        response = httpx.post(url, json=payload, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param:
        assert error["param"] and error["param"].startswith(param)


def test_bad_request_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "router-gap-2")
    assert "outside [0, 1]" in info.value.message


@pytest.mark.parametrize("key", ["wrong-key", KEY + "x", KEY[:-1]])
def test_wrong_key_is_401(endpoint, key):
    client = openai.OpenAI(base_url=endpoint[0], api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        ask(client, "router-gap")
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize("header", [None, f"Basic {KEY}", "Bearer"])
def test_missing_key_is_401(endpoint, header):
    headers = {"authorization": header} if header else {}
    response = httpx.post(
        f"{endpoint[0]}/chat/completions",
        headers=headers,
        timeout=30,
        json={"model": "router-gap", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_metrics_are_exported_through_ray(endpoint, client):
    ask(client, "router-gap-0.0")
    # A strong failure answered by the weak model: the error and fallback counters exist only
    # once counted.
    endpoint[1].inject("500", times=2)
    ask(client, "router-gap-0.0")
    # A refused upstream key: counted apart, because no fallback hides it.
    endpoint[1].inject("401", times=1)
    with pytest.raises(openai.APIStatusError):
        ask(client, "router-gap-0.0")
    # The names and types exactly as Prometheus shows them (docs/DEPLOY.md and deploy/'s
    # dashboard use them). The route-only counter appears once /v1/route is called: its own test.
    wanted = {
        f"# TYPE {name} {kind}"
        for name, kind in families().items()
        if name != "ray_routeray_route_decisions_total"
    }
    lines = scrape_metrics(endpoint[2], lambda lines: wanted <= set(lines))
    missing = sorted(wanted - set(lines))
    assert missing == [], [line for line in lines if "routeray" in line]
    requests = [
        line
        for line in lines
        if line.startswith("ray_routeray_requests_total") and 'route="strong"' in line
    ]
    assert requests and float(requests[0].rsplit(" ", 1)[1]) >= 1


def test_prompts_are_not_logged_unless_the_operator_turns_it_on(endpoint, client):
    def send(base_url: str, text: str) -> None:
        ask(client.with_options(base_url=base_url), "router-gap-0.0", text)

    check_prompts_not_logged(endpoint, send, "purple-elephant-7731", "orange-giraffe-4419")
