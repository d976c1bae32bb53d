"""The endpoint's whole configuration: one pydantic model, loaded from YAML.

Secrets never live here: keys are read from the environment variable or file the config names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from backends.config import BackendConfig, SecretRef, Strict
from routers.data.model_names import normalize_model_name
from routers.decision.choice import ChoiceRule
from routers.decision.placement import scores_lightly
from routers.decision.share_control import ShareTarget
from routers.prices import ModelPrice, Prices
from routers.shipped import SHIPPED, router_path


class RouterSpec(Strict):
    """A router served as `router-<name>` (and `router-<name>-<threshold>` for a two-model
    router, `router-<name>-lambda<L>` or `-margin<M>` for an N-model one)."""

    name: str = "gap"
    path: str | None = Field(
        default=None,
        description="Router directory or a shipped router's name ('default'); None: 'default'.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Threshold for `router-<name>`; None: the one recorded in the router dir.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Load-time options of the router kind, e.g. strong_model for MF; for an "
        "N-model router, models: [...] narrows it to those backends (else: every configured "
        "backend it has labels for).",
    )
    rule: ChoiceRule | None = Field(
        default=None,
        description="N-model routers: the rule of `router-<name>` (cost_weight or margin; "
        "None: a margin of 0.05). `router-<name>-lambda<L>` / `-margin<M>` override it.",
    )
    aliases: list[str] = Field(default_factory=list, description="More names, e.g. 'default'.")
    placement: Literal["auto", "ingress", "deployment"] = Field(
        default="auto",
        description="Where prompts are scored: 'ingress' in the ingress process (no call to "
        "another replica; for routers that score in well under a millisecond, such as the "
        "static `fast`), 'deployment' on the batched router deployment (CPU or GPU replicas; "
        "MiniLM, BERT, causal LLM), 'auto' by the router's kind.",
    )
    control: ShareTarget | None = Field(
        default=None,
        description="Hold a strong share or a spend rate: `router-<name>` routes at a share "
        "controller's threshold, moved with the traffic (names with a threshold or a share "
        "keep theirs). Its initial_threshold, else the one recorded for the share, else the "
        "router's default, applies until it has seen min_scores prompts.",
    )

    @model_validator(mode="after")
    def _control_or_threshold(self) -> RouterSpec:
        if self.control is not None and self.threshold is not None:
            raise ValueError(
                f"router {self.name!r}: give a threshold or a control target, not both "
                "(control.initial_threshold is where a controller starts)"
            )
        if self.rule is not None and (self.threshold is not None or self.control is not None):
            raise ValueError(
                f"router {self.name!r}: a rule is for an N-model router, a threshold or a "
                "control target for a two-model one: give one of them"
            )
        return self


class BatchingConfig(Strict):
    max_batch_size: int = Field(default=32, ge=1)
    # No wait by default: prompts that queue while a batch is scored still share the next
    # one, so a saturated replica batches anyway; a wait only delays a replica with spare
    # time (docs/BENCHMARKS.md). A GPU replica under light load may want a few ms.
    batch_wait_timeout_s: float = Field(default=0.0, ge=0.0)


class RouterDeploymentConfig(Strict):
    num_cpus: float = Field(default=1.0, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each router replica needs, e.g. {'router_node': 1} "
        "to pin replicas to the nodes started with `ray start --resources` offering it.",
    )
    batching: BatchingConfig = BatchingConfig()
    autoscaling: dict[str, Any] | None = Field(
        default_factory=lambda: {
            "min_replicas": 1,
            "max_replicas": 1,
            "target_ongoing_requests": 32,
        },
    )
    max_ongoing_requests: int = 256


class IngressConfig(Strict):
    """The HTTP ingress's replicas. With a router scored in the ingress (placement), give it
    CPUs of its own so that the scheduler counts the scoring."""

    num_cpus: float = Field(default=0.0, ge=0.0)
    max_ongoing_requests: int = Field(default=1024, ge=1)
    autoscaling: dict[str, Any] | None = Field(
        default=None,
        description="A Serve autoscaling_config for the ingress (min_replicas, max_replicas, "
        "target_ongoing_requests, ...); None: one replica.",
    )


class AuthConfig(Strict):
    """Bearer keys for clients: comma- or newline-separated, from env or file. None: open."""

    api_keys: SecretRef | None = None

    def api_key_list(self) -> list[str]:
        """The client keys; [] only when auth is off. Keys configured but unreadable or empty
        are an error: the endpoint must not come up open because a secret went missing."""
        if self.api_keys is None:
            return []
        raw = self.api_keys.read() or ""
        keys = [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]
        if not keys:
            source = self.api_keys.model_dump(exclude_none=True)
            raise ValueError(
                f"auth.api_keys is set ({source}) but holds no key: refusing to serve without "
                "authentication (set the variable or file, or remove auth.api_keys to run open)"
            )
        return keys


class ServeConfig(Strict):
    # Both shipped tiers: router-default (= router-fast, static embeddings) and router-minilm
    # (its teacher, a transformer pass per prompt).
    routers: list[RouterSpec] = Field(
        default_factory=lambda: [
            RouterSpec(aliases=["default", "fast"]),
            RouterSpec(name="minilm", path="minilm"),
        ]
    )
    strong: BackendConfig
    weak: BackendConfig
    backends: list[BackendConfig] = Field(
        default_factory=list,
        description="More backends, each named by its `model` (names unique across strong, "
        "weak and these), for N-model routers; prices come from `prices.models`.",
    )
    fallback_to_weak: bool = Field(
        default=True, description="Answer with the weak model when the strong API fails."
    )
    fallback_to_next: bool = Field(
        default=True,
        description="N-model routers: when the chosen model's service fails (429, 5xx, a "
        "timeout), answer with the next model by the same rule, and so on down the list.",
    )
    route_on: Literal["last_user", "conversation"] = "last_user"
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Longest wait for a deployment: a routing decision, a backend's answer or "
        "a stream's first chunk (a replica being replaced can take minutes); past it, a 504.",
    )
    max_route_prompts: int = Field(
        default=1024, ge=1, description="Most prompts one POST /v1/route request may carry."
    )
    log_prompts: bool = Field(default=False, description="Log prompt text (off: never logged).")
    prices: Prices = Prices()
    auth: AuthConfig = AuthConfig()
    router_deployment: RouterDeploymentConfig = RouterDeploymentConfig()
    ingress: IngressConfig = IngressConfig()
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def _unique_backend_names(self) -> ServeConfig:
        seen: dict[str, str] = {}
        for config in self.backends:
            if config.model in ("strong", "weak"):
                raise ValueError(
                    f"backend model {config.model!r}: 'strong' and 'weak' name the two-model "
                    "pair's backends; give this backend another model name"
                )
        for config in [self.strong, self.weak, *self.backends]:
            normal = normalize_model_name(config.model)
            if normal in seen:
                same = "" if seen[normal] == config.model else f" (the same as {seen[normal]!r})"
                raise ValueError(
                    f"backend model {config.model!r}{same} is configured twice: every backend "
                    "(strong, weak, backends) needs a model name of its own"
                )
            seen[normal] = config.model
        return self

    def backend_configs(self) -> dict[str, BackendConfig]:
        """Every backend by its key: "strong", "weak" (the two-model pair keeps these keys,
        its deployments' names and its routes), then each other backend by its model name."""
        return {"strong": self.strong, "weak": self.weak} | {b.model: b for b in self.backends}

    def backend_for(self, name: str) -> str | None:
        """The key of the backend serving the model `name` (any spelling), or None."""
        configs = self.backend_configs()
        for key, config in configs.items():
            if config.model == name:
                return key
        wanted = normalize_model_name(name)
        for key, config in configs.items():
            if normalize_model_name(config.model) == wanted:
                return key
        return None

    def price_of(self, key: str) -> ModelPrice:
        """The price of the backend `key`: its entry in `prices.models`, else, for the strong
        and weak backends, `prices.strong` / `prices.weak`; ValueError otherwise."""
        model = self.backend_configs()[key].model
        try:
            return self.prices.for_model(model)
        except ValueError:
            if key in ("strong", "weak"):
                return self.prices.strong if key == "strong" else self.prices.weak
            raise

    def with_absolute_paths(self, base: Path | None = None) -> ServeConfig:
        """Replicas may start in another working directory: pin every relative path now."""
        base = base or Path.cwd()
        copy = self.model_copy(deep=True)
        for spec in copy.routers:
            shipped = spec.path is None or spec.path in SHIPPED
            # A relative path joins the base; an absolute one stays as it is.
            spec.path = str(router_path(spec.path) if shipped else base / spec.path)
        copy.strong = copy.strong.with_absolute_paths(base)
        copy.weak = copy.weak.with_absolute_paths(base)
        copy.backends = [b.with_absolute_paths(base) for b in copy.backends]
        if copy.auth.api_keys is not None:
            copy.auth.api_keys = copy.auth.api_keys.absolute(base)
        return copy

    def with_placements(self) -> ServeConfig:
        """Every router's 'auto' placement pinned to where its kind scores (reads each router
        directory's config, so paths must be absolute and the directories loadable)."""
        copy = self.model_copy(deep=True)
        for spec in copy.routers:
            if spec.placement == "auto":
                spec.placement = (
                    "ingress" if scores_lightly(router_path(spec.path)) else "deployment"
                )
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
