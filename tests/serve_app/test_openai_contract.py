"""One OpenAI contract whichever model answers: the same requests, through the real `openai`
SDK, routed strong (the stand-in API) and weak (vLLM's own OpenAI serving layer), get the
same kind of answer. Only the x-routeray-* headers tell the routes apart.

The weak model is the in-process vLLM backend with the pythonic tool parser: this is where its
tool calling (named, required and auto tool choice, and a streamed call) is proved, end to
end. Its answers are noise from random weights, so the checks hold for any answer: greedy or
seeded where an answer must finish, and a grammar (JSON, a tool's schema) where content must.
"""

from __future__ import annotations

import json

import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
pytestmark = pytest.mark.slow

import openai  # noqa: E402

from tests.serve_app.conftest import KEY  # noqa: E402
from tests.support.tool_calls import TOOL_HISTORY, WEATHER_TOOL  # noqa: E402

# Threshold 0 sends every prompt strong, 1 every prompt weak.
ROUTES = {"strong": "router-gap-0.0", "weak": "router-gap-1.0"}
# An agent's turn: a tool round trip, then the user asks on.
AGENT_TURNS = [*TOOL_HISTORY, {"role": "user", "content": "And tomorrow?"}]
NAMED_TOOL = {"type": "function", "function": {"name": "get_weather"}}
# The arguments a call to WEATHER_TOOL may carry: vLLM's grammar holds the weak model to the
# tool's schema; the stand-in always sends an empty object.
TOOL_ARGUMENTS = {"weak": ({"unit": "c"}, {"unit": "f"}), "strong": ({},)}
# JSON mode (json_object) lets random weights wander through one string past any max_tokens; a
# schema of finitely many values closes the object within a few tokens whatever they choose.
VERDICT_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["s", "m", "l"]}},
            "required": ["ok", "size"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture()
def client(endpoint) -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint[0], api_key=KEY, max_retries=0, timeout=120)


def create(client: openai.OpenAI, route: str, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Name a colour."}])
    raw = client.chat.completions.with_raw_response.create(model=ROUTES[route], **kwargs)
    assert raw.headers["x-routeray-route"] == route
    return raw.parse()


@pytest.mark.parametrize("route", ROUTES)
def test_json_schema_mode_returns_a_json_object(client, route):
    reply = create(client, route, max_tokens=100, temperature=0, response_format=VERDICT_FORMAT)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    answer = json.loads(choice.message.content)
    assert isinstance(answer, dict)
    if route == "weak":
        # vLLM's grammar holds the answer to the schema; the stand-in answers any schema with
        # {"answer": its text}.
        assert set(answer) == {"ok", "size"}, answer
        assert isinstance(answer["ok"], bool) and answer["size"] in ("s", "m", "l"), answer


@pytest.mark.parametrize("route", ROUTES)
def test_n_returns_that_many_choices(client, route):
    reply = create(client, route, n=2, max_tokens=4, temperature=1)
    assert [c.index for c in reply.choices] == [0, 1]


@pytest.mark.parametrize("route", ROUTES)
def test_logprobs_are_returned(client, route):
    reply = create(client, route, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    tokens = reply.choices[0].logprobs.content
    assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("tool_choice", [None, "auto"])
def test_an_agent_turn_with_tools_and_a_tool_result_is_answered(client, route, tool_choice):
    # None sends no tool_choice: with tools, OpenAI (and vLLM) take that as "auto".
    choice_field = {} if tool_choice is None else {"tool_choice": tool_choice}
    reply = create(
        client,
        route,
        messages=AGENT_TURNS,
        tools=[WEATHER_TOOL],
        max_tokens=40,
        temperature=0,
        **choice_field,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content is not None or choice.message.tool_calls


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("seed", [None, 3])
def test_a_required_tool_call_is_made(client, route, seed):
    # Greedy, or sampled with a seed: either way one answer, and the grammar decides its shape.
    sampling = {"temperature": 0} if seed is None else {"temperature": 1, "seed": seed}
    reply = create(
        client,
        route,
        messages=AGENT_TURNS,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        **sampling,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) in TOOL_ARGUMENTS[route]


@pytest.mark.parametrize("route", ROUTES)
def test_a_named_tool_call_is_made(client, route):
    reply = create(
        client,
        route,
        messages=AGENT_TURNS,
        tools=[WEATHER_TOOL],
        tool_choice=NAMED_TOOL,
        max_tokens=60,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's for a call it was told to make by name
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) in TOOL_ARGUMENTS[route]


def test_a_streamed_named_tool_call_joins_to_its_arguments(client):
    # Weak only: the stand-in streams text, never tool calls.
    stream = create(
        client,
        "weak",
        messages=AGENT_TURNS,
        tools=[WEATHER_TOOL],
        tool_choice=NAMED_TOOL,
        max_tokens=60,
        temperature=0,
        stream=True,
    )
    choices = [choice for chunk in stream for choice in chunk.choices]
    calls = [call for choice in choices for call in choice.delta.tool_calls or ()]
    assert {call.index for call in calls} == {0}  # one call, in pieces
    names = [call.function.name for call in calls if call.function and call.function.name]
    assert names == ["get_weather"]
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) in TOOL_ARGUMENTS["weak"]
    finishes = [choice.finish_reason for choice in choices if choice.finish_reason]
    assert finishes == ["stop"] and choices[-1].finish_reason == "stop"
