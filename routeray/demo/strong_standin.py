"""A local OpenAI-compatible stand-in for the strong model's API, with fault injection.

Tests and `--demo` runs point the strong backend here instead of a paid API. Answers are
deterministic ("strong answer: " + the last user message's first 40 characters, reversed), so
tests can assert on them, and failures can be scripted:

    with StrongStandin() as standin:
        standin.inject("429", times=2, retry_after=1)
        ...  # the next two chat requests get 429 + Retry-After: 1, the third succeeds
        assert standin.requests == 3

Fault kinds (queued with `inject`, consumed one per chat request, oldest first):

* a 3-digit HTTP status, e.g. "400", "401", "429", "500", "502", "503", "504": that status with
  an OpenAI error body; `retry_after` adds a Retry-After header (seconds).
* "timeout": sleep `delay` seconds (default 30, meant to outlast the client's timeout) before
  answering; the sleep ends early when the client hangs up.
* "slow": sleep `delay` seconds (default 0.3), then answer normally.
* "drop_stream": send `after_chunks` chunks (default 1) and close the connection without
  `data: [DONE]`; on a non-streaming request, close the connection mid-body.
* "stall_stream": send `after_chunks` chunks (default 1), go quiet for `delay` seconds (default
  30), then finish normally; a client read timeout shorter than `delay` sees a stalled stream.

A client talking to the stand-in directly can also ask for a fault per request with the header
`x-standin-fault: <kind>` (plus optional `x-standin-retry-after`, `x-standin-delay`,
`x-standin-after-chunks`); a header fault does not consume the queue.

Replies can be scripted too, e.g. to play a judge with known (or malformed) verdicts:

    standin.reply("Both are fine. [[C]]")           # the next chat request gets this text
    standin.reply("[[A]]", when=r"case 07:.*strong answer.*weak answer")  # every match
    standin.reply("no verdict", when=r"case 09:", times=2)                # the next 2 matches

`when` is a regular expression (dot matches newlines) searched in the request's messages,
joined by newlines in their order; the oldest scripted reply that applies wins, and a request
no script applies to gets the deterministic answer. `answer_prefix` changes that answer's
prefix, so a second stand-in can play a weak model whose answers differ from the strong one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "strong-standin"
STATUS_FAULTS_HINT = "a 3-digit HTTP status such as 429 or 500"
FAULT_KINDS = ("timeout", "slow", "drop_stream", "stall_stream")
_DEFAULT_DELAY = {"timeout": 30.0, "slow": 0.3, "stall_stream": 30.0}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour for one chat request."""

    kind: str
    retry_after: float | None = None
    delay: float | None = None
    after_chunks: int = 1

    @property
    def status(self) -> int | None:
        return int(self.kind) if self.kind.isdigit() else None

    @property
    def sleep_s(self) -> float:
        return self.delay if self.delay is not None else _DEFAULT_DELAY.get(self.kind, 0.0)


def _check_kind(kind: str) -> str:
    kind = kind.strip().lower()
    if kind in FAULT_KINDS or (len(kind) == 3 and kind.isdigit() and 400 <= int(kind) <= 599):
        return kind
    raise ValueError(f"unknown fault {kind!r}: use {STATUS_FAULTS_HINT} or one of {FAULT_KINDS}")


class Faults:
    """A thread-safe queue of faults: tests inject from their thread, the server pops from its."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()

    def inject(
        self,
        kind: str,
        times: int = 1,
        *,
        retry_after: float | None = None,
        delay: float | None = None,
        after_chunks: int = 1,
    ) -> None:
        fault = Fault(_check_kind(str(kind)), retry_after, delay, after_chunks)
        with self._lock:
            self._queue.extend([fault] * times)

    def pop(self) -> Fault | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)


@dataclass
class _Scripted:
    text: str
    pattern: re.Pattern[str] | None
    left: int | None  # None: every matching request


class Script:
    """Scripted reply texts (see the module doc), thread-safe like `Faults`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: list[_Scripted] = []

    def add(self, text: str, when: str | None = None, times: int | None = None) -> None:
        if times is None and when is None:
            times = 1  # an unconditional reply without a count would answer everything
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        pattern = re.compile(when, re.DOTALL) if when is not None else None
        with self._lock:
            self._replies.append(_Scripted(text, pattern, times))

    def take(self, messages: list[dict[str, Any]]) -> str | None:
        """The scripted text for a request with these messages, if any applies."""
        conversation = "\n".join(_text(m.get("content")) for m in messages)
        with self._lock:
            for scripted in self._replies:
                if scripted.pattern is not None and not scripted.pattern.search(conversation):
                    continue
                if scripted.left is not None:
                    scripted.left -= 1
                    if scripted.left == 0:
                        self._replies.remove(scripted)
                return scripted.text
        return None

    def clear(self) -> None:
        with self._lock:
            self._replies.clear()


