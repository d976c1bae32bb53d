"""`routeray serve`: the online endpoint on Ray Serve."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from routeray.options import CACHE_DIR, LocalRayCpusOption, fail


def serve(
    config: Annotated[
        Path | None, typer.Option(help="ServeConfig YAML (see serve_config.yaml).")
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Shipped router + vLLM on a tiny model + local strong stand-in.")
    ] = False,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: config's, 8000).")] = None,
    local_ray_cpus: LocalRayCpusOption = None,
) -> None:
    """Start the OpenAI-compatible routing endpoint and serve until Ctrl-C."""
    if demo == (config is not None):
        raise typer.BadParameter("give exactly one of --config and --demo")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray
    from ray import serve as ray_serve

    from serve_app.app import build, check_routers
    from serve_app.config import ServeConfig

    standin = None
    if demo:
        from routeray.demo.config import demo_config
        from routeray.demo.strong_standin import StrongStandin
        from routeray.demo.tiny_model import build_tiny_model

        model_dir = build_tiny_model(CACHE_DIR / "tiny-model")
        standin = StrongStandin()
        standin.start()
        cfg = demo_config(model_dir, standin.base_url, port or 8000)
    else:
        try:
            cfg = ServeConfig.from_yaml(config)
            check_routers(cfg.with_absolute_paths())
        except (OSError, ValueError) as exc:
            fail(exc)
        if port:
            cfg.port = port
    stop = threading.Event()
    try:
        if not ray.is_initialized():
            ray.init(num_cpus=local_ray_cpus, include_dashboard=False)
        ray_serve.start(http_options={"host": cfg.host, "port": cfg.port})
        ray_serve.run(build(cfg), name="routeray", route_prefix="/")
        base_url = f"http://{cfg.host}:{cfg.port}/v1"
        typer.echo(f"\nrouteray is serving at {base_url}  (models: GET {base_url}/models)\n")
        if demo:
            from routeray.demo.config import openai_example

            typer.echo(openai_example(base_url))
        typer.echo("\nCtrl-C to stop.")
        # Ray replaces the default SIGINT handling in the driver; take both signals back.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("shutting down...")
        ray_serve.shutdown()
        if standin is not None:
            standin.stop()
        ray.shutdown()
