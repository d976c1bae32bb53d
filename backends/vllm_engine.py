"""A chat backend running vLLM's async engine inside this process, behind vLLM's own OpenAI
serving layer.

Requests are answered by `OpenAIServingChat`, configured by `vllm serve`'s own argument
parser and `init_app_state`: tools and tool choice, structured outputs, logprobs, n and every
other field behave as on a `vllm serve` endpoint, and a field the model cannot honour is
refused there, not dropped here. Translating requests by hand instead fell behind vLLM one
silently ignored field at a time. What this module adds is what a replica needs around that
layer: the engine's lifecycle, typed `BackendError`s instead of HTTP responses, the configured
model name, and OpenAI's leniency on max_tokens.

The engine core lives in a child process that vLLM spawns; this object owns it. vLLM is
imported lazily so the serving app can import every backend module on hosts without vLLM.
Its first import must happen in `_ensure_engine`'s worker thread (see there): the methods
below import from vllm only after the engine exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from backends.config import VLLMBackendConfig
from backends.errors import BackendError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# What vLLM's `vllm serve` parser returns (an argparse namespace); the command line itself is
# routeray's one parser, typer.
ServeArgs = Any

# vLLM's default is everything the context has left: minutes of CPU for one careless request.
DEFAULT_MAX_TOKENS = 256
CPU_KV_CACHE_BYTES = 1 << 30
_SHUTDOWN_TIMEOUT_S = 15.0
# OpenAI's roles. vLLM hands any other role to the chat template as it is; OpenAI refuses it,
# and so does this backend, so that a typo is an error rather than text the model reads.
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class VLLMEngineBackend:
    """ChatBackend over `vllm.v1.engine.async_llm.AsyncLLM` and vLLM's `OpenAIServingChat`,
    started on first use or by `start()`."""

    def __init__(self, config: VLLMBackendConfig) -> None:
        self.config = config
        self.model = config.model
        self._engine: AsyncLLM | None = None
        self._chat: OpenAIServingChat | None = None
        self._max_model_len = 0
        self._start_lock = asyncio.Lock()
        self._closed = False
        # Engine request ids between submission and their end, so close() can end them.
        self._in_flight: set[str] = set()

    @property
    def started(self) -> bool:
        return self._engine is not None

    @property
    def max_model_len(self) -> int:
        """The context length the engine runs with (0 before start)."""
        return self._max_model_len

    def build_serve_args(self) -> ServeArgs:
        """The arguments `vllm serve MODEL_PATH` would run with, parsed by vLLM's own parser:
        CPU defaults, then config.serving_args, then config.engine_args, served as
        config.model. The engine and the serving layer are both built from them."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.cli_args import (
            make_arg_parser,
            validate_parsed_serve_args,
        )
        from vllm.platforms import current_platform
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        class Parser(FlexibleArgumentParser):
            # argparse exits the process on a bad flag; a replica must report it instead.
            def error(self, message: str) -> Any:
                raise ValueError(f"serving_args: {message}")

        argv = [self.config.model_path]
        if current_platform.is_cpu():
            # CUDA graphs do not exist on CPU and torch.compile roughly doubles start time.
            # Left alone, vLLM reserves gpu_memory_utilization (0.92) of the host's RAM for
            # the KV cache, beside Ray and the router, or refuses to start when that much is
            # not free. VLLM_CPU_KVCACHE_SPACE (GiB), if set, still overrides this. Both come
            # first, so that serving_args may override them.
            argv += ["--enforce-eager", "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
        argv += self.config.serving_args
        args = make_arg_parser(Parser(prog="vllm serve")).parse_args(argv)
        args.model = args.model_tag  # what `vllm serve MODEL` does with its positional
        engine_fields = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(self.config.engine_args) - engine_fields)
        if unknown:
            raise ValueError(f"engine_args: not vLLM engine arguments: {unknown}")
        for name, value in self.config.engine_args.items():
            setattr(args, name, value)
        # Responses name the model as clients know it, whatever the flags said.
        args.served_model_name = [self.model]
        validate_parsed_serve_args(args)
        return args

    def build_engine_args(self) -> AsyncEngineArgs:
        """The AsyncEngineArgs this backend starts with (see `build_serve_args`)."""
        from vllm.engine.arg_utils import AsyncEngineArgs

        return AsyncEngineArgs.from_cli_args(self.build_serve_args())

    def _configure(self) -> tuple[type[AsyncLLM], AsyncEngineArgs, ServeArgs]:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self.build_serve_args()
        # As `vllm serve` does before it builds anything.
        if args.tool_parser_plugin and len(args.tool_parser_plugin) > 3:
            ToolParserManager.import_tool_parser(args.tool_parser_plugin)
        if args.reasoning_parser_plugin and len(args.reasoning_parser_plugin) > 3:
            ReasoningParserManager.import_reasoning_parser(args.reasoning_parser_plugin)
        if args.tool_call_parser:
            # `vllm serve` finds out about a misspelt parser only after the engine started.
            try:
                ToolParserManager.get_tool_parser(args.tool_call_parser)
            except KeyError as exc:
                raise ValueError(f"serving_args: {exc.args[0]}") from None
        # The engine shares the namespace's config objects, which it completes in place (the
        # reasoning parser in structured_outputs_config, for one): the serving layer then
        # reads the configuration the engine actually runs.
        return AsyncLLM, AsyncEngineArgs.from_cli_args(args), args

    async def start(self) -> None:
        """Start the engine and its serving layer (idempotent). Takes tens of seconds;
        concurrent callers share one start."""
        await self._ensure_engine()

    async def _ensure_engine(self) -> tuple[AsyncLLM, OpenAIServingChat]:
        if self._engine is not None and self._chat is not None:
            return self._engine, self._chat
        async with self._start_lock:
            if self._closed:
                raise BackendError(f"backend {self.model!r} is closed", status=503)
            if self._engine is not None and self._chat is not None:
                return self._engine, self._chat
            try:
                # Importing vLLM takes seconds, and it keeps tracebacks (of optional imports
                # it tried) whose frames chain back to the importer: in a worker thread it
                # neither blocks the loop nor pins a frame that later holds the engine, which
                # would keep a closed engine alive until interpreter exit.
                engine_class, engine_args, serve_args = await asyncio.to_thread(self._configure)
            except (ImportError, TypeError, ValueError) as exc:
                raise BackendError(
                    f"cannot configure vLLM for {self.model!r}: {exc}", status=500
                ) from exc
            began = time.perf_counter()
            try:
                # Construction blocks for the whole engine start (spawning the engine core,
                # loading weights, profiling memory); a worker thread keeps this event loop
                # serving meanwhile. AsyncLLM binds its asyncio tasks lazily, on the first
                # request, which runs on this loop.
                engine = await asyncio.to_thread(engine_class.from_engine_args, engine_args)
            except Exception as exc:
                raise BackendError(
                    f"vLLM engine for {self.model!r} failed to start: {exc}", status=503
                ) from exc
            try:
                chat = await _serving_chat(engine, serve_args)
            except Exception as exc:
                await asyncio.to_thread(engine.shutdown, _SHUTDOWN_TIMEOUT_S)
                raise BackendError(
                    f"vLLM's OpenAI serving layer for {self.model!r} failed to start: {exc}",
                    status=500,
                ) from exc
            self._max_model_len = int(engine.model_config.max_model_len)
            self._engine, self._chat = engine, chat
            logger.info(
                "vLLM engine for %s started in %.1f s (max_model_len %d)",
                self.model,
                time.perf_counter() - began,
                self._max_model_len,
            )
            return engine, chat

    async def check_health(self) -> None:
        """Raise BackendError(503) if the engine has died (a Serve health check); an engine
        not started yet is healthy."""
        engine = self._engine
        if engine is not None and engine.errored:
            raise BackendError(f"vLLM engine for {self.model!r} is dead", status=503)

    async def close(self) -> None:
        """Shut the engine down: its core process ends and its memory is released."""
        async with self._start_lock:
            self._closed = True
            engine, self._engine, self._chat = self._engine, None, None
        if engine is None:
            return
        if self._in_flight:
            # Their callers get finish_reason "abort" -> a retryable 503, instead of waiting
            # forever on an engine that is gone.
            with contextlib.suppress(Exception):
                await engine.abort(list(self._in_flight))
        # Stop vLLM's output loop first: once the core process is terminated it would
        # otherwise log the "dead" engine as an error on every normal shutdown.
        if engine.output_handler is not None:
            engine.output_handler.cancel()
        # shutdown() joins the engine core process (seconds); keep the loop free. Its default
        # 5 s grace is a little short for the core to exit on its own on a busy 2-core host,
        # and then it is SIGKILLed; it returns as soon as the process has gone.
        await asyncio.to_thread(engine.shutdown, _SHUTDOWN_TIMEOUT_S)

    # --- requests -------------------------------------------------------------------------

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        _, chat, body = await self._prepare(request, stream=False)
        request_id = f"chatcmpl-{body.request_id}"  # the id vLLM gives the engine
        self._in_flight.add(request_id)
        try:
            response = await chat.create_chat_completion(body)
        except Exception as exc:
            raise _backend_error(exc) from exc
        finally:
            self._in_flight.discard(request_id)
        _raise_if_cancelled()
        if isinstance(response, ErrorResponse):
            raise _error(response.error.message, response.error.code, response.error.param)
        if not isinstance(response, ChatCompletionResponse):
            raise BackendError("vLLM answered a request with a stream", status=500)
        if any(choice.finish_reason == "abort" for choice in response.choices):
            raise _aborted()
        return response.model_dump(mode="json")

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        engine, chat, body = await self._prepare(request, stream=True)
        request_id = f"chatcmpl-{body.request_id}"
        events: AsyncGenerator[str, None] | None = None
        finished = False
        self._in_flight.add(request_id)
        try:
            try:
                result = await chat.create_chat_completion(body)
            except Exception as exc:
                raise _backend_error(exc) from exc
            if isinstance(result, ErrorResponse):
                raise _error(result.error.message, result.error.code, result.error.param)
            if not isinstance(result, AsyncGenerator):
                raise BackendError("vLLM answered a stream with one response", status=500)
            events = result
            # vLLM sends its first event (the role) only once the engine has produced a
            # token, and a failure then as an error event: nothing is yielded before the
            # request is known to run, so a rejected one raises instead of opening a stream
            # that dies at once.
            async for event in events:
                for payload in _sse_data(event):
                    if payload == "[DONE]":
                        finished = True
                        return
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        error = chunk["error"]
                        raise _error(
                            error.get("message", ""), error.get("code"), error.get("param")
                        )
                    if any(c.get("finish_reason") == "abort" for c in chunk.get("choices") or ()):
                        raise _aborted()
                    yield chunk
            raise BackendError("vLLM stream ended without [DONE]", status=500, retryable=True)
        finally:
            # The consumer may stop early (client gone: aclose() or cancellation at a yield);
            # the engine would otherwise keep generating for nobody.
            self._in_flight.discard(request_id)
            # Closing vLLM's generator lets go of the engine's, which aborts the request once
            # it is collected; the abort by id ends it now. Neither may mask the exception
            # that brought us here.
            if events is not None:
                with contextlib.suppress(Exception):
                    await events.aclose()
            if not finished:
                with contextlib.suppress(Exception):
                    await engine.abort(request_id)

    async def _prepare(
        self, request: dict[str, Any], *, stream: bool
    ) -> tuple[AsyncLLM, OpenAIServingChat, ChatCompletionRequest]:
        """Start the engine if needed and build vLLM's request model from the client's
        fields, with this backend's model name, its own request id and max_tokens rules."""
        _check_roles(request.get("messages"))  # before paying for an engine start
        engine, chat = await self._ensure_engine()
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        # vLLM's validators edit messages in place; the caller's request stays as it was.
        body = copy.deepcopy(request)
        if not stream:
            # vLLM refuses stream_options without stream; a complete() ignores both.
            body.pop("stream_options", None)
        # A client's request_id would name the engine request: two alike could not be told
        # apart by close(), and the model name is ours to report.
        body.update(model=self.model, stream=stream, request_id=uuid.uuid4().hex)
        limits = [n for n in ("max_completion_tokens", "max_tokens") if body.get(n) is not None]
        if not limits:
            body["max_completion_tokens"] = DEFAULT_MAX_TOKENS
        for name in limits:
            # OpenAI clients often ask for more than a small model's context holds: vLLM
            # refuses more than the whole context but caps anything less to the room the
            # prompt leaves, answering with finish_reason "length". The same for both.
            if type(body[name]) is int and body[name] > self._max_model_len:
                body[name] = self._max_model_len
        try:
            parsed = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            raise _validation_error(exc) from exc
        except Exception as exc:  # vLLM's own validation errors are not ValueErrors
            raise _backend_error(exc) from exc
        return engine, chat, parsed