class Stats:
    """What the stand-in saw, for tests to assert on (retries, concurrency, bodies sent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []

    def begin(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.bodies.append(body)

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.max_in_flight = self.in_flight
            self.bodies = []


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


ANSWER_PREFIX = "strong answer: "


def answer_for(messages: list[dict[str, Any]], prefix: str = ANSWER_PREFIX) -> str:
    """The deterministic reply: tests compute the same string to check passthrough."""
    last_user = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return prefix + last_user[:40][::-1]


def _words(text: str) -> list[str]:
    """Stream pieces that concatenate back to `text` exactly."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


async def _sleep_unless_gone(request: Request, seconds: float) -> None:
    # Polling is_disconnected() lets a "timeout" fault end once the client gives up, so the
    # server has no request left behind when tests stop it.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.05, left))
        if await request.is_disconnected():
            return


class _CutOff(Response):
    """Sends headers and part of the body, then returns without finishing: uvicorn closes the
    socket, which the client sees as a dropped connection (a Response subclass so FastAPI
    passes it through untouched)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], parts: list[bytes]):
        super().__init__(status_code=status)
        self.raw_headers = headers
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        for part in self.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})


def create_app(
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    faults: Faults | None = None,
    stats: Stats | None = None,
    script: Script | None = None,
    answer_prefix: str = ANSWER_PREFIX,
) -> FastAPI:
    """The stand-in's ASGI app. `model_name` set: every answer reports it (as APIs that answer
    with a dated snapshot name do); None: the requested model is echoed."""
    app = FastAPI(title="routeray strong-model stand-in")
    app.state.faults = faults = faults if faults is not None else Faults()
    app.state.stats = stats = stats if stats is not None else Stats()
    app.state.script = script = script if script is not None else Script()

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key is None:
            return None
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if given == api_key:
            return None
        # Like some real APIs, echo the rejected key: clients must not pass it on.
        return _error(
            401,
            f"Incorrect API key provided: {given or '(none)'}",
            "invalid_request_error",
            "invalid_api_key",
        )

    def header_fault(request: Request) -> Fault | None:
        kind = request.headers.get("x-standin-fault")
        if not kind:
            return None

        def num(name: str) -> float | None:
            value = request.headers.get(name)
            return float(value) if value else None

        after = num("x-standin-after-chunks")
        return Fault(
            _check_kind(kind),
            retry_after=num("x-standin-retry-after"),
            delay=num("x-standin-delay"),
            after_chunks=int(after) if after is not None else 1,
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if (denied := unauthorized(request)) is not None:
            return denied
        name = model_name or DEFAULT_MODEL
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "routeray"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        stats.begin(body)
        ended_here = True
        try:
            if (denied := unauthorized(request)) is not None:
                return denied
            try:
                fault = header_fault(request) or faults.pop()
            except ValueError as exc:
                return _error(400, str(exc), "invalid_request_error")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error(400, "'messages' must be a non-empty list", "invalid_request_error")
            if fault is not None and fault.status is not None:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                response = _error(
                    fault.status,
                    f"stand-in injected HTTP {fault.status}",
                    "rate_limit_error" if fault.status == 429 else "server_error",
                )
                response.headers.update(headers)
                return response
            if fault is not None and fault.kind in ("timeout", "slow"):
                await _sleep_unless_gone(request, fault.sleep_s)
            model = model_name or str(body.get("model") or DEFAULT_MODEL)
            content = script.take(messages)
            if content is None:
                content = answer_for(messages, answer_prefix)
            if body.get("stream"):
                ended_here = False  # the stream's generator ends the request instead
                return _stream_response(request, body, content, model, fault, stats)
            payload = _completion(body, content, model)
            if fault is not None and fault.kind in ("drop_stream", "stall_stream"):
                raw = json.dumps(payload).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                ]
                return _CutOff(200, headers, [raw[: len(raw) // 2]])
            return payload
        finally:
            if ended_here:
                stats.end()

    return app


def _usage(body: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = sum(len(_text(m.get("content")).split()) for m in body.get("messages", []))
    done = len(completion.split())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _reply(body: dict[str, Any], content: str) -> tuple[str, str]:
    """(content, finish_reason), honouring max_tokens counted in whitespace words."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    words = content.split(" ")
    if isinstance(limit, int) and 0 < limit < len(words):
        return " ".join(words[:limit]), "length"
    return content, "stop"


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call an API answers with when the request demands one: tool_choice "required" (the
    first tool) or a named function; "auto", "none" or no tools get text."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name", name)
    return {
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": "{}"},
    }


