"""Backend settings: one pydantic model per kind of backend, and where secrets come from.

Secrets never live in a config file: a key is read from the environment variable or the file
that the config names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A config section that refuses unknown keys, so a typo is an error and not a default."""

    model_config = ConfigDict(extra="forbid")


class SecretRef(Strict):
    """Where a secret comes from: an environment variable or a file (first non-empty wins)."""

    env: str | None = None
    file: str | None = None

    def read(self) -> str | None:
        if self.env and os.environ.get(self.env):
            return os.environ[self.env].strip()
        if self.file and Path(self.file).is_file():
            return Path(self.file).read_text().strip() or None
        return None

    def absolute(self, base: Path) -> SecretRef:
        """The same reference with a relative file pinned to `base`."""
        if self.file is None or Path(self.file).is_absolute():
            return self
        return self.model_copy(update={"file": str(base / self.file)})


class OpenAIBackendConfig(Strict):
    """An external OpenAI-compatible API (the strong model, or a weak one served elsewhere)."""

    kind: Literal["openai"] = "openai"
    model: str = Field(description="Model name sent upstream and reported to clients.")
    base_url: str = Field(description="e.g. https://api.openai.com/v1")
    api_key: SecretRef = SecretRef(env="STRONG_API_KEY")
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    max_concurrency: int = Field(default=64, ge=1)
    num_replicas: int = 1

    def with_absolute_paths(self, base: Path) -> OpenAIBackendConfig:
        return self.model_copy(update={"api_key": self.api_key.absolute(base)})


class VLLMBackendConfig(Strict):
    """A model served by vLLM's async engine in this process (a Serve replica, a Ray Data
    actor)."""

    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="Name reported to clients.")
    model_path: str = Field(description="Local Hugging Face model directory.")
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm AsyncEngineArgs, e.g. max_model_len."
    )
    serving_args: list[str] = Field(
        default_factory=list,
        description=(
            "Extra `vllm serve` flags, parsed by vLLM's own parser and applied as `vllm serve` "
            "applies them, mainly to its OpenAI serving layer: e.g. ['--enable-auto-tool-choice',"
            " '--tool-call-parser', 'hermes'] for tool_choice 'auto' (and a parser for "
            "'required' or a named tool), '--chat-template', '--reasoning-parser'. engine_args "
            "override engine flags given here."
        ),
    )
    autoscaling: dict[str, Any] | None = None
    max_ongoing_requests: int = 64

    def with_absolute_paths(self, base: Path) -> VLLMBackendConfig:
        if Path(self.model_path).is_absolute():
            return self
        return self.model_copy(update={"model_path": str(base / self.model_path)})


BackendConfig = Annotated[OpenAIBackendConfig | VLLMBackendConfig, Field(discriminator="kind")]
