"""Hostile inputs against the real server, one table: bodies over the limit (framed or chunked),
JSON nested 30,000 deep, bytes that are not UTF-8, strings that are not Unicode, NaN and
numbers out of range, every field routeray reads mistyped, empty and odd messages, unknown
roles, `n` and `max_tokens` far beyond reason, duplicate keys, /v1/route with 100,000 prompts
or prompts that are not strings; and Authorization headers no client library would send (CR/LF,
NUL, 100 KB, non-ASCII), written raw to a socket.

What it proves: each gets the status it should and never a 5xx, in bounded time; every error
the app answers is an OpenAI error body; and the server answers a normal request right after
each one."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
pytestmark = pytest.mark.slow

from routeray.demo.config import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from serve_app.requests import MAX_JSON_DEPTH, MAX_N  # noqa: E402
from tests.serve_app.conftest import KEY, MAX_ROUTE_PROMPTS  # noqa: E402
from tests.serve_app.openai_errors import (  # noqa: E402
    assert_openai_error,
    openai_error_problems,
)

AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
HI = [{"role": "user", "content": "hi"}]
# No hostile request may keep the server busier than this. The longest is an answer that
# fills the weak model's whole context (conftest's WEAK_MAX_MODEL_LEN): seconds of work, and
# far below this on a busy machine too.
BOUND_S = 120.0
LIMIT = 64 * 1024  # conftest's max_body_bytes


def chat(**fields: object) -> bytes:
    """A chat body for the weak model (short answers), with `fields` replaced."""
    return json.dumps({"model": WEAK_MODEL, "messages": HI, "max_tokens": 2, **fields}).encode()


def chat_with(raw_field: bytes, model: str = WEAK_MODEL) -> bytes:
    """A chat body with one more field written as raw JSON text (NaN, nesting, bad bytes)."""
    return (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, %s}'
        % (
            model.encode(),
            raw_field,
        )
    )


def content(raw_string: bytes, model: str = "router-gap") -> bytes:
    """A chat body whose user message is the raw JSON string `raw_string` (quotes included)."""
    return b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": %s}]}' % (
        model.encode(),
        raw_string,
    )


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]", inner: bytes = b"") -> bytes:
    return open_ * depth + inner + close * depth


@dataclass(frozen=True)
class Hostile:
    id: str
    body: bytes
    status: int
    # A piece of the error message, or of a successful answer's JSON, when it matters.
    says: str | None = None
    param: str | None = None
    path: str = "/v1/chat/completions"
    method: str = "POST"
    chunked: bool = False


TABLE = [
    # Size: refused before parsing, however the body is framed.
    Hostile("huge body", chat(messages=[{"role": "user", "content": "x" * 1_000_000}]), 413),
    Hostile(
        "huge body, chunked",
        chat(messages=[{"role": "user", "content": "x" * 1_000_000}]),
        413,
        chunked=True,
    ),
    # Nesting: within the byte limit, far beyond what any request needs.
    Hostile("30k nested lists", chat_with(b'"x": ' + nested(30_000)), 400, "nested more than"),
    Hostile(
        "9k nested objects",
        chat_with(b'"x": ' + nested(9_000, b'{"a": ', b"}", b"1")),
        400,
        "nested more than",
    ),
    Hostile("nested at the limit", chat_with(b'"x": ' + nested(MAX_JSON_DEPTH - 1)), 200),
    Hostile("nested one past it", chat_with(b'"x": ' + nested(MAX_JSON_DEPTH)), 400, "nested"),
    Hostile("nested content", content(nested(5_000)), 400, "nested more than"),
    # Encoding: bytes that are not UTF-8, escapes that are not Unicode text.
    Hostile("0xff byte", content(b'"hi \xff there"'), 400, "not valid JSON"),
    Hostile("latin-1 text", content('"caf\xe9"'.encode("latin-1")), 400, "not valid JSON"),
    Hostile("UTF-8-encoded surrogate", content(b'"\xed\xa0\x80"'), 400, "lone surrogate"),
    Hostile("lone surrogate, routed", content(b'"hi \\ud800"'), 400, "lone surrogate"),
    Hostile("lone surrogate, strong", content(b'"\\udfff"', STRONG_MODEL), 400, "lone surrogate"),
    Hostile(
        "lone surrogate prompt",
        b'{"model": "router-gap", "prompts": ["\\ud800"]}',
        400,
        "lone surrogate",
        path="/v1/route",
    ),
    Hostile("lone surrogate key", chat_with(b'"\\ud800": 1'), 400, "lone surrogate"),
    Hostile("surrogate pair (an emoji)", content(b'"\\ud83d\\ude00"'), 200),
    Hostile("NUL, escaped", chat(messages=[{"role": "user", "content": "a\x00b"}]), 200),
    Hostile("NUL, raw byte", content(b'"a\x00b"'), 400, "not valid JSON"),
    # Not a JSON object.
    Hostile("empty body", b"", 400, "not valid JSON"),
    Hostile("not JSON", b"model=router-gap", 400, "not valid JSON"),
    *(
        Hostile(f"JSON {raw.decode()}", raw, 400, "must be a JSON object")
        for raw in (b"null", b'"a string"', b"42", b"[]", b"true")
    ),
    Hostile("truncated", chat()[:-1], 400, "not valid JSON"),
    # Numbers JSON does not have, or that overflow.
    Hostile("temperature NaN", chat_with(b'"temperature": NaN'), 400, "NaN is not"),
    Hostile("temperature Infinity", chat_with(b'"temperature": Infinity'), 400, "Infinity"),
    Hostile("top_p -Infinity", chat_with(b'"top_p": -Infinity'), 400, "-Infinity"),
    Hostile("1e400", chat_with(b'"temperature": 1e400'), 400, "out of range"),
    Hostile(
        "NaN in a passed-on field, strong",
        chat_with(b'"presence_penalty": NaN', STRONG_MODEL),
        400,
        "NaN",
    ),
    Hostile("5,000-digit integer", chat_with(b'"seed": 1' + b"0" * 5_000), 400, "limit"),
    # Every field routeray reads, mistyped.
    Hostile("model int", chat(model=1), 400, param="model"),
    Hostile("model null", chat(model=None), 400, param="model"),
    Hostile("model empty", chat(model=""), 400, param="model"),
    Hostile("model list", chat(model=[WEAK_MODEL]), 400, param="model"),
    Hostile(
        "messages dict", chat(messages={"role": "user", "content": "hi"}), 400, None, "messages"
    ),
    Hostile("messages string", chat(messages="hi"), 400, param="messages"),
    Hostile("messages null", chat(messages=None), 400, param="messages"),
    Hostile("stream 'yes'", chat(stream="yes"), 400, param="stream"),
    Hostile("stream 1", chat(stream=1), 400, param="stream"),
    Hostile(
        "stream_options string", chat(stream=True, stream_options="x"), 400, None, "stream_options"
    ),
    Hostile("n '2'", chat(n="2"), 400, param="n"),
    Hostile("n 2.5", chat(n=2.5), 400, param="n"),
    Hostile("n true", chat(n=True), 400, param="n"),
    Hostile("n 0", chat(n=0), 400, param="n"),
    Hostile("max_tokens -1", chat(max_tokens=-1), 400, param="max_tokens"),
    Hostile("max_tokens 0", chat(max_tokens=0), 400, param="max_tokens"),
    Hostile("max_tokens 'x'", chat(max_tokens="x"), 400, param="max_tokens"),
    Hostile("max_tokens 1e30", chat(max_tokens=1e30), 400, param="max_tokens"),
    Hostile(
        "max_completion_tokens '8'",
        chat(max_completion_tokens="8"),
        400,
        None,
        "max_completion_tokens",
    ),
    Hostile("temperature 'hot'", chat(temperature="hot"), 400, param="temperature"),
    Hostile("temperature '0.5'", chat(temperature="0.5"), 400, param="temperature"),
    Hostile("temperature 3", chat(temperature=3), 400, param="temperature"),
    Hostile("top_p 0", chat(top_p=0), 400, param="top_p"),
    # Messages: empty, odd content, unknown roles.
    Hostile("no messages", chat(messages=[]), 400, param="messages"),
    Hostile("message {}", chat(messages=[{}]), 400, param="messages.0.role"),
    Hostile("message a string", chat(messages=["hi"]), 400, param="messages.0"),
    Hostile(
        "content int",
        chat(messages=[{"role": "user", "content": 5}]),
        400,
        None,
        "messages.0.content",
    ),
    Hostile(
        "content [1]",
        chat(messages=[{"role": "user", "content": [1]}]),
        400,
        None,
        "messages.0.content",
    ),
    Hostile(
        "content part without type",
        chat(messages=[{"role": "user", "content": [{"text": "hi"}]}]),
        400,
        param="messages.0.content",
    ),
    # Both routes refuse a message without content, as the OpenAI API does (vLLM would not).
    Hostile(
        "content null, routed",
        chat(model="router-gap", messages=[{"role": "user", "content": None}]),
        400,
        "missing required parameter",
        "messages.0.content",
    ),
    Hostile(
        "content null, weak",
        chat(messages=[{"role": "user", "content": None}]),
        400,
        "missing required parameter",
        "messages.0.content",
    ),
    Hostile(
        "content missing, weak",
        chat(messages=[{"role": "system", "content": "be brief"}, {"role": "user"}]),
        400,
        "missing required parameter",
        "messages.1.content",
    ),
    Hostile("content [], weak", chat(messages=[{"role": "user", "content": []}]), 200),
    Hostile(
        "role 'wizard'",
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        None,
        "messages.0.role",
    ),
    Hostile(
        "role null", chat(messages=[{"role": None, "content": "hi"}]), 400, None, "messages.0.role"
    ),
    Hostile(
        "role 'USER'",
        chat(messages=[{"role": "USER", "content": "hi"}]),
        400,
        None,
        "messages.0.role",
    ),
    # Work far beyond reason: refused, or capped to what the model can give.
    Hostile("n 10**6", chat(n=10**6), 400, f"less than or equal to {MAX_N}", "n"),
    Hostile("n one over the cap", chat(n=MAX_N + 1), 400, param="n"),
    Hostile("n at the cap", chat(n=MAX_N, max_tokens=1), 200, f'"index":{MAX_N - 1}'),
    Hostile("max_tokens 10**12, weak", chat(max_tokens=10**12), 200, '"chat.completion"'),
    Hostile("max_tokens 2**63, strong", chat(model=STRONG_MODEL, max_tokens=2**63), 200),
    Hostile(
        "max_completion_tokens 10**12, routed",
        chat(model="router-gap", max_tokens=None, max_completion_tokens=10**12),
        200,
    ),
    # Duplicate keys: the last one counts, as in Python's and JavaScript's JSON.
    Hostile(
        "duplicate model, last valid",
        b'{"model": "nope", "model": "%s", "max_tokens": 2, "messages": [{"role": "user", '
        b'"content": "hi"}]}' % WEAK_MODEL.encode(),
        200,
    ),
    Hostile(
        "duplicate model, last unknown",
        b'{"model": "%s", "model": "nope", "messages": [{"role": "user", "content": "hi"}]}'
        % WEAK_MODEL.encode(),
        404,
        param="model",
    ),
    # /v1/route in bulk.
    Hostile(
        "100,000 prompts",
        json.dumps({"model": "router-gap", "prompts": ["a"] * 100_000}).encode(),
        413,
        path="/v1/route",
    ),
    Hostile(
        "20,000 prompts within the byte limit",
        json.dumps(
            {"model": "router-gap", "prompts": [""] * 20_000}, separators=(",", ":")
        ).encode(),
        400,
        f"at most {MAX_ROUTE_PROMPTS}",
        "prompts",
        path="/v1/route",
    ),
    Hostile(
        "prompts not strings",
        json.dumps({"model": "router-gap", "prompts": [1, None, {}]}).encode(),
        400,
        param="prompts.0",
        path="/v1/route",
    ),
    Hostile(
        "prompts a string",
        json.dumps({"model": "router-gap", "prompts": "hi"}).encode(),
        400,
        param="prompts",
        path="/v1/route",
    ),
    Hostile(
        "one 60 KB prompt",
        json.dumps({"model": "router-gap", "prompts": ["word " * 12_000]}).encode(),
        200,
        '"route"',
        path="/v1/route",
    ),
    # Paths and methods the app does not have: FastAPI's refusals, in the OpenAI shape too.
    Hostile("unknown path", chat(), 404, "Not Found", path="/v1/nope"),
    Hostile("GET on a POST route", b"", 405, "Method Not Allowed", method="GET"),
]


def chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 16_384):
        yield body[i : i + 16_384]


def answers_normally(base: str) -> None:
    response = httpx.post(f"{base}/chat/completions", content=chat(), headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_a_hostile_request_gets_its_status_and_an_openai_error(endpoint, case):
    assert len(case.body) <= LIMIT or case.status == 413, "only the size cases may be over"
    root = endpoint[0].removesuffix("/v1")
    started = time.monotonic()
    response = httpx.request(
        case.method,
        root + case.path,
        content=chunks(case.body) if case.chunked else case.body,
        headers=AUTH,
        timeout=BOUND_S,
    )
    assert time.monotonic() - started < BOUND_S
    assert response.status_code == case.status, response.text[:500]
    if case.status >= 400:
        error = assert_openai_error(response.status_code, response.content)
        if case.says:
            assert case.says in error["message"], error
        if case.param:
            param = error["param"] or ""
            assert param == case.param or param.startswith(case.param + "."), error
    elif case.says:
        assert case.says in response.text, response.text[:500]
    answers_normally(endpoint[0])


def raw_request(url: str, authorization: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST a chat request with this Authorization value written as it is, over a socket:
    (status, response headers, body)."""
    parsed = httpx.URL(url)
    body = chat(model="router-gap")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Authorization: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (parsed.host.encode(), authorization, len(body))
    )
    with socket.create_connection((parsed.host, parsed.port), timeout=BOUND_S) as sock:
        sock.sendall(head + body)
        received = bytearray()
        while chunk := sock.recv(65_536):
            received += chunk
    head_bytes, _, payload = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), headers, payload


