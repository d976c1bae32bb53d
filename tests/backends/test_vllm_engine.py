"""The in-process vLLM backend against a real engine on a tiny random-weight model.

One engine serves most of the module (it takes about 20 s to start on 2 CPU cores); a second,
with a tool parser, serves the tool-calling tests at the end, after the first has closed. The
answers are noise, so the tests check shapes, counts and consistency, never content; where a
grammar constrains the answer (JSON, tool calls) they check that it holds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Left to vLLM, the CPU KV cache takes 92% of host RAM; the backend already asks for 1 GiB,
# and this pins it whatever the backend's default. vLLM reads it when configuring the engine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]' or '.[gpu]')")

from backends import BackendError, VLLMBackendConfig
from backends.vllm_engine import DEFAULT_MAX_TOKENS, VLLMEngineBackend
from routeray.demo.tiny_model import build_tiny_model
from tests.support.tool_calls import TOOL_HISTORY, WEATHER_TOOL

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 512
MODEL_NAME = "tiny-llama"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Explain routing between a strong and a weak model."},
]
# Random weights wander through JSON whitespace forever if the grammar lets them; without it,
# a small schema closes in a few tokens. An engine flag, given as `vllm serve` takes it.
NO_JSON_WHITESPACE = [
    "--structured-outputs-config",
    json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
]
NAMED_TOOL = {"type": "function", "function": {"name": "get_weather"}}


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


def _start(
    model_dir: Path, loop: asyncio.AbstractEventLoop, serving_args: list[str]
) -> Iterator[VLLMEngineBackend]:
    config = VLLMBackendConfig(
        model=MODEL_NAME,
        model_path=str(model_dir),
        engine_args={"max_model_len": MAX_MODEL_LEN, "seed": 0},
        serving_args=serving_args,
    )
    backend = VLLMEngineBackend(config)
    loop.run_until_complete(backend.start())
    try:
        yield backend
    finally:
        loop.run_until_complete(backend.close())


@pytest.fixture(scope="module")
def backend(model_dir: Path, loop: asyncio.AbstractEventLoop) -> Iterator[VLLMEngineBackend]:
    """No tool parser: what the demo and the batch jobs run."""
    yield from _start(model_dir, loop, NO_JSON_WHITESPACE)


@pytest.fixture(scope="class")
def tool_backend(model_dir: Path, loop: asyncio.AbstractEventLoop) -> Iterator[VLLMEngineBackend]:
    # The pythonic parser needs no special tokens, and its "required" and named tool choices
    # are a plain JSON schema, which the whitespace flag keeps short.
    yield from _start(
        model_dir,
        loop,
        ["--enable-auto-tool-choice", "--tool-call-parser", "pythonic", *NO_JSON_WHITESPACE],
    )


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _prompt_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


async def _collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def _complete(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, **request: Any
) -> dict[str, Any]:
    return loop.run_until_complete(backend.complete({"messages": MESSAGES, **request}))


def _stream(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, **request: Any
) -> list[dict[str, Any]]:
    body = {"messages": MESSAGES, "stream": True, **request}
    return loop.run_until_complete(_collect(backend.stream(body)))


def _usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


def test_build_tiny_model_is_deterministic_and_idempotent(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(again, seed=0) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    size = sum(p.stat().st_size for p in again.iterdir())
    assert size < 10_000_000


def test_tiny_template_renders_tools_and_tool_messages(tokenizer: Any) -> None:
    text = tokenizer.apply_chat_template(
        TOOL_HISTORY, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert '"get_weather"' in text.split("<|user|>")[0]  # the tools, before the conversation
    assert '"arguments": "{\\"unit\\": \\"c\\"}"' in text  # the assistant's call
    assert "<|tool|>\n21 degrees</s>" in text
    # Without tools and tool calls it renders as it always did.
    plain = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert plain == (
        "<s><|system|>\nYou are terse.</s>\n<|user|>\n"
        "Explain routing between a strong and a weak model.</s>\n<|assistant|>\n"
    )


def test_serve_args_are_vllm_serves(model_dir: Path) -> None:
    config = VLLMBackendConfig(
        model=MODEL_NAME,
        model_path=str(model_dir),
        engine_args={"max_model_len": MAX_MODEL_LEN},
        serving_args=[
            "--max-model-len",
            "128",
            "--no-enforce-eager",
            "--tool-call-parser",
            "pythonic",
            "--enable-auto-tool-choice",
            "--served-model-name",
            "other",
        ],
    )
    backend = VLLMEngineBackend(config)
    args = backend.build_serve_args()
    assert args.model == str(model_dir)
    assert args.served_model_name == [MODEL_NAME]  # what clients know it as
    assert args.tool_call_parser == "pythonic" and args.enable_auto_tool_choice
    engine_args = backend.build_engine_args()
    assert engine_args.max_model_len == MAX_MODEL_LEN  # engine_args win over flags
    assert engine_args.enforce_eager is False  # a flag overrides the CPU default


@pytest.mark.parametrize(
    ("serving_args", "engine_args", "fragment"),
    [
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--enable-auto-tool-choice"], {}, "--tool-call-parser"),
        (["--enable-auto-tool-choice", "--tool-call-parser", "nope"], {}, "'nope' not found"),
        ([], {"max_modl_len": 128}, "max_modl_len"),
    ],
)
def test_bad_configuration_fails_before_the_engine_starts(
    model_dir: Path,
    loop: asyncio.AbstractEventLoop,
    serving_args: list[str],
    engine_args: dict[str, Any],
    fragment: str,
) -> None:
    config = VLLMBackendConfig(
        model=MODEL_NAME,
        model_path=str(model_dir),
        engine_args=engine_args,
        serving_args=serving_args,
    )
    backend = VLLMEngineBackend(config)
    with pytest.raises(BackendError) as info:
        loop.run_until_complete(backend.start())
    assert info.value.status == 500
    assert fragment in str(info.value)
    assert not backend.started


def test_complete_is_a_chat_completion(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, tokenizer: Any
) -> None:
    body = _complete(backend, loop, model="someone-else", max_tokens=12, temperature=0)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL_NAME
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == _prompt_tokens(tokenizer, MESSAGES)
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    json.dumps(body)  # plain JSON, as it crosses to the ingress


def test_max_tokens_limits_the_answer(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    body = _complete(backend, loop, max_tokens=5, temperature=0.7, seed=1)
    usage, choice = body["usage"], body["choices"][0]
    assert usage["completion_tokens"] <= 5
    if usage["completion_tokens"] == 5:
        assert choice["finish_reason"] == "length"
    else:
        assert choice["finish_reason"] == "stop"

    # max_completion_tokens (the newer name) wins over max_tokens.
    body = _complete(backend, loop, max_tokens=50, max_completion_tokens=3, temperature=0)
    assert body["usage"]["completion_tokens"] <= 3
    body = _complete(backend, loop, max_completion_tokens=4, temperature=0)
    assert body["usage"]["completion_tokens"] <= 4


def test_default_max_tokens(backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop) -> None:
    # vLLM's own default is the whole context left; this backend's is DEFAULT_MAX_TOKENS.
    body = _complete(backend, loop, temperature=0)
    assert body["usage"]["completion_tokens"] <= DEFAULT_MAX_TOKENS
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS


def test_max_tokens_is_capped_to_the_context(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, tokenizer: Any
) -> None:
    # A prompt near the limit leaves fewer than the default 256 tokens of room, and the client
    # asks for more than the whole context: the answer is cut to fit instead of the request
    # failing.
    user = " ".join(["model"] * 350)
    messages = [{"role": "user", "content": user}]
    prompt_tokens = _prompt_tokens(tokenizer, messages)
    room = MAX_MODEL_LEN - prompt_tokens
    assert 0 < room < 256, prompt_tokens
    for field in ("max_tokens", "max_completion_tokens"):
        body = loop.run_until_complete(
            backend.complete({"messages": messages, field: 10_000, "temperature": 0})
        )
        assert body["usage"]["prompt_tokens"] == prompt_tokens
        assert body["usage"]["total_tokens"] <= MAX_MODEL_LEN
        if body["choices"][0]["finish_reason"] == "length":
            assert body["usage"]["total_tokens"] == MAX_MODEL_LEN


def test_n_returns_that_many_choices(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    body = _complete(backend, loop, n=2, max_tokens=6, temperature=1, seed=4)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    assert 2 <= body["usage"]["completion_tokens"] <= 12

    chunks = _stream(backend, loop, n=2, max_tokens=6, temperature=1, seed=4)
    finished = {c["index"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]}
    assert finished == {0, 1}


def test_logprobs(backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop) -> None:
    body = _complete(backend, loop, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"]
    for entry in entries:
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 2
    # Greedy decoding picks the most likely token.
    assert all(e["logprob"] == max(t["logprob"] for t in e["top_logprobs"]) for e in entries)


def test_stop_sequence_ends_the_answer(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    body = _complete(backend, loop, max_tokens=40, temperature=0, stop=["e"])
    choice = body["choices"][0]
    assert "e" not in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"  # noise holds an "e" long before 40 tokens
    assert choice["stop_reason"] == "e"


def test_same_seed_same_answer(backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop) -> None:
    def text(seed: int) -> str:
        body = _complete(backend, loop, max_tokens=12, temperature=1.0, seed=seed)
        return body["choices"][0]["message"]["content"]

    assert text(7) == text(7)
    assert len({text(seed) for seed in (1, 2, 3)}) > 1


def test_json_object_response_format(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    body = _complete(
        backend, loop, max_tokens=200, temperature=0, response_format={"type": "json_object"}
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_json_schema_response_format(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, seed: int | None
) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["s", "m", "l"]}},
        "required": ["ok", "size"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "strict": True, "schema": schema},
    }
    body = _complete(
        backend,
        loop,
        max_tokens=100,
        temperature=0 if seed is None else 1,
        seed=seed,
        response_format=response_format,
    )
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert set(answer) == {"ok", "size"}
    assert isinstance(answer["ok"], bool) and answer["size"] in ("s", "m", "l")


def test_stream_matches_complete(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    request = {"max_tokens": 24, "temperature": 0, "seed": 3}
    full = _complete(backend, loop, **request)
    chunks = _stream(backend, loop, **request, stream_options={"include_usage": True})

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == MODEL_NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"

    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert _usage_counts(usage_chunk["usage"]) == _usage_counts(full["usage"])

    body = chunks[:-1]
    finishes = [c["choices"][0]["finish_reason"] for c in body]
    assert finishes[-1] == full["choices"][0]["finish_reason"]
    assert all(f is None for f in finishes[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
    assert text == full["choices"][0]["message"]["content"]


def test_stream_without_usage_ends_with_finish(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    chunks = _stream(backend, loop, max_tokens=4, temperature=0)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(not c.get("usage") for c in chunks)


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


def test_cancelled_complete_is_cancelled(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    # vLLM turns a cancelled request into a "Client disconnected" error response; the caller
    # that cancelled must see its cancellation, not a 400.
    engine = backend._engine
    assert engine is not None

    async def cancel_while_generating() -> int:
        task = asyncio.create_task(backend.complete({"messages": MESSAGES, "max_tokens": 400}))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        return engine.get_num_unfinished_requests()

    assert loop.run_until_complete(cancel_while_generating()) == 0


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


def test_tools_with_tool_choice_none_reach_the_prompt(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    request = {"messages": TOOL_HISTORY, "max_tokens": 4, "temperature": 0}
    without = loop.run_until_complete(backend.complete(request))
    body = loop.run_until_complete(
        backend.complete({**request, "tools": [WEATHER_TOOL], "tool_choice": "none"})
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert not choice["message"].get("tool_calls")
    # The template rendered the tools into the prompt: they were not dropped on the way.
    assert body["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]


@pytest.mark.parametrize("tool_choice", ["auto", "required", NAMED_TOOL])
def test_tool_choice_without_a_tool_parser_is_a_400(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, tool_choice: Any
) -> None:
    request = {"messages": TOOL_HISTORY, "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    for call in (backend.complete(request), _collect(backend.stream(request))):
        with pytest.raises(BackendError) as info:
            loop.run_until_complete(call)
        assert info.value.status == 400 and not info.value.retryable
        assert "tool choice" in str(info.value) or "tool_choice" in str(info.value)
        assert "--tool-call-parser" in str(info.value)


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


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"messages": MESSAGES, "n": 0}, "n must be"),
        ({"messages": MESSAGES, "n": "two"}, "n:"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "temperature": -1}, "temperature"),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": MESSAGES, "response_format": {"type": "xml"}}, "response_format"),
        ({"messages": MESSAGES, "tools": []}, "tools"),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [IMAGE]}]}, "multimodal"),
        ({"messages": []}, "message"),
        ({"messages": "hello"}, "messages"),
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
    assert info.value.status == 400 and not info.value.retryable
    assert fragment in str(info.value)

    with pytest.raises(BackendError) as info:
        loop.run_until_complete(_collect(backend.stream(request_body)))
    assert info.value.status == 400


def test_close_ends_requests_in_flight(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
) -> None:
    # Closes the shared engine (the fixture's close() after it is a no-op): the tests after
    # this one use the tool backend only.
    engine = weakref.ref(backend._engine)

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

    # Nothing holds on to the closed engine (and its tokenizer, model config, buffers): the
    # failed request's traceback is the last thing that did.
    del outcome
    gc.collect()
    assert engine() is None


class TestWithAToolParser:
    """`serving_args` configuring vLLM's tool calling, answered through this backend."""

    def test_named_tool_choice_calls_that_tool(
        self, tool_backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
    ) -> None:
        body = loop.run_until_complete(
            tool_backend.complete(
                {
                    "messages": TOOL_HISTORY,
                    "tools": [WEATHER_TOOL],
                    "tool_choice": NAMED_TOOL,
                    "max_tokens": 60,
                    "temperature": 0,
                }
            )
        )
        choice = body["choices"][0]
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"])["unit"] in ("c", "f")
        assert choice["finish_reason"] == "stop"  # OpenAI's for a named tool

    @pytest.mark.parametrize("seed", [None, 3])
    def test_required_tool_choice_calls_a_tool(
        self, tool_backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, seed: int | None
    ) -> None:
        body = loop.run_until_complete(
            tool_backend.complete(
                {
                    "messages": TOOL_HISTORY,
                    "tools": [WEATHER_TOOL],
                    "tool_choice": "required",
                    "parallel_tool_calls": False,
                    "max_tokens": 60,
                    "temperature": 0 if seed is None else 1,
                    "seed": seed,
                }
            )
        )
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) in ({"unit": "c"}, {"unit": "f"})

    def test_auto_tool_choice_is_answered(
        self, tool_backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
    ) -> None:
        body = loop.run_until_complete(
            tool_backend.complete(
                {
                    "messages": TOOL_HISTORY,
                    "tools": [WEATHER_TOOL],
                    "tool_choice": "auto",
                    "max_tokens": 8,
                }
            )
        )
        assert body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")

    def test_streamed_tool_call(
        self, tool_backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop
    ) -> None:
        request = {
            "messages": TOOL_HISTORY,
            "tools": [WEATHER_TOOL],
            "tool_choice": NAMED_TOOL,
            "max_tokens": 60,
            "temperature": 0,
            "stream": True,
        }
        chunks = loop.run_until_complete(_collect(tool_backend.stream(request)))
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        calls = [call for delta in deltas for call in delta.get("tool_calls") or ()]
        assert {c["function"]["name"] for c in calls if c["function"].get("name")} == {
            "get_weather"
        }
        arguments = "".join(c["function"].get("arguments") or "" for c in calls)
        assert json.loads(arguments)["unit"] in ("c", "f")
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
