"""Request validation and model-name resolution, without a server."""

from __future__ import annotations

import json

import pytest

from serve_app.errors import APIError
from serve_app.requests import (
    Target,
    parse_chat_request,
    parse_route_request,
    resolve_model,
    resolve_router,
    routing_text,
)

THRESHOLDS = {"gap": 0.4, "default": 0.4, "gap-large": 0.7}
# Thresholds recorded by strong share (5 % to 95 %); gap-large records none.
SHARES = {"gap": {0.05: 0.9, 0.3: 0.6, 0.95: 0.1}, "gap-large": {}}


def test_a_strong_share_in_the_name_reads_the_recorded_table():
    assert resolve_model("router-gap-30pct", THRESHOLDS, "big", "small", SHARES) == Target(
        "gap", 0.6, None, pinned=True
    )
    # Between recorded shares: interpolated, so 17.5 % lies halfway between 5 % and 30 %.
    target = resolve_model("router-gap-17.5pct", THRESHOLDS, "big", "small", SHARES)
    assert target.threshold == pytest.approx(0.75) and target.pinned
    # A bare name keeps the default threshold, and may be adjusted (not pinned).
    assert not resolve_model("router-gap", THRESHOLDS, "big", "small", SHARES).pinned


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user"}], "messages.0.content"),
        ([{"role": "user", "content": None}], "messages.0.content"),
        (
            [{"role": "system", "content": "s"}, {"role": "tool", "tool_call_id": "1"}],
            "messages.1.content",
        ),
        ([{"role": "assistant"}, {"role": "user", "content": "hi"}], "messages.0.content"),
    ],
)
def test_a_message_without_content_is_refused_as_openai_does(messages, param):
    with pytest.raises(APIError) as info:
        parse_chat_request(json.dumps({"model": "m", "messages": messages}).encode())
    assert info.value.status == 400 and info.value.param == param
    assert info.value.code == "missing_required_parameter"


def test_an_assistant_message_that_calls_tools_may_leave_content_out():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    request = parse_chat_request(json.dumps({"model": "m", "messages": messages}).encode())
    assert request.messages[1].content is None


def test_resolve_router_names_thresholds_and_backends():
    assert resolve_model("router-gap", THRESHOLDS, "big", "small") == Target("gap", 0.4, None)
    assert resolve_model("router-gap-0.25", THRESHOLDS, "big", "small") == Target(
        "gap", 0.25, None, pinned=True
    )
    assert resolve_model("router-gap-large", THRESHOLDS, "big", "small") == Target(
        "gap-large", 0.7, None
    )
    assert resolve_model("router-gap-large-0.9", THRESHOLDS, "big", "small") == Target(
        "gap-large", 0.9, None, pinned=True
    )
    assert resolve_model("big", THRESHOLDS, "big", "small") == Target(None, None, "strong")
    assert resolve_model("small", THRESHOLDS, "big", "small") == Target(None, None, "weak")


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("router-gap-1.01", 400, "outside [0, 1]"),
        ("router-gap--0.1", 400, "outside [0, 1]"),
        ("router-gap-x", 400, "not a number"),
        ("router-gap-100pct", 400, "below 100pct"),
        ("router-gap-0pct", 400, "above 0pct"),
        ("router-gap-large-30pct", 400, "records no thresholds by strong share"),
        ("router-gap-99pct", 400, "outside the recorded range"),
        ("router-other", 404, "unknown router"),
        ("gpt-9", 404, "not found"),
    ],
)
def test_resolve_errors(model, status, words):
    with pytest.raises(APIError) as info:
        resolve_model(model, THRESHOLDS, "big", "small", SHARES)
    assert info.value.status == status and words in info.value.message
    assert info.value.body()["error"]["param"] == "model"


