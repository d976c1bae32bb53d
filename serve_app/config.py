"""The endpoint's whole configuration: one pydantic model, loaded from YAML.

Secrets never live here: keys are read from the environment variable or file the config names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from routers.costs import Prices


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouterSpec(_Strict):
    """A router served as `router-<name>` (and `router-<name>-<threshold>`)."""

    name: str = "gap"
    path: str | None = Field(default=None, description="Router directory; None: the shipped one.")
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Threshold for `router-<name>`; None: the one recorded in the router dir.",
    )
    aliases: list[str] = Field(default_factory=list, description="More names, e.g. 'default'.")


class BatchingConfig(_Strict):
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0)


class RouterDeploymentConfig(_Strict):
    num_cpus: float = Field(default=1.0, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    batching: BatchingConfig = BatchingConfig()
    autoscaling: dict[str, Any] | None = Field(
        default_factory=lambda: {
            "min_replicas": 1,
            "max_replicas": 1,
            "target_ongoing_requests": 32,
        },
    )
    max_ongoing_requests: int = 256


class SecretRef(_Strict):
    """Where a secret comes from: an environment variable or a file (first non-empty wins)."""

    env: str | None = None
    file: str | None = None

    def read(self) -> str | None:
        if self.env and os.environ.get(self.env):
            return os.environ[self.env].strip()
        if self.file and Path(self.file).is_file():
            return Path(self.file).read_text().strip() or None
        return None


class OpenAIBackendConfig(_Strict):
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


class VLLMBackendConfig(_Strict):
    """A model served by vLLM's async engine inside a Serve deployment."""

    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="Name reported to clients.")
    model_path: str = Field(description="Local Hugging Face model directory.")
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm AsyncEngineArgs, e.g. max_model_len."
    )
    autoscaling: dict[str, Any] | None = None
    max_ongoing_requests: int = 64


Backend = Annotated[OpenAIBackendConfig | VLLMBackendConfig, Field(discriminator="kind")]


class AuthConfig(_Strict):
    """Bearer keys for clients: comma- or newline-separated, from env or file. None: open."""

    api_keys: SecretRef | None = None

    def api_key_list(self) -> list[str]:
        if self.api_keys is None:
            return []
        raw = self.api_keys.read() or ""
        return [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]


class ServeConfig(_Strict):
    routers: list[RouterSpec] = Field(default_factory=lambda: [RouterSpec(aliases=["default"])])
    strong: Backend
    weak: Backend
    fallback_to_weak: bool = Field(
        default=True, description="Answer with the weak model when the strong API fails."
    )
    route_on: Literal["last_user", "conversation"] = "last_user"
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    log_prompts: bool = Field(default=False, description="Log prompt text (off: never logged).")
    prices: Prices = Prices()
    auth: AuthConfig = AuthConfig()
    router_deployment: RouterDeploymentConfig = RouterDeploymentConfig()
    host: str = "127.0.0.1"
    port: int = 8000

    def with_absolute_paths(self, base: Path | None = None) -> ServeConfig:
        """Replicas may start in another working directory: pin every relative path now."""
        base = base or Path.cwd()

        def absolute(value: str | None) -> str | None:
            return None if value is None or Path(value).is_absolute() else str(base / value)

        copy = self.model_copy(deep=True)
        for spec in copy.routers:
            spec.path = absolute(spec.path) or spec.path
        for backend in (copy.strong, copy.weak):
            if isinstance(backend, VLLMBackendConfig):
                backend.model_path = absolute(backend.model_path) or backend.model_path
            else:
                backend.api_key.file = absolute(backend.api_key.file) or backend.api_key.file
        if copy.auth.api_keys is not None:
            copy.auth.api_keys.file = absolute(copy.auth.api_keys.file) or copy.auth.api_keys.file
        return copy

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServeConfig:
        """A ServeConfig document, or a Ray Serve config file (serve_config.yaml): then the
        routeray application's `args` and the file's `http_options`."""
        document = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" not in document:
            return cls.model_validate(document)
        apps = [
            a for a in document["applications"] if a.get("import_path") == "serve_app.app:build_app"
        ]
        if not apps:
            raise ValueError(f"{path} has no application with import_path serve_app.app:build_app")
        http = document.get("http_options") or {}
        args = {**apps[0].get("args", {})}
        args.setdefault("host", http.get("host", "127.0.0.1"))
        args.setdefault("port", http.get("port", 8000))
        return cls.model_validate(args)
