"""Application builder: `serve run serve_app.app:build_app config=FILE` or a Serve config file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from backends import OpenAIBackendConfig
from routers.checkpoint import load_router, read_config
from routers.registry import router_class
from routers.shipped import router_path
from routers.thresholds import resolve_threshold
from serve_app.backend_deployment import BackendDeployment
from serve_app.config import RouterSpec, ServeConfig
from serve_app.ingress import Ingress
from serve_app.router_deployment import RouterDeployment

# Serve logs an INFO line per request by default; at thousands of requests/s that is noise.
QUIET = {"enable_access_log": False}


def load_config(args: dict[str, Any]) -> ServeConfig:
    """`args` is either {"config": path-to-yaml} or the configuration itself."""
    if set(args) == {"config"}:
        return ServeConfig.from_yaml(Path(args["config"]))
    return ServeConfig.model_validate(args)


def _backend(name: str, config) -> Application:
    options: dict[str, Any] = {"name": name, "logging_config": QUIET}
    if isinstance(config, OpenAIBackendConfig):
        # An HTTP client: no compute of its own, so it must not compete for CPUs.
        options |= {
            "num_replicas": config.num_replicas,
            "ray_actor_options": {"num_cpus": 0},
            "max_ongoing_requests": config.max_concurrency * 2,
        }
    else:
        options |= {
            "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
            "max_ongoing_requests": config.max_ongoing_requests,
            "health_check_period_s": 10,
        }
        if config.autoscaling:
            options["autoscaling_config"] = config.autoscaling
    return serve.deployment(BackendDeployment).options(**options).bind(config.model_dump())


def is_multi_kind(kind: type) -> bool:
    """Whether routers of this kind predict N models' qualities (routers.protocol.MultiRouter),
    read from the class, before any weight is loaded."""
    return callable(getattr(kind, "qualities", None))


def check_routers(config: ServeConfig) -> ServeConfig:
    """Fail before deploying anything when a router cannot be served as configured: a missing
    or broken directory, an option its kind does not take (or a value of the wrong type), no
    threshold to route at; for an N-model router, a model without a backend or a price, or one
    it has no labels for. A two-model router is checked from config.json alone (an option that
    depends on its weights stops the router replica when it loads); an N-model router is loaded
    once, to read its model list. Returns `config` with every N-model router's `models` option
    pinned to the backends it routes among (their configured names), so that every replica
    loads the same list."""
    config = config.model_copy(deep=True)
    for spec in config.routers:
        path = router_path(spec.path)
        kind = router_class(str(read_config(path).get("router")))
        kind.parse_load_options(spec.options)
        if is_multi_kind(kind):
            spec.options["models"] = _multi_models(config, spec)
        else:
            if spec.rule is not None:
                raise ValueError(
                    f"router {spec.name!r} chooses between two models: it routes at a "
                    "threshold, not by a rule (remove `rule:`)"
                )
            resolve_threshold(path, threshold=spec.threshold)
    return config


def _multi_models(config: ServeConfig, spec: RouterSpec) -> list[str]:
    """The backends (model names as configured) an N-model router chooses among: those its
    `models` option names, else every configured backend it has labels for; each one served
    and priced (ValueError naming what is missing)."""
    where = f"router {spec.name!r}"
    if spec.threshold is not None or spec.control is not None:
        raise ValueError(
            f"{where} chooses among N models by a rule (`rule:`), not at a threshold or a "
            "control target"
        )
    path = router_path(spec.path)
    narrowed = spec.options.get("models")
    if narrowed:
        keys = []
        for name in narrowed:
            key = config.backend_for(name)
            if key is None:
                served = ", ".join(b.model for b in config.backend_configs().values())
                raise ValueError(
                    f"{where}: model {name!r} has no backend; add one under `backends:` "
                    f"(served: {served})"
                )
            keys.append(key)
    else:
        try:
            known = load_router(path, **spec.options).models
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        keys = [key for name in known if (key := config.backend_for(name)) is not None]
        if len(keys) < 2:
            served = ", ".join(b.model for b in config.backend_configs().values())
            raise ValueError(
                f"{where} has labels for {len(keys)} of the configured backends ({served}); "
                f"it needs two or more to choose among (it has labels for: {', '.join(known)})"
            )
    backends = config.backend_configs()
    names = [backends[key].model for key in keys]
    for key in keys:
        try:
            config.price_of(key)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if narrowed:
        # Loads with the narrowed list: a model it has no labels for is its ValueError.
        try:
            load_router(path, **(spec.options | {"models": names}))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    return names


def deployment_name(key: str) -> str:
    """The Serve deployment of the backend `key` ("strong", "weak" or a model name)."""
    if key in ("strong", "weak"):
        return f"{key.capitalize()}Model"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    if safe != key:
        # Two names that differ only where characters were replaced stay two deployments.
        safe += "-" + hashlib.sha1(key.encode()).hexdigest()[:6]
    return f"Model-{safe}"


def build(config: ServeConfig) -> Application:
    config = check_routers(config.with_absolute_paths())
    config = config.with_placements()
    deployed = [r.model_dump() for r in config.routers if r.placement == "deployment"]
    ingress = serve.deployment(Ingress).options(
        name="Ingress",
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        logging_config=QUIET,
        **(
            {"autoscaling_config": config.ingress.autoscaling} if config.ingress.autoscaling else {}
        ),
    )
    return ingress.bind(
        config.model_dump(),
        # Routers scored in the ingress need no deployment; none at all when every one is.
        _router_deployment(config, deployed) if deployed else None,
        _backend(deployment_name("strong"), config.strong),
        _backend(deployment_name("weak"), config.weak),
        # One deployment per further backend, each named after its model.
        {b.model: _backend(deployment_name(b.model), b) for b in config.backends},
    )


def _router_deployment(config: ServeConfig, routers: list[dict[str, Any]]) -> Application:
    rd = config.router_deployment
    router_options: dict[str, Any] = {
        "name": "Router",
        "ray_actor_options": {
            "num_cpus": rd.num_cpus,
            "num_gpus": rd.num_gpus,
            "resources": rd.resources,
        },
        "max_ongoing_requests": rd.max_ongoing_requests,
        "logging_config": QUIET,
    }
    if rd.autoscaling:
        router_options["autoscaling_config"] = rd.autoscaling
    return (
        serve.deployment(RouterDeployment)
        .options(**router_options)
        .bind(
            routers,
            rd.batching.model_dump(),
            # Torch threads for a CPU replica: its share of cores, not all of the machine's.
            max(1, int(rd.num_cpus)) if rd.num_gpus == 0 else None,
        )
    )


def build_app(args: dict[str, Any]) -> Application:
    return build(load_config(args))
