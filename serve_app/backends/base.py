"""The interface every chat backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class ChatBackend(Protocol):
    """Answers OpenAI chat-completion requests.

    `request` is the client's validated request body as a dict (messages, max_tokens,
    temperature, top_p, stop, n, ...); the backend ignores `model` and `stream` in it and
    reports its own model name in every response.
    """

    model: str

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """A full `chat.completion` object (OpenAI JSON shape, as a dict)."""
        ...

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """`chat.completion.chunk` objects, the last one with a finish_reason; a failure
        before the first chunk raises BackendError, after it ends the stream with the error."""
        ...

    async def close(self) -> None: ...
