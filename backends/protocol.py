"""The one interface every chat backend implements, lifecycle included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ChatBackend(Protocol):
    """Answers OpenAI chat-completion requests.

    `request` is the client's validated request body as a dict (messages, max_tokens,
    temperature, top_p, stop, n, ...); the backend ignores `model` and `stream` in it and
    reports its own model name in every response. Every failure is a `BackendError`.

    Lifecycle: `start()` before the first request makes the first one as fast as the rest
    (a vLLM engine takes tens of seconds to start; an HTTP client nothing); `check_health()`
    raises `BackendError` once the backend can no longer answer; `close()` releases what
    `start()` took. All three are idempotent.
    """

    model: str

    async def start(self) -> None: ...

    async def check_health(self) -> None: ...

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """A full `chat.completion` object (OpenAI JSON shape, as a dict)."""
        ...

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """`chat.completion.chunk` objects, the last one with a finish_reason; a failure
        before the first chunk raises BackendError, after it ends the stream with one."""
        ...

    async def close(self) -> None: ...
