"""Application builder: `serve run serve_app.app:build_app config=FILE` or a Serve config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from backends import OpenAIBackendConfig
from routers.checkpoint import read_config
from routers.registry import router_class
from routers.shipped import router_path
from routers.thresholds import resolve_threshold
from serve_app.backend_deployment import BackendDeployment
from serve_app.config import ServeConfig
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


def check_routers(config: ServeConfig) -> None:
    """Fail before deploying anything when a router cannot be served as configured: a missing
    or broken directory, an option its kind does not take (or a value of the wrong type), no
    threshold to route at. Reads only config.json: an option that depends on the weights (a
    model name the router was not trained on) stops the router replica when it loads."""
    for spec in config.routers:
        path = router_path(spec.path)
        kind = router_class(str(read_config(path).get("router")))
        kind.parse_load_options(spec.options)
        resolve_threshold(path, threshold=spec.threshold)


def build(config: ServeConfig) -> Application:
    config = config.with_absolute_paths()
    check_routers(config)
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
        _backend("StrongModel", config.strong),
        _backend("WeakModel", config.weak),
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
