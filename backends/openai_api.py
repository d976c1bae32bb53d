"""A ChatBackend for an external OpenAI-compatible API (typically the strong model).

Retry policy, in one place:

* Retried: HTTP 429, 500, 502, 503, 504, timeouts (connect, read, write, pool) and dropped
  connections; at most `max_retries` retries, so `max_retries + 1` attempts in all.
* Wait between attempts: exponential from `backoff_initial_s`, capped at `backoff_max_s`, with
  "equal jitter" (half fixed, half random) so replicas that failed together spread out but never
  hammer the API with near-zero waits.
* `Retry-After` (seconds or an HTTP date) is a floor on that wait. A server asking for more than
  `RETRY_AFTER_CAP_FACTOR * backoff_max_s` gets the cap instead: a request should not sit for
  minutes inside the serving path when the router could fall back to the weak model.
* Other 4xx answers are the caller's (or our config's) fault and fail at once.
* Streams are only retried before their first chunk reaches the caller; once text is out, a
  second attempt would repeat it, so a later failure raises BackendError(retryable=False).

The API key is read from the configured secret when the HTTP client is created and goes only
into the Authorization header: messages built from upstream error bodies are scrubbed of it,
because some APIs echo (part of) a rejected key.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime, timezone
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from backends.config import OpenAIBackendConfig
from backends.errors import BackendError

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_CAP_FACTOR = 4.0
_EXCERPT_CHARS = 200
# Shapes of OpenAI-style keys, masked even when they are not our key (a proxy may echo others).
_KEYLIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        current = datetime.now(timezone.utc).timestamp() if now is None else now
        seconds = when.timestamp() - current
    if seconds != seconds:  # NaN: a header like "nan" parses as a float
        return None
    return max(0.0, seconds)


class _StreamEnded(Exception):
    """The SSE body ended without its `[DONE]` terminator."""


class _Retryable(BackendError):
    """A failure the retry loop may try again; carries the attempt's Retry-After."""