KEY_B = KEY.encode()
# (id, Authorization value, status, whether the app answered: an OpenAI body; else the HTTP
# server refused the request line before the app saw it, with its own plain-text 400).
HEADERS = [
    # CR/LF ends the header: what follows is a header of its own, never part of the key.
    ("CRLF then a header", b"Bearer " + KEY_B + b"\r\nX-Evil: 1", 200, True),
    # Two Authorization headers are ambiguous: refused, whichever holds the key.
    ("CRLF then a second key", b"Bearer wrong\r\nAuthorization: Bearer " + KEY_B, 401, True),
    (
        "CRLF then the key twice",
        b"Bearer " + KEY_B + b"\r\nAuthorization: Bearer " + KEY_B,
        401,
        True,
    ),
    ("bare LF", b"Bearer " + KEY_B + b"\nX-Evil: 1", 400, False),
    ("bare CR", b"Bearer " + KEY_B + b"\rX-Evil: 1", 400, False),
    ("folded onto the next line", b"Bearer\r\n " + KEY_B, 400, False),
    ("NUL after the key", b"Bearer " + KEY_B + b"\x00", 400, False),
    ("100 KB key", b"Bearer " + b"k" * 100_000, 401, True),
    ("100 KB after the key", b"Bearer " + KEY_B + b" " + b"k" * 100_000, 401, True),
    ("non-ASCII key (UTF-8)", "Bearer ключ-🔑".encode(), 401, True),
    ("non-ASCII key (Latin-1)", b"Bearer \xe9\xff" + KEY_B, 401, True),
    ("the key, non-ASCII appended", KEY_B.join([b"Bearer ", "é".encode()]), 401, True),
    ("empty", b"", 401, True),
    ("scheme only", b"Bearer ", 401, True),
    ("Basic with the key", b"Basic " + KEY_B, 401, True),
]


@pytest.mark.parametrize(
    ("authorization", "status", "from_app"), [h[1:] for h in HEADERS], ids=[h[0] for h in HEADERS]
)
def test_a_hostile_authorization_header_is_refused_or_stays_one_header(
    endpoint, authorization, status, from_app
):
    # The status is the proof for the injected headers: a 200 for "CRLF then a header" means
    # the key was read up to the CRLF and no further (the key is compared whole, so an
    # appended "X-Evil: 1" would be a 401), and a 400 from the HTTP server means the request
    # never reached the app.
    code, _, payload = raw_request(endpoint[0], authorization)
    assert code == status, payload[:500]
    if status >= 400 and from_app:
        error = assert_openai_error(code, payload)
        if status == 401:
            assert error["code"] == "invalid_api_key"
    elif not from_app:
        # Not the app's answer: it would be an OpenAI error body.
        assert openai_error_problems(code, payload), payload[:500]
    answers_normally(endpoint[0])
