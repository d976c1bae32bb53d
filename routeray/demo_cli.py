"""`routeray demo ...`: the demo's pieces on their own, to try a serve config on one machine
without a model or a paid API (`routeray serve --demo` starts all of them together)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from routeray.options import SeedOption, fail

demo_app = typer.Typer(help="The demo's pieces: a tiny model, a strong-API stand-in.")


@demo_app.command("tiny-model")
def tiny_model(
    directory: Annotated[Path, typer.Argument(help="Where to write the model.")],
    seed: SeedOption = 0,
) -> None:
    """Build a tiny random-weight Llama chat model that vLLM serves (its answers are noise)."""
    from routeray.demo.tiny_model import build_tiny_model

    typer.echo(f"tiny model in {build_tiny_model(directory, seed=seed)}")


@demo_app.command("standin")
def standin(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8100,
    model_name: Annotated[
        str | None, typer.Option(help="Model reported in answers (default: the one asked for).")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the bearer key to require."),
    ] = None,
) -> None:
    """Serve the local OpenAI-compatible stand-in for the strong API until Ctrl-C; faults can
    be asked for per request with the `x-standin-fault` header."""
    import uvicorn

    from routeray.demo.strong_standin import create_app

    # The key is named, never given: it stays out of argv and shell history.
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        fail(f"environment variable {api_key_env} is empty")
    app = create_app(api_key=api_key, model_name=model_name)
    uvicorn.run(app, host=host, port=port, log_level="info")
