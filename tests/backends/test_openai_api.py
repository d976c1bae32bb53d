"""OpenAIAPIBackend against a real StrongStandin on loopback: retries, streaming, limits, keys."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, TypeVar

import httpx
import openai
import pytest

from backends import BackendError, OpenAIBackendConfig, SecretRef
from backends.openai_api import OpenAIAPIBackend, parse_retry_after
from routeray.demo.strong_standin import StrongStandin, answer_for

T = TypeVar("T")

UPSTREAM_NAME = "upstream-snapshot-2024-01-01"
KEY = "sk-test-Secret0123456789abcdef"
KEY_ENV = "ROUTERAY_TEST_STRONG_KEY"
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "What is the capital of France, and why is it Paris?"},
]


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def _shared_standin() -> Iterator[StrongStandin]:
    with StrongStandin(model_name=UPSTREAM_NAME) as standin:
        yield standin


@pytest.fixture()
def standin(_shared_standin: StrongStandin) -> StrongStandin:
    # One server for the module keeps the file fast; each test starts from a clean slate.
    _shared_standin.reset()
    return _shared_standin


@pytest.fixture(scope="module")
def keyed_standin() -> Iterator[StrongStandin]:
    with StrongStandin(api_key=KEY) as standin:
        yield standin


def complete_once(base_url: str, **overrides: Any) -> dict[str, Any]:
    """One `complete` of MESSAGES through a new backend (`make_config(base_url, **overrides)`),
    closed after."""

    async def go() -> dict[str, Any]:
        backend = OpenAIAPIBackend(make_config(base_url, **overrides))
        try:
            return await backend.complete({"messages": MESSAGES})
        finally:
            await backend.close()

    return run(go())


def make_config(base_url: str, **overrides: Any) -> OpenAIBackendConfig:
    # Small waits everywhere: backoff_max_s=0.5 still lets Retry-After up to 2 s through.
    values: dict[str, Any] = {
        "model": "strong-model",
        "base_url": base_url,
        "api_key": SecretRef(env=KEY_ENV),
        "timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "max_retries": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.5,
        "max_concurrency": 8,
    }
    values.update(overrides)
    return OpenAIBackendConfig(**values)


async def collect(backend: OpenAIAPIBackend, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [chunk async for chunk in backend.stream(request)]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# -- plain passthrough ----------------------------------------------------------------------


def test_complete_returns_content_and_config_model(standin: StrongStandin) -> None:
    async def go() -> dict[str, Any]:
        backend = OpenAIAPIBackend(make_config(standin.base_url))
        try:
            return await backend.complete(
                {"model": "router-gap", "messages": MESSAGES, "stream": True, "max_tokens": 50}
            )
        finally:
            await backend.close()

    out = run(go())
    assert out["object"] == "chat.completion"
    assert out["model"] == "strong-model"  # not the upstream's snapshot name
    assert out["choices"][0]["message"]["content"] == answer_for(MESSAGES)
    assert out["usage"]["total_tokens"] > 0
    sent = standin.stats.bodies[-1]
    assert sent["model"] == "strong-model"
    assert sent["stream"] is False
    assert sent["max_tokens"] == 50
    assert standin.requests == 1


def test_openai_sdk_talks_to_standin(standin: StrongStandin) -> None:
    client = openai.OpenAI(base_url=standin.base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="gpt-x", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == answer_for(MESSAGES)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert [m.id for m in client.models.list()] == [UPSTREAM_NAME]

    pieces = []
    usage = None
    for chunk in client.chat.completions.create(
        model="gpt-x",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == answer_for(MESSAGES)
    assert usage is not None and usage.total_tokens > 0

    async def go() -> tuple[str | None, str]:
        aclient = openai.AsyncOpenAI(base_url=standin.base_url, api_key="unused", max_retries=0)
        try:
            full = await aclient.chat.completions.create(model="gpt-x", messages=MESSAGES)  # type: ignore[arg-type]
            text = ""
            stream = await aclient.chat.completions.create(
                model="gpt-x",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            return full.choices[0].message.content, text
        finally:
            await aclient.close()

    full_text, streamed = run(go())
    assert full_text == streamed == answer_for(MESSAGES)


# -- retries --------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(standin: StrongStandin) -> None:
    standin.inject("429", times=2, retry_after=1)

    async def go() -> dict[str, Any]:
        backend = OpenAIAPIBackend(make_config(standin.base_url))
        try:
            return await backend.complete({"messages": MESSAGES})
        finally:
            await backend.close()

    start = time.monotonic()
    out = run(go())
    elapsed = time.monotonic() - start
    assert out["choices"][0]["message"]["content"] == answer_for(MESSAGES)
    assert standin.requests == 3
    # Backoff alone would wait well under 0.1 s in total; two Retry-After: 1 make it >= 2 s.
    assert elapsed >= 1.95


def test_retry_after_is_capped(standin: StrongStandin) -> None:
    standin.inject("429", times=1, retry_after=60)

    async def go() -> dict[str, Any]:
        # Cap = 4 * backoff_max_s = 0.4 s, not the 60 s the server asked for.
        backend = OpenAIAPIBackend(make_config(standin.base_url, backoff_max_s=0.1))
        try:
            return await backend.complete({"messages": MESSAGES})
        finally:
            await backend.close()

    start = time.monotonic()
    run(go())
    # The cap was waited (at least), and not the server's 60 s: a bound far from both, so a
    # busy machine cannot fail it.
    assert 0.35 <= time.monotonic() - start < 20
    assert standin.requests == 2


def test_500_beyond_max_retries_gives_up(standin: StrongStandin) -> None:
    standin.inject("500", times=10)

    with pytest.raises(BackendError) as info:
        complete_once(standin.base_url, max_retries=2)
    assert info.value.status == 500
    assert info.value.retryable is True
    assert "500" in str(info.value) and "stand-in injected" in str(info.value)
    assert standin.requests == 3  # the first try + max_retries


@pytest.mark.parametrize("status", ["400", "404", "422"])
def test_other_4xx_is_not_retried(standin: StrongStandin, status: str) -> None:
    standin.inject(status, times=3)

    with pytest.raises(BackendError) as info:
        complete_once(standin.base_url)
    assert info.value.status == int(status)
    assert info.value.retryable is False
    assert status in str(info.value)
    assert standin.requests == 1


def test_timeout_is_retried_then_reported(standin: StrongStandin) -> None:
    # The server would answer after 30 s (its sleep ends when the client hangs up).
    standin.inject("timeout", times=5, delay=30)

    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        complete_once(standin.base_url, timeout_s=0.5, max_retries=1)
    # Two 0.5 s attempts, not the 30 s stall: a bound far from both.
    assert time.monotonic() - start < 15
    assert "timeout" in str(info.value).lower()
    assert info.value.retryable is True
    assert info.value.status == 504  # what a gateway answers for an upstream timeout
    assert standin.requests == 2


def test_dropped_connection_is_retried(standin: StrongStandin) -> None:
    standin.inject("drop_stream", times=1)  # non-streaming: the body is cut in half

    async def go() -> dict[str, Any]:
        backend = OpenAIAPIBackend(make_config(standin.base_url))
        try:
            return await backend.complete({"messages": MESSAGES})
        finally:
            await backend.close()

    assert run(go())["choices"][0]["message"]["content"] == answer_for(MESSAGES)
    assert standin.requests == 2


def test_connection_refused_is_a_backend_error() -> None:
    # A port bound here and never listened on: connections to it are refused, and no other
    # process can take it meanwhile (as it could a port merely closed a moment ago).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"

        with pytest.raises(BackendError) as info:
            complete_once(base_url, max_retries=1)
    assert info.value.retryable is True
    assert "connection error" in str(info.value)


# -- streaming ------------------------------------------------------------------------------


def test_stream_passthrough(standin: StrongStandin) -> None:
    async def go() -> list[dict[str, Any]]:
        backend = OpenAIAPIBackend(make_config(standin.base_url))
        try:
            return await collect(backend, {"model": "x", "messages": MESSAGES})
        finally:
            await backend.close()

    chunks = run(go())
    assert len(chunks) > 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "strong-model" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == answer_for(MESSAGES)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert standin.stats.bodies[-1]["stream"] is True
    assert standin.stats.bodies[-1]["model"] == "strong-model"


def test_stream_drop_after_first_chunk_is_interrupted(standin: StrongStandin) -> None:
    standin.inject("drop_stream", times=1, after_chunks=2)
    got: list[dict[str, Any]] = []

    async def go() -> None:
        backend = OpenAIAPIBackend(make_config(standin.base_url))
        try:
            async for chunk in backend.stream({"messages": MESSAGES}):
                got.append(chunk)
        finally:
            await backend.close()

    with pytest.raises(BackendError) as info:
        run(go())
    assert len(got) == 2
    assert "interrupted" in str(info.value)
    assert info.value.retryable is False
    assert standin.requests == 1  # text already reached the caller: no second attempt


def test_stream_stall_after_first_chunk_is_interrupted(standin: StrongStandin) -> None:
    # Quiet for 30 s (less once the client hangs up): far beyond the 0.5 s read timeout, so a
    # busy machine cannot see the stream resume first.
    standin.inject("stall_stream", times=1, after_chunks=1, delay=30)
    got: list[dict[str, Any]] = []

    async def go() -> None:
        backend = OpenAIAPIBackend(make_config(standin.base_url, timeout_s=0.5))
        try:
            async for chunk in backend.stream({"messages": MESSAGES}):
                got.append(chunk)
        finally:
            await backend.close()

    with pytest.raises(BackendError) as info:
        run(go())
    assert len(got) == 1
    assert "interrupted" in str(info.value) and "timeout" in str(info.value)
    assert standin.requests == 1


@pytest.mark.parametrize(
    ("fault", "kwargs"),
    [("503", {}), ("429", {"retry_after": 0.2}), ("drop_stream", {"after_chunks": 0})],
)
def test_stream_failure_before_first_chunk_is_retried(
    standin: StrongStandin, fault: str, kwargs: dict[str, Any]
) -> None:
    standin.inject(fault, times=1, **kwargs)

    async def go() -> list[dict[str, Any]]:
        backend = OpenAIAPIBackend(make_config(standin.base_url))
        try:
            return await collect(backend, {"messages": MESSAGES})
        finally:
            await backend.close()

    chunks = run(go())
    assert content_of(chunks) == answer_for(MESSAGES)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert standin.requests == 2


def test_stream_gives_up_before_first_chunk(standin: StrongStandin) -> None:
    standin.inject("502", times=10)

    async def go() -> None:
        backend = OpenAIAPIBackend(make_config(standin.base_url, max_retries=1))
        try:
            await collect(backend, {"messages": MESSAGES})
        finally:
            await backend.close()

    with pytest.raises(BackendError) as info:
        run(go())
    assert info.value.status == 502 and info.value.retryable is True
    assert standin.requests == 2


# -- concurrency ----------------------------------------------------------------------------


def test_concurrency_limit(standin: StrongStandin) -> None:
    # Each call held 1 s at the server: the second of a pair arrives while the first is held,
    # however slow the machine, so both slots are seen in use.
    standin.inject("slow", times=6, delay=1.0)

    async def go() -> list[dict[str, Any]]:
        backend = OpenAIAPIBackend(make_config(standin.base_url, max_concurrency=2))
        try:
            calls = [backend.complete({"messages": MESSAGES}) for _ in range(6)]
            return await asyncio.gather(*calls)
        finally:
            await backend.close()

    start = time.monotonic()
    results = run(go())
    elapsed = time.monotonic() - start
    assert len(results) == 6
    assert elapsed >= 2.95  # 6 calls, 2 at a time, 1 s each: three rounds
    assert standin.stats.max_in_flight == 2


def test_stream_holds_its_slot_until_done(standin: StrongStandin) -> None:
    async def go() -> None:
        backend = OpenAIAPIBackend(make_config(standin.base_url, max_concurrency=1))
        try:
            stream = backend.stream({"messages": MESSAGES})
            first = await stream.__anext__()
            assert first["choices"][0]["delta"]["role"] == "assistant"
            waiting = asyncio.ensure_future(backend.complete({"messages": MESSAGES}))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            rest = [chunk async for chunk in stream]
            assert rest[-1]["choices"][0]["finish_reason"] == "stop"
            out = await asyncio.wait_for(waiting, timeout=5)
            assert out["choices"][0]["message"]["content"] == answer_for(MESSAGES)
        finally:
            await backend.close()

    run(go())
    assert standin.stats.max_in_flight == 1


# -- keys -----------------------------------------------------------------------------------


def test_api_key_is_sent(keyed_standin: StrongStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    keyed_standin.reset()

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        backend = OpenAIAPIBackend(make_config(keyed_standin.base_url))
        try:
            full = await backend.complete({"messages": MESSAGES})
            return full, await collect(backend, {"messages": MESSAGES})
        finally:
            await backend.close()

    full, chunks = run(go())
    assert full["choices"][0]["message"]["content"] == answer_for(MESSAGES)
    assert content_of(chunks) == answer_for(MESSAGES)
    assert KEY not in repr(OpenAIAPIBackend(make_config(keyed_standin.base_url)))


def test_api_key_from_file(
    keyed_standin: StrongStandin, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")

    async def go() -> dict[str, Any]:
        config = make_config(keyed_standin.base_url, api_key=SecretRef(file=str(key_file)))
        backend = OpenAIAPIBackend(config)
        try:
            return await backend.complete({"messages": MESSAGES})
        finally:
            await backend.close()

    assert run(go())["choices"][0]["message"]["content"] == answer_for(MESSAGES)


def _chain_text(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts.append(f"{exc!s} {exc!r}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("stream", [False, True])
def test_wrong_key_is_401_not_retried_and_never_leaks(
    keyed_standin: StrongStandin,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    wrong = "sk-wrong-TopSecretValue987654321"
    monkeypatch.setenv(KEY_ENV, wrong)
    keyed_standin.reset()

    async def go() -> None:
        backend = OpenAIAPIBackend(make_config(keyed_standin.base_url))
        try:
            if stream:
                await collect(backend, {"messages": MESSAGES})
            else:
                await backend.complete({"messages": MESSAGES})
        finally:
            await backend.close()

    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as info:
        run(go())
    assert info.value.status == 401
    assert info.value.retryable is False
    assert "401" in str(info.value) and "Incorrect API key" in str(info.value)
    assert keyed_standin.requests == 1
    # The stand-in echoes the rejected key in its error body, as some real APIs do.
    assert wrong not in _chain_text(info.value)
    assert "TopSecret" not in _chain_text(info.value)
    assert wrong not in caplog.text and KEY not in caplog.text


def test_missing_key_is_401(keyed_standin: StrongStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)

    with pytest.raises(BackendError) as info:
        complete_once(keyed_standin.base_url)
    assert info.value.status == 401


# -- pieces ---------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    date = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(date, now=now.timestamp()) == pytest.approx(7.0)
    past = format_datetime(now - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(past, now=now.timestamp()) == 0.0


def test_header_fault_sets_retry_after(standin: StrongStandin) -> None:
    # The header fault path: the same kinds, asked for per request (as manual demos do).
    with httpx.Client() as client:
        response = client.post(
            f"{standin.base_url}/chat/completions",
            json={"model": "x", "messages": MESSAGES},
            headers={"x-standin-fault": "503", "x-standin-retry-after": "3"},
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["message"]


def test_header_fault_and_health(standin: StrongStandin) -> None:
    with httpx.Client() as client:
        assert client.get(f"{standin.url}/health").json() == {"status": "ok"}
        slow = client.post(
            f"{standin.base_url}/chat/completions",
            json={"model": "x", "messages": MESSAGES},
            headers={"x-standin-fault": "slow", "x-standin-delay": "0.05"},
        )
        assert slow.status_code == 200
        bad = client.post(
            f"{standin.base_url}/chat/completions",
            json={"model": "x", "messages": MESSAGES},
            headers={"x-standin-fault": "nonsense"},
        )
        assert bad.status_code == 400
        empty = client.post(f"{standin.base_url}/chat/completions", json={"messages": []})
        assert empty.status_code == 400
    assert len(standin.faults) == 0  # header faults do not touch the queue


def test_backend_survives_a_new_event_loop(standin: StrongStandin) -> None:
    backend = OpenAIAPIBackend(make_config(standin.base_url))
    for _ in range(2):  # each asyncio.run is a fresh loop; the client must follow it
        out = run(backend.complete({"messages": MESSAGES}))
        assert out["model"] == "strong-model"
    run(backend.close())
    run(backend.close())  # idempotent


def test_unknown_fault_kind_is_rejected(standin: StrongStandin) -> None:
    with pytest.raises(ValueError):
        standin.inject("explode")
    with pytest.raises(ValueError):
        standin.inject("200")
