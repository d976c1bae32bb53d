"""A chat backend running vLLM's async engine inside this process.

The engine core lives in a child process that vLLM spawns; this object owns it. vLLM is
imported lazily so the serving app can import every backend module on hosts without vLLM.
Its first import must happen in `_ensure_engine`'s worker thread (see there): the methods
below import from vllm only after the engine exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from backends.config import VLLMBackendConfig
from backends.errors import BackendError

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.inputs import TokensInput
    from vllm.outputs import RequestOutput
    from vllm.tokenizers import TokenizerLike
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
CPU_KV_CACHE_BYTES = 1 << 30
_SHUTDOWN_TIMEOUT_S = 15.0
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# vLLM's "repetition" ends a sequence on purpose, as a stop would; OpenAI has no such value.
_FINISH_REASONS = {"stop": "stop", "length": "length", "repetition": "stop"}


class VLLMEngineBackend:
    """ChatBackend over `vllm.v1.engine.async_llm.AsyncLLM`, started on first use or by
    `start()`. Prompts are rendered with the model tokenizer's chat template."""

    def __init__(self, config: VLLMBackendConfig) -> None:
        self.config = config
        self.model = config.model
        self._engine: AsyncLLM | None = None
        self._tokenizer: TokenizerLike | None = None
        self._max_model_len = 0
        self._start_lock = asyncio.Lock()
        self._closed = False
        # Requests between generate() and their end, so close() can end them cleanly.
        self._in_flight: set[str] = set()

    @property
    def started(self) -> bool:
        return self._engine is not None

    @property
    def max_model_len(self) -> int:
        """The context length the engine runs with (0 before start)."""
        return self._max_model_len

    def build_engine_args(self) -> Any:
        """The AsyncEngineArgs this backend starts with; config.engine_args override."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        kwargs: dict[str, Any] = {"model": self.config.model_path}
        if current_platform.is_cpu():
            # CUDA graphs do not exist on CPU and torch.compile roughly doubles start time.
            kwargs["enforce_eager"] = True
            # Left alone, vLLM reserves gpu_memory_utilization (0.92) of the host's RAM for the
            # KV cache, beside Ray and the router, or refuses to start when that much is not
            # free. VLLM_CPU_KVCACHE_SPACE (GiB), if set, still overrides this.
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kwargs.update(self.config.engine_args)
        return AsyncEngineArgs(**kwargs)

    def _engine_class_and_args(self) -> tuple[type[AsyncLLM], Any]:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM, self.build_engine_args()

    async def start(self) -> None:
        """Start the engine (idempotent). Takes tens of seconds; concurrent callers share one
        start."""
        await self._ensure_engine()

    async def _ensure_engine(self) -> AsyncLLM:
        if self._engine is not None:
            return self._engine
        async with self._start_lock:
            if self._closed:
                raise BackendError(f"backend {self.model!r} is closed", status=503)
            if self._engine is not None:
                return self._engine
            try:
                # Importing vLLM takes seconds, and it keeps tracebacks (of optional imports
                # it tried) whose frames chain back to the importer: in a worker thread it
                # neither blocks the loop nor pins a frame that later holds the engine, which
                # would keep a closed engine alive until interpreter exit.
                engine_class, args = await asyncio.to_thread(self._engine_class_and_args)
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
                engine = await asyncio.to_thread(engine_class.from_engine_args, args)
            except Exception as exc:
                raise BackendError(
                    f"vLLM engine for {self.model!r} failed to start: {exc}", status=503
                ) from exc
            self._tokenizer = engine.get_tokenizer()
            self._max_model_len = int(engine.model_config.max_model_len)
            self._engine = engine
            logger.info(
                "vLLM engine for %s started in %.1f s (max_model_len %d)",
                self.model,
                time.perf_counter() - began,
                self._max_model_len,
            )
            return engine

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
            engine, self._engine = self._engine, None
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
        engine, prompt, params = await self._prepare(request, delta=False)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        final: RequestOutput | None = None
        self._in_flight.add(request_id)
        try:
            async for output in engine.generate(prompt, params, request_id):
                final = output
        except BackendError:
            raise
        except Exception as exc:
            raise _backend_error(exc) from exc
        finally:
            self._in_flight.discard(request_id)
        if final is None or not final.outputs:
            raise BackendError("vLLM returned no output", status=500, retryable=True)
        choice = final.outputs[0]
        finish_reason = _finish_reason(choice.finish_reason)
        prompt_tokens = len(prompt["prompt_token_ids"])
        completion_tokens = len(choice.token_ids)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": choice.text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        engine, prompt, params = await self._prepare(request, delta=True)
        stream_options = request.get("stream_options") or {}
        include_usage = bool(stream_options.get("include_usage"))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        prompt_tokens = len(prompt["prompt_token_ids"])
        completion_tokens = 0
        finished = False

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        outputs = engine.generate(prompt, params, request_id)
        self._in_flight.add(request_id)
        try:
            # Wait for the first token before sending anything, so that a rejected or failed
            # request raises BackendError instead of starting a stream that dies at once.
            try:
                first = await anext(outputs)
            except StopAsyncIteration:
                raise BackendError("vLLM returned no output", status=500, retryable=True) from None
            except BackendError:
                raise
            except Exception as exc:
                raise _backend_error(exc) from exc
            yield chunk({"role": "assistant", "content": ""})

            output: RequestOutput | None = first
            while output is not None:
                choice = output.outputs[0]
                completion_tokens += len(choice.token_ids)
                if choice.text:
                    yield chunk({"content": choice.text})
                if output.finished:
                    finished = True
                    yield chunk({}, _finish_reason(choice.finish_reason))
                    break
                try:
                    output = await anext(outputs)
                except StopAsyncIteration:
                    output = None
                except Exception as exc:
                    raise _backend_error(exc) from exc
            if not finished:
                raise BackendError("vLLM stream ended without a finish", status=500)
            if include_usage:
                yield {
                    "id": request_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
        finally:
            # The consumer may stop early (client gone: aclose() or cancellation at a yield);
            # the engine would otherwise keep generating for nobody.
            self._in_flight.discard(request_id)
            # Closing vLLM's generator aborts its request; the abort by id is a backstop.
            # Neither may mask the exception that brought us here.
            with contextlib.suppress(Exception):
                await outputs.aclose()
            if not finished:
                with contextlib.suppress(Exception):
                    await engine.abort(request_id)

    # --- request translation --------------------------------------------------------------

    async def _prepare(
        self, request: dict[str, Any], *, delta: bool
    ) -> tuple[AsyncLLM, TokensInput, SamplingParams]:
        """Validate the request, start the engine if needed, render and tokenize the chat,
        check it fits, and build SamplingParams (streaming: `delta` outputs)."""
        n = request.get("n")
        if n is not None and n != 1:
            raise BackendError(
                f"n={n} is not supported by {self.model!r}: only one choice (n=1) per request",
                status=400,
            )
        messages = _chat_messages(request.get("messages"))
        # Refuse malformed requests before paying for an engine start.
        engine = await self._ensure_engine()
        from vllm.inputs import tokens_input

        tokenizer = self._tokenizer
        assert tokenizer is not None
        try:
            # Tokenizing a long prompt takes milliseconds; vLLM's tokenizer is thread-safe.
            text, token_ids = await asyncio.to_thread(_render, tokenizer, messages)
        except Exception as exc:
            raise BackendError(
                f"cannot apply the chat template of {self.model!r}: {exc}", status=400
            ) from exc

        prompt_len = len(token_ids)
        room = self._max_model_len - prompt_len
        if room < 1:
            raise BackendError(
                f"prompt is {prompt_len} tokens; {self.model!r} has a context of "
                f"{self._max_model_len} tokens (prompt plus at least one output token)",
                status=400,
            )
        params = self._sampling_params(request, room, delta=delta)
        # Passing token ids as a rendered input skips vLLM's own (deprecated) raw-prompt path
        # and makes usage.prompt_tokens exactly what the engine ran.
        return engine, tokens_input(token_ids, prompt=text), params

    def _sampling_params(
        self, request: dict[str, Any], room: int, *, delta: bool
    ) -> SamplingParams:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        requested = request.get("max_completion_tokens")
        if requested is None:
            requested = request.get("max_tokens")
        if requested is not None and (
            isinstance(requested, bool) or not isinstance(requested, int) or requested < 1
        ):
            raise BackendError(
                f"max_tokens must be a positive integer, got {requested!r}", status=400
            )
        # OpenAI clients often ask for more than a small model's context holds; answering
        # with what fits (finish_reason "length") is more useful than refusing.
        max_tokens = min(requested or DEFAULT_MAX_TOKENS, room)

        # DELTA: vLLM sends only the new text per step, so streaming needs no diffing;
        # FINAL_ONLY: complete() gets one output instead of one per token.
        output_kind = RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "output_kind": output_kind}
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
            if request.get(name) is not None:
                kwargs[name] = request[name]
        stop = request.get("stop")
        if stop:
            kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)
        try:
            return SamplingParams(**kwargs)
        except (TypeError, ValueError, VLLMClientError) as exc:
            raise BackendError(f"invalid sampling parameters: {exc}", status=400) from exc


def _render(tokenizer: TokenizerLike, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"chat template rendered {type(text).__name__}, not text")
    # The template writes BOS and other special tokens itself; adding them again would
    # double BOS.
    return text, list(tokenizer.encode(text, add_special_tokens=False))


def _chat_messages(raw: Any) -> list[dict[str, str]]:
    """OpenAI messages -> the {role, content: str} form chat templates expect."""
    if not isinstance(raw, list) or not raw:
        raise BackendError("messages must be a non-empty list", status=400)
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise BackendError(f"messages[{i}] must be an object", status=400)
        name = message.get("role")
        role = _ROLES.get(name) if isinstance(name, str) else None
        if role is None:
            raise BackendError(
                f"messages[{i}].role {name!r} is not supported; use one of {sorted(_ROLES)}",
                status=400,
            )
        messages.append({"role": role, "content": _text_content(message.get("content"), i)})
    return messages


def _text_content(content: Any, index: int) -> str:
    if content is None:
        # An assistant turn that only called tools has no text.
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BackendError(
                    f"messages[{index}].content: only text parts are supported, got {kind!r}",
                    status=400,
                )
            texts.append(str(part.get("text", "")))
        # vLLM's OpenAI server joins text parts with newlines too.
        return "\n".join(texts)
    raise BackendError(
        f"messages[{index}].content must be a string or a list of text parts", status=400
    )


def _finish_reason(reason: str | None) -> str:
    if reason in _FINISH_REASONS:
        return _FINISH_REASONS[reason]
    if reason == "abort":
        raise BackendError("vLLM aborted the request", status=503, retryable=True)
    raise BackendError(f"vLLM ended the request with {reason!r}", status=500, retryable=True)


def _backend_error(exc: Exception) -> BackendError:
    """vLLM's exceptions -> BackendError with the status vLLM's own server would send."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, VLLMClientError):
        return BackendError(str(exc), status=400)
    if isinstance(exc, GracefulHTTPError):
        status = int(exc.http_status)
        return BackendError(exc.message, status=status, retryable=status in (429, 503))
    if isinstance(exc, EngineDeadError):
        # This replica cannot answer again; another replica can.
        return BackendError(f"vLLM engine is dead: {exc}", status=503, retryable=True)
    cause = exc.__cause__ or exc
    return BackendError(
        f"vLLM generation failed: {type(cause).__name__}: {cause}", status=500, retryable=True
    )
