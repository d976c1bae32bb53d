"""One way to build a backend from its config, for the endpoint and the batch jobs alike."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from backends.config import BackendConfig, OpenAIBackendConfig, VLLMBackendConfig
from backends.protocol import ChatBackend

_CONFIG: TypeAdapter[OpenAIBackendConfig | VLLMBackendConfig] = TypeAdapter(BackendConfig)


def backend_config(config: dict[str, Any] | OpenAIBackendConfig | VLLMBackendConfig):
    """A validated backend config from a model or its dict (as it crosses to a Ray actor)."""
    if isinstance(config, (OpenAIBackendConfig, VLLMBackendConfig)):
        return config
    return _CONFIG.validate_python(config)


def make_backend(config: dict[str, Any] | OpenAIBackendConfig | VLLMBackendConfig) -> ChatBackend:
    """The backend for `config`; vLLM is imported only when a vLLM backend is asked for."""
    config = backend_config(config)
    if isinstance(config, VLLMBackendConfig):
        from backends.vllm_engine import VLLMEngineBackend

        return VLLMEngineBackend(config)
    from backends.openai_api import OpenAIAPIBackend

    return OpenAIAPIBackend(config)
