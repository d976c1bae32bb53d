"""A chat backend (vLLM engine or external API) as a Serve deployment.

Failures cross the deployment boundary as `backends.BackendError`: Ray re-raises it in the
caller as a subclass of the original type with its fields (status, retryable, retry_after).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from backends import BackendError, make_backend

logger = logging.getLogger("ray.serve")


class _ExpectedFailures(logging.Filter):
    """Serve logs every exception a request raises as "Request failed." with a traceback. A
    backend error (an upstream 429, a prompt over the context) is an answer, not a crash: it
    is logged here as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BackendError):
            record.msg, record.args, record.exc_info = "backend error: %s", (exc.message,), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class BackendDeployment:
    # Serve awaits an async constructor before the replica takes traffic, so a vLLM engine is
    # loaded before the first request instead of making that request wait for it.
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        logger.addFilter(_ExpectedFailures())
        self.backend = make_backend(config)
        self.model = self.backend.model
        await self.backend.start()

    async def __del__(self) -> None:
        # Serve awaits this on replica shutdown: stop the engine's processes cleanly.
        await self.backend.close()

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.backend.complete(request)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self.backend.stream(request):
            yield chunk

    async def check_health(self) -> None:
        # Serve calls this periodically; an engine that died takes the replica down with it.
        await self.backend.check_health()
