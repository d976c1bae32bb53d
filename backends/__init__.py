"""Model backends: a vLLM engine in this process or an OpenAI-compatible API, behind one
protocol (`ChatBackend`) and one factory (`make_backend`). Used by the online endpoint and the
batch jobs alike; imports neither."""

from backends.config import BackendConfig, OpenAIBackendConfig, SecretRef, VLLMBackendConfig
from backends.errors import BackendError
from backends.factory import backend_config, make_backend
from backends.protocol import ChatBackend

__all__ = [
    "BackendConfig",
    "BackendError",
    "ChatBackend",
    "OpenAIBackendConfig",
    "SecretRef",
    "VLLMBackendConfig",
    "backend_config",
    "make_backend",
]