async def _serving_chat(engine: AsyncLLM, args: ServeArgs) -> OpenAIServingChat:
    """vLLM's chat handler, built by the function `vllm serve` builds its app state with."""
    from starlette.datastructures import State
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    state = State()
    await init_app_state(engine, state, args, await engine.get_supported_tasks())
    chat = getattr(state, "openai_serving_chat", None)
    if chat is None:
        raise ValueError(f"{args.model} does not generate text (no chat completions)")
    return chat


def _check_roles(messages: Any) -> None:
    if not isinstance(messages, list):
        return  # vLLM's validation names what is wrong with it
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in _ROLES:
            raise BackendError(
                f"messages[{i}].role {role!r} is not supported; use one of {list(_ROLES)}",
                status=400,
            )


def _sse_data(event: str) -> Iterator[str]:
    """The `data:` payloads of one server-sent event as vLLM writes them."""
    for line in event.splitlines():
        if line.startswith("data:"):
            yield line[len("data:") :].strip()


def _raise_if_cancelled() -> None:
    """vLLM answers a cancelled request with a "Client disconnected" error and swallows the
    cancellation; the caller that cancelled must still see it."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


def _error(message: str, code: Any, param: str | None = None) -> BackendError:
    """vLLM's ErrorResponse (or its streamed form) -> BackendError with its status."""
    status = int(code) if isinstance(code, int) else 500
    if param and param not in message:
        message = f"{message} (parameter: {param})"
    return BackendError(message, status=status, retryable=status == 429 or status >= 500)


def _aborted() -> BackendError:
    return BackendError("vLLM aborted the request", status=503, retryable=True)


def _validation_error(exc: ValidationError) -> BackendError:
    """A request vLLM's model refuses -> 400 naming the fields, as `vllm serve` words it."""
    from vllm.entrypoints.serve.exception_handling.handlers.validation import (
        clean_loc_for_param,
    )

    errors = exc.errors()
    parts = []
    for error in errors[:3]:
        where = clean_loc_for_param(tuple(error.get("loc") or ()))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    return BackendError("invalid request: " + "; ".join(parts), status=400)


def _backend_error(exc: Exception) -> BackendError:
    """An exception from vLLM's serving layer -> BackendError with the status `vllm serve`
    would answer it with."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, EngineDeadError):
        # This replica cannot answer again; another replica can.
        return BackendError(f"vLLM engine is dead: {exc}", status=503, retryable=True)
    response = create_error_response(exc)
    return _error(response.error.message, response.error.code, response.error.param)