def test_routing_text_last_user_or_conversation():
    request = parse_chat_request(
        json.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "second"},
                            {"type": "image_url", "image_url": {"url": "x"}},
                        ],
                    },
                ],
            }
        ).encode()
    )
    assert routing_text(request, "last_user") == "second"
    assert routing_text(request, "conversation") == (
        "system: be brief\n\nuser: first\n\nassistant: ok\n\nuser: second"
    )


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{", None),
        (b'"text"', None),
        (b'{"model": "m", "messages": [], "stream": false}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0}',
            "max_tokens",
        ),
        (b'{"model": "", "messages": [{"role": "user", "content": "a"}]}', "model"),
    ],
)
def test_parse_errors_are_400_with_the_param(raw, param):
    with pytest.raises(APIError) as info:
        parse_chat_request(raw)
    assert info.value.status == 400
    if param:
        assert info.value.param.startswith(param)


@pytest.mark.parametrize(
    ("part", "param", "says"),
    [
        ({"type": ""}, "messages.0.content.0", "does not match any of the expected tags"),
        ({"type": "text"}, "messages.0.content.0.text", "Field required"),
        ({"type": "text", "text": 5}, "messages.0.content.0.text", "valid string"),
        ({"type": "image_url"}, "messages.0.content.0.image_url", "Field required"),
        (
            {"type": "input_audio", "input_audio": {"data": "x"}},
            "messages.0.content.0.input_audio.format",
            "Field required",
        ),
    ],
)
def test_a_content_part_needs_what_its_kind_requires(part, param, says):
    """The request document calls valid only parts a backend can read (a part of an unknown
    kind, or a text part without text, once passed as valid and failed in vLLM); the error
    names the part's field, not a union branch's."""
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    with pytest.raises(APIError) as info:
        parse_chat_request(raw.encode())
    assert info.value.status == 400
    assert info.value.param == param and says in str(info.value)


def test_route_request_chat_body_or_prompts():
    chat = {
        "model": "router-gap",
        "stream": True,
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    }
    raw = json.dumps(chat).encode()
    assert parse_route_request(raw, "last_user", 4) == ("router-gap", ["second"])
    assert parse_route_request(raw, "conversation", 4)[1] == [
        "user: first\n\nassistant: ok\n\nuser: second"
    ]
    prompts = json.dumps({"model": "router-gap-0.3", "prompts": ["a", "b c"], "user": "u1"})
    assert parse_route_request(prompts.encode(), "last_user", 2) == ("router-gap-0.3", ["a", "b c"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "router-gap"}, "messages"),
        ({"model": "router-gap", "prompts": ["a"], "messages": []}, "prompts"),
        ({"model": "router-gap", "prompts": "a"}, "prompts"),
        ({"model": "router-gap", "prompts": []}, "prompts"),
        ({"model": "router-gap", "prompts": ["a", 1]}, "prompts.1"),
        ({"model": "router-gap", "prompts": ["a", None]}, "prompts.1"),
        ({"model": "router-gap", "prompts": ["a", " "]}, "prompts.1"),
        ({"model": "router-gap", "prompts": ["a", "b", "c"]}, "prompts"),
        ({"prompts": ["a"]}, "model"),
        ({"model": "router-gap", "messages": [{"role": "system", "content": "x"}]}, "messages"),
    ],
)
def test_route_request_errors_are_400_with_the_param(body, param):
    with pytest.raises(APIError) as info:
        parse_route_request(json.dumps(body).encode(), "last_user", 2)
    assert info.value.status == 400 and info.value.param == param


def test_route_needs_a_router_model():
    assert resolve_router("router-gap-0.2", THRESHOLDS, "big", "small") == Target(
        "gap", 0.2, None, pinned=True
    )
    with pytest.raises(APIError) as info:
        resolve_router("small", THRESHOLDS, "big", "small")
    assert info.value.status == 400 and info.value.param == "model"
    assert "router-default, router-gap, router-gap-large" in info.value.message
    with pytest.raises(APIError) as info:
        resolve_router("gpt-9", THRESHOLDS, "big", "small")
    assert info.value.status == 404
