"""`routeray simulate`: what routers would have cost and delivered on historical traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from routeray.batch_cli import _fail, _init_ray


def simulate(
    input: Annotated[str, typer.Option(help="Traffic Parquet (file or directory, or s3://).")],
    prices: Annotated[Path, typer.Option(help="prices.yaml: USD per million tokens per model.")],
    output: Annotated[Path, typer.Option(help="Directory for summary.json, curve, report.")],
    routers: Annotated[
        list[str] | None, typer.Option(help="Router directory or `default`; repeat for more.")
    ] = None,
    thresholds: Annotated[
        int, typer.Option(help="Thresholds per router, spread evenly over strong shares.")
    ] = 100,
    strong_pct_grid: Annotated[
        str | None, typer.Option(help="Strong shares instead, e.g. 0.1,0.2,0.5.")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(help="Recommend the best quality within this USD budget.")
    ] = None,
    quality_target: Annotated[
        float | None,
        typer.Option(
            help="Recommend the cheapest point reaching this share of all-strong quality."
        ),
    ] = None,
    prompt_column: str = "prompt",
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer for missing input_tokens (default: MiniLM's).")
    ] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="S3 endpoint URL.")] = None,
    local_ray_cpus: Annotated[
        int | None, typer.Option(help="CPUs for a local Ray (ignored on a cluster).")
    ] = None,
) -> None:
    """Sweep thresholds over scored traffic: cost, saving and quality, the Pareto front and a
    recommended threshold."""
    from batch_jobs.simulate import run
    from routers.checkpoint import CheckpointError
    from routers.prices import Prices

    try:
        price_table = Prices.from_yaml(prices)
        grid = [float(x) for x in strong_pct_grid.split(",")] if strong_pct_grid else None
    except (OSError, ValueError) as exc:
        _fail(exc)
    _init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            str(output),
            prices=price_table,
            routers=routers,
            thresholds=thresholds,
            strong_pct_grid=grid,
            budget=budget,
            quality_target=quality_target,
            prompt_column=prompt_column,
            tokenizer=tokenizer,
            s3_endpoint=s3_endpoint,
        )
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    brief = {k: v for k, v in summary.items() if k not in ("curve", "daily")}
    typer.echo(json.dumps(brief, indent=2))
    typer.echo(f"\nreport: {output / 'report.md'}  curve: {output / 'curve.parquet'}")