class OpenAIAPIBackend:
    """Chat completions from `POST {base_url}/chat/completions` of an OpenAI-compatible API."""

    def __init__(self, config: OpenAIBackendConfig) -> None:
        self.config = config
        self.model = config.model
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._secret: str | None = None

    def __repr__(self) -> str:
        # The default repr is harmless today; this one stays harmless if attributes change.
        return f"OpenAIAPIBackend(model={self.model!r}, base_url={self.config.base_url!r})"

    # -- plumbing ---------------------------------------------------------------------------

    def _ensure(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        # httpx connection pools and asyncio semaphores belong to one event loop; build them in
        # the loop that serves requests (Serve replicas construct backends outside it).
        loop = asyncio.get_running_loop()
        if self._client is None or self._slots is None or self._loop is not loop:
            if self._client is not None:
                logger.warning("event loop changed; dropping the old HTTP client")
            self._secret = self.config.api_key.read()
            headers = {"Accept": "application/json"}
            if self._secret:
                headers["Authorization"] = f"Bearer {self._secret}"
            limit = self.config.max_concurrency
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s),
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            )
            self._slots = asyncio.Semaphore(limit)
            self._loop = loop
        return self._client, self._slots

    def _body(self, request: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        body = dict(request)
        body["model"] = self.config.model
        body["stream"] = stream
        if not stream:
            body.pop("stream_options", None)  # OpenAI rejects stream_options without stream
        return body

    def _safe(self, text: str) -> str:
        """One line of at most _EXCERPT_CHARS, with any key removed."""
        if self._secret:
            text = text.replace(self._secret, "***")
        text = _KEYLIKE.sub("sk-***", text)
        text = " ".join(text.split())
        if len(text) > _EXCERPT_CHARS:
            text = text[: _EXCERPT_CHARS - 3] + "..."
        return text

    def _upstream_message(self, raw: bytes) -> str:
        try:
            payload = json.loads(raw)
        except ValueError:
            return self._safe(raw.decode("utf-8", "replace"))
        if isinstance(payload, dict):
            err = payload.get("error", payload)
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                return self._safe(err["message"])
            if isinstance(err, str):
                return self._safe(err)
        return self._safe(json.dumps(payload))

    def _status_error(self, response: httpx.Response, raw: bytes) -> BackendError:
        status = response.status_code
        excerpt = self._upstream_message(raw) or response.reason_phrase
        message = f"upstream {self.config.model!r} returned HTTP {status}: {excerpt}"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status in RETRYABLE_STATUSES:
            return _Retryable(message, status=status, retryable=True, retry_after=retry_after)
        return BackendError(message, status=status, retryable=False, retry_after=retry_after)

    def _transport_error(self, exc: httpx.HTTPError, *, streaming: bool = False) -> BackendError:
        what = "stream" if streaming else "request"
        if isinstance(exc, httpx.TimeoutException):
            kind = type(exc).__name__  # ConnectTimeout / ReadTimeout / ... tells which phase
            # 504 and 502 are what a gateway answers for these, and what callers map on.
            return _Retryable(
                f"upstream {self.config.model!r} {what} timeout ({kind})",
                status=504,
                retryable=True,
            )
        if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return _Retryable(
                f"upstream {self.config.model!r} connection error: "
                f"{type(exc).__name__}: {self._safe(str(exc))}",
                status=502,
                retryable=True,
            )
        # Bad URL, unsupported scheme, ...: configuration problems no retry will fix.
        return BackendError(
            f"upstream {self.config.model!r} request failed: "
            f"{type(exc).__name__}: {self._safe(str(exc))}",
            retryable=False,
        )

    def _wait(self, state: RetryCallState) -> float:
        exp = self.config.backoff_initial_s * (2 ** (state.attempt_number - 1))
        base = min(self.config.backoff_max_s, exp)
        wait = base / 2 + random.uniform(0, base / 2)
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            cap = RETRY_AFTER_CAP_FACTOR * self.config.backoff_max_s
            wait = max(wait, min(retry_after, cap))
        return wait

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "retrying %s after attempt %d/%d in %.2fs: %s",
            self.config.model,
            state.attempt_number,
            self.config.max_retries + 1,
            wait,
            exc,
        )

    def _gave_up(self, exc: BackendError, attempts: int) -> BackendError:
        # Callers see a plain BackendError; _Retryable is an internal signal for the loop.
        message = str(exc)
        if attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        return BackendError(
            message, status=exc.status, retryable=exc.retryable, retry_after=exc.retry_after
        )

    # -- ChatBackend --------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to start: the HTTP client is built on first use, in the loop that uses it."""

    async def check_health(self) -> None:
        """An HTTP client is always able to try; upstream failures surface per request."""

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        client, slots = self._ensure()
        body = self._body(request, stream=False)
        attempts = 0
        try:
            async for attempt in self._retrying():
                with attempt:
                    attempts += 1
                    async with slots:
                        try:
                            response = await client.post(self._url, json=body)
                        except httpx.HTTPError as exc:
                            raise self._transport_error(exc) from exc
                    if response.status_code >= 400:
                        raise self._status_error(response, response.content)
        except BackendError as exc:
            raise self._gave_up(exc, attempts) from exc
        try:
            data = response.json()
        except ValueError as exc:
            raise BackendError(
                f"upstream {self.config.model!r} returned invalid JSON "
                f"(HTTP {response.status_code}): {self._safe(response.text)}",
                status=response.status_code,
                retryable=False,
            ) from exc
        if not isinstance(data, dict):
            raise BackendError(
                f"upstream {self.config.model!r} returned a non-object JSON body",
                status=response.status_code,
            )
        data["model"] = self.config.model
        return data

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        client, slots = self._ensure()
        body = self._body(request, stream=True)
        response: httpx.Response | None = None
        events: AsyncGenerator[dict[str, Any], None] | None = None
        first: dict[str, Any] | None = None
        finished = False
        attempts = 0
        try:
            try:
                async for attempt in self._retrying():
                    with attempt:
                        attempts += 1
                        response, events, first, finished = await self._open_stream(
                            client, slots, body
                        )
            except BackendError as exc:
                raise self._gave_up(exc, attempts) from exc
            # From here on the slot acquired by _open_stream is ours until the stream ends.
            assert response is not None and events is not None
            if finished:
                return
            assert first is not None
            yield first
            try:
                async for chunk in events:
                    yield chunk
            except httpx.HTTPError as exc:
                reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "disconnect"
                raise BackendError(
                    f"upstream {self.config.model!r} stream interrupted ({reason}: "
                    f"{type(exc).__name__}) after it started",
                    retryable=False,
                ) from exc
            except _StreamEnded as exc:
                raise BackendError(
                    f"upstream {self.config.model!r} stream interrupted: {exc}",
                    retryable=False,
                ) from exc
        finally:
            if events is not None:
                await events.aclose()
            if response is not None:
                await response.aclose()
                slots.release()

    async def _open_stream(
        self, client: httpx.AsyncClient, slots: asyncio.Semaphore, body: dict[str, Any]
    ) -> tuple[httpx.Response, AsyncGenerator[dict[str, Any], None], dict[str, Any] | None, bool]:
        """One attempt: send, check the status, read up to the first chunk. On success the
        caller owns the response and one semaphore slot; on failure both are released here.
        Returns (response, remaining events, first chunk, finished-without-chunks)."""
        await slots.acquire()
        response: httpx.Response | None = None
        try:
            try:
                response = await client.send(
                    client.build_request("POST", self._url, json=body), stream=True
                )
                if response.status_code >= 400:
                    raise self._status_error(response, await response.aread())
                events = self._events(response)
                try:
                    first = await events.__anext__()
                except StopAsyncIteration:
                    return response, events, None, True
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, streaming=True) from exc
            except _StreamEnded as exc:
                # Nothing reached the caller yet, so a cut-off stream can still be retried.
                raise _Retryable(
                    f"upstream {self.config.model!r} stream ended before the first chunk: {exc}",
                    retryable=True,
                ) from exc
        except BaseException:
            if response is not None:
                await response.aclose()
            slots.release()
            raise
        return response, events, first, False

    async def _events(self, response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
        """Chunks from an SSE body; raises _StreamEnded if it stops without `data: [DONE]`."""
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line or not data:
                continue  # comments (":"), event:/id:/retry: fields, blank keep-alives
            payload = "\n".join(data)
            data = []
            if payload.strip() == "[DONE]":
                return
            chunk = self._chunk(payload)
            if chunk is not None:
                yield chunk
        # Some servers omit the blank line after the last event before closing.
        if data and "\n".join(data).strip() == "[DONE]":
            return
        raise _StreamEnded("connection closed without data: [DONE]")

    def _chunk(self, payload: str) -> dict[str, Any] | None:
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise BackendError(
                f"upstream {self.config.model!r} sent a malformed stream event: "
                f"{self._safe(payload)}",
                retryable=False,
            ) from exc
        if not isinstance(chunk, dict):
            return None
        if "error" in chunk and "choices" not in chunk:
            # OpenAI reports mid-stream failures as an event carrying an error object.
            raise BackendError(
                f"upstream {self.config.model!r} stream error: "
                f"{self._upstream_message(payload.encode())}",
                retryable=False,
            )
        chunk["model"] = self.config.model
        return chunk

    async def close(self) -> None:
        client, loop = self._client, self._loop
        self._client, self._slots, self._loop = None, None, None
        if client is None:
            return
        if loop is not asyncio.get_running_loop():
            # Its connections belong to another (likely closed) loop and cannot be closed from
            # here; dropping the client lets garbage collection release the sockets.
            logger.debug("dropping an HTTP client created in another event loop")
            return
        await client.aclose()


__all__ = ["RETRYABLE_STATUSES", "RETRY_AFTER_CAP_FACTOR", "OpenAIAPIBackend", "parse_retry_after"]