def _logprobs(content: str, top: int) -> dict[str, Any]:
    """Every word certain (logprob 0), as a stand-in can honestly claim of its fixed answer."""

    def entry(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": 0.0, "bytes": list(token.encode())}

    return {
        "content": [{**entry(w), "top_logprobs": [entry(w)] * top} for w in _words(content) if w]
    }


def _completion(body: dict[str, Any], text: str, model: str) -> dict[str, Any]:
    """A chat.completion honouring what an OpenAI API would: max_tokens, n, response_format
    (the answer as a JSON object), logprobs and a demanded tool call."""
    content, finish = _reply(body, text)
    response_format = body.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        content, finish = json.dumps({"answer": content}), "stop"
    call = _tool_call(body)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        # OpenAI ends a call it was told to make by name with "stop".
        finish = "tool_calls" if body.get("tool_choice") == "required" else "stop"
    logprobs = None
    if body.get("logprobs") and call is None:
        logprobs = _logprobs(content, int(body.get("top_logprobs") or 0))
    n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    usage = _usage(body, content or "")
    usage["completion_tokens"] *= n
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
            for i in range(n)
        ],
        "usage": usage,
    }


def _chunks(body: dict[str, Any], text: str, model: str) -> list[dict[str, Any]]:
    content, finish = _reply(body, text)
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in _words(content) if piece]
    out.append(chunk({}, finish))
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        out.append({**base, "choices": [], "usage": _usage(body, content)})
    return out


def _sse(chunk: dict[str, Any] | str) -> bytes:
    data = chunk if isinstance(chunk, str) else json.dumps(chunk)
    return f"data: {data}\n\n".encode()


def _stream_response(
    request: Request,
    body: dict[str, Any],
    text: str,
    model: str,
    fault: Fault | None,
    stats: Stats,
) -> Any:
    chunks = _chunks(body, text, model)
    if fault is not None and fault.kind == "drop_stream":
        stats.end()
        parts = [_sse(c) for c in chunks[: fault.after_chunks]]
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        return _CutOff(200, headers, parts)

    async def events() -> AsyncIterator[bytes]:
        try:
            for i, c in enumerate(chunks):
                if fault is not None and fault.kind == "stall_stream" and i == fault.after_chunks:
                    await _sleep_unless_gone(request, fault.sleep_s)
                yield _sse(c)
            yield _sse("[DONE]")
        finally:
            stats.end()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def _free_socket(host: str, port: int) -> socket.socket:
    # Binding here (port 0 = any free port) and handing uvicorn the socket avoids the race of
    # probing for a free port and binding it later.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class StrongStandin:
    """The stand-in served by uvicorn on a background thread, for tests and demos."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        model_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 10.0,
        answer_prefix: str = ANSWER_PREFIX,
    ) -> None:
        self.host = host
        self.faults = Faults()
        self.stats = Stats()
        self.script = Script()
        self.app = create_app(
            api_key=api_key,
            model_name=model_name,
            faults=self.faults,
            stats=self.stats,
            script=self.script,
            answer_prefix=answer_prefix,
        )
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> StrongStandin:
        if self._thread is not None:
            return self
        sock = _free_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # A request stuck in a long fault must not hold up stop().
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"strong-standin-{self._port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._thread is not None and not self._thread.is_alive():
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"strong stand-in did not come up on {self.url}")

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)

    def __enter__(self) -> StrongStandin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("stand-in not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ends in /v1), as OpenAIBackendConfig.base_url wants."""
        return f"{self.url}/v1"

    @property
    def requests(self) -> int:
        """Chat-completion requests received since start or the last reset()."""
        return self.stats.requests

    def inject(
        self,
        kind: str,
        times: int = 1,
        *,
        retry_after: float | None = None,
        delay: float | None = None,
        after_chunks: int = 1,
    ) -> None:
        """Queue `times` faults of `kind` for the next chat requests (see the module doc)."""
        self.faults.inject(
            kind, times, retry_after=retry_after, delay=delay, after_chunks=after_chunks
        )

    def reply(self, text: str, *, when: str | None = None, times: int | None = None) -> None:
        """Script the text of answers: for the next request (or `times` requests), or with
        `when` for every request whose messages match that regex (or the next `times` ones)."""
        self.script.add(text, when, times)

    def reset(self) -> None:
        """Forget queued faults, scripted replies and counters, e.g. between tests sharing one
        stand-in."""
        self.faults.clear()
        self.script.clear()
        self.stats.reset()
