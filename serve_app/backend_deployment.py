"""A chat backend (vLLM engine or external API) as a Serve deployment.

Failures cross the deployment boundary as plain `{"__error__": ...}` values, not exceptions, so
the ingress decides about fallback and status codes without unwrapping Ray's error types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from serve_app.config import OpenAIBackendConfig, VLLMBackendConfig
from serve_app.errors import BackendError

ERROR_KEY = "__error__"


def _error(exc: BackendError) -> dict[str, Any]:
    return {ERROR_KEY: {"message": str(exc), "status": exc.status, "retryable": exc.retryable}}


def make_backend(config: dict[str, Any]):
    if config.get("kind") == "vllm":
        from serve_app.backends.vllm_engine import VLLMEngineBackend

        return VLLMEngineBackend(VLLMBackendConfig.model_validate(config))
    from serve_app.backends.openai_api import OpenAIAPIBackend

    return OpenAIAPIBackend(OpenAIBackendConfig.model_validate(config))


class BackendDeployment:
    # Serve awaits an async constructor before the replica takes traffic, so a vLLM engine is
    # loaded before the first request instead of making that request wait ~20 s.
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        self.backend = make_backend(config)
        self.model = self.backend.model
        start = getattr(self.backend, "start", None)
        if start is not None:
            await start()

    async def __del__(self) -> None:
        # Serve awaits this on replica shutdown: stop the engine's processes cleanly.
        await self.backend.close()

    async def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.backend.complete(request)
        except BackendError as exc:
            return _error(exc)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self.backend.stream(request):
                yield chunk
        except BackendError as exc:
            yield _error(exc)

    async def check_health(self) -> None:
        # Serve calls this periodically; an engine that died takes the replica down with it.
        check = getattr(self.backend, "check_health", None)
        if check is not None:
            await check()
