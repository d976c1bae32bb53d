"""The in-process vLLM backend against a real engine on a tiny random-weight model.

One engine serves the whole module (it takes about 20 s to start on 2 CPU cores); its answers
are noise, so the tests check shapes, counts and consistency, never content.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Left to vLLM, the CPU KV cache takes 92% of host RAM; the backend already asks for 1 GiB,
# and this pins it whatever the backend's default. vLLM reads it when configuring the engine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]' or '.[gpu]')")

from backends import BackendError, VLLMBackendConfig
from backends.vllm_engine import VLLMEngineBackend
from routeray.demo.tiny_model import build_tiny_model

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 512
MODEL_NAME = "tiny-llama"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Explain routing between a strong and a weak model."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module: the engine's asyncio tasks bind to the loop they first
    run on, so every test must drive the same one."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def backend(model_dir: Path, loop: asyncio.AbstractEventLoop) -> Iterator[VLLMEngineBackend]:
    config = VLLMBackendConfig(
        model=MODEL_NAME,
        model_path=str(model_dir),
        engine_args={"max_model_len": MAX_MODEL_LEN, "seed": 0},
    )
    backend = VLLMEngineBackend(config)
    loop.run_until_complete(backend.start())
    try:
        yield backend
    finally:
        loop.run_until_complete(backend.close())


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _prompt_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


async def _collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def test_build_tiny_model_is_deterministic_and_idempotent(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(again, seed=0) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    size = sum(p.stat().st_size for p in again.iterdir())
    assert size < 10_000_000


def test_complete_is_a_chat_completion(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, tokenizer: Any
) -> None:
    body = loop.run_until_complete(
        backend.complete({"messages": MESSAGES, "max_tokens": 12, "temperature": 0})
    )
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL_NAME
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == _prompt_tokens(tokenizer, MESSAGES)
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_limits_the_answer(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    body = loop.run_until_complete(
        backend.complete({"messages": MESSAGES, "max_tokens": 5, "temperature": 0.7, "seed": 1})
    )
    usage, choice = body["usage"], body["choices"][0]
    assert usage["completion_tokens"] <= 5
    if usage["completion_tokens"] == 5:
        assert choice["finish_reason"] == "length"
    else:
        assert choice["finish_reason"] == "stop"

    # max_completion_tokens (the newer name) wins over max_tokens.
    body = loop.run_until_complete(
        backend.complete(
            {"messages": MESSAGES, "max_tokens": 50, "max_completion_tokens": 3, "temperature": 0}
        )
    )
    assert body["usage"]["completion_tokens"] <= 3


def test_default_max_tokens_fits_the_context(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, tokenizer: Any
) -> None:
    # A prompt near the limit leaves fewer than the default 256 tokens of room: the answer is
    # cut to fit instead of the request failing.
    user = " ".join(["model"] * 350)
    messages = [{"role": "user", "content": user}]
    prompt_tokens = _prompt_tokens(tokenizer, messages)
    room = MAX_MODEL_LEN - prompt_tokens
    assert 0 < room < 256, prompt_tokens
    body = loop.run_until_complete(
        backend.complete({"messages": messages, "max_tokens": 10_000, "temperature": 0})
    )
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["total_tokens"] <= MAX_MODEL_LEN


def test_stream_matches_complete(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    request = {"messages": MESSAGES, "max_tokens": 24, "temperature": 0, "seed": 3}
    full = loop.run_until_complete(backend.complete(request))
    chunks = loop.run_until_complete(
        _collect(
            backend.stream({**request, "stream": True, "stream_options": {"include_usage": True}})
        )
    )

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == MODEL_NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"

    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == full["usage"]

    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == full["choices"][0]["finish_reason"]
    assert finish["delta"] == {}
    body = chunks[1:-2]
    assert all(c["choices"][0]["finish_reason"] is None for c in body)
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in body)
    text = "".join(c["choices"][0]["delta"]["content"] for c in body)
    assert text == full["choices"][0]["message"]["content"]


def test_stream_without_usage_ends_with_finish(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    chunks = loop.run_until_complete(
        _collect(backend.stream({"messages": MESSAGES, "max_tokens": 4, "temperature": 0}))
    )
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("usage" not in c for c in chunks)


def test_abandoned_stream_aborts_the_request(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    engine = backend._engine
    assert engine is not None

    async def read_one_then_stop() -> int:
        stream = backend.stream({"messages": MESSAGES, "max_tokens": 400, "temperature": 0})
        async for _ in stream:
            assert engine.get_num_unfinished_requests() == 1
            break
        await stream.aclose()  # what a server does when the client disconnects
        await asyncio.sleep(0.2)
        return engine.get_num_unfinished_requests()

    assert loop.run_until_complete(read_one_then_stop()) == 0


def test_cancelled_stream_aborts_the_request(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    engine = backend._engine
    assert engine is not None

    async def cancel_while_reading() -> int:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in backend.stream({"messages": MESSAGES, "max_tokens": 400}):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()  # what an ASGI server does to a handler whose client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        return engine.get_num_unfinished_requests()

    assert loop.run_until_complete(cancel_while_reading()) == 0


def test_concurrent_completes(backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop) -> None:
    async def many() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(
                backend.complete(
                    {
                        "messages": [{"role": "user", "content": f"Question number {i}?"}],
                        "max_tokens": 8,
                        "seed": i,
                    }
                )
                for i in range(8)
            )
        )

    bodies = loop.run_until_complete(many())
    assert len(bodies) == 8
    assert len({b["id"] for b in bodies}) == 8
    for body in bodies:
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 1 <= body["usage"]["completion_tokens"] <= 8


def test_list_of_text_parts(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, tokenizer: Any
) -> None:
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}]
    body = loop.run_until_complete(
        backend.complete(
            {"messages": [{"role": "user", "content": parts}], "max_tokens": 3, "temperature": 0}
        )
    )
    joined = [{"role": "user", "content": "First part.\nSecond part."}]
    assert body["usage"]["prompt_tokens"] == _prompt_tokens(tokenizer, joined)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_too_long_prompt_is_a_400(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    messages = [{"role": "user", "content": " ".join(["question"] * 2000)}]
    with pytest.raises(BackendError) as info:
        loop.run_until_complete(backend.complete({"messages": messages}))
    assert info.value.status == 400
    assert str(MAX_MODEL_LEN) in str(info.value)

    # Streams refuse it before sending any chunk.
    with pytest.raises(BackendError) as info:
        loop.run_until_complete(_collect(backend.stream({"messages": messages})))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"messages": MESSAGES, "n": 2}, "n=2"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "temperature": -1}, "temperature"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
        ({"messages": []}, "messages"),
    ],
)
def test_bad_requests_are_400(
    backend: VLLMEngineBackend,
    loop: asyncio.AbstractEventLoop,
    request_body: dict[str, Any],
    fragment: str,
) -> None:
    with pytest.raises(BackendError) as info:
        loop.run_until_complete(backend.complete(request_body))
    assert info.value.status == 400
    assert fragment in str(info.value)

    with pytest.raises(BackendError) as info:
        loop.run_until_complete(_collect(backend.stream(request_body)))
    assert info.value.status == 400


def test_close_ends_requests_in_flight(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    # Last in the module on purpose: it closes the shared engine (the fixture's close() after
    # it is a no-op).
    async def close_under_load() -> BaseException | dict[str, Any]:
        task = asyncio.create_task(backend.complete({"messages": MESSAGES, "max_tokens": 400}))
        await asyncio.sleep(0.5)
        assert not task.done()
        await backend.close()
        return (await asyncio.gather(task, return_exceptions=True))[0]

    outcome = loop.run_until_complete(close_under_load())
    assert isinstance(outcome, BackendError), outcome
    assert outcome.status == 503 and outcome.retryable
    assert not backend.started

    with pytest.raises(BackendError) as info:
        loop.run_until_complete(backend.complete({"messages": MESSAGES}))
    assert info.value.status == 503
