"""`routeray simulate`: what routers would have cost and delivered on historical traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from routeray.options import (
    LoadOptionOption,
    LocalRayCpusOption,
    PromptColumnOption,
    RoutersOption,
    S3EndpointOption,
    fail,
    init_ray,
    key_values,
)


def simulate(
    input: Annotated[str, typer.Option(help="Traffic Parquet (file or directory, or s3://).")],
    prices: Annotated[Path, typer.Option(help="prices.yaml: USD per million tokens per model.")],
    output: Annotated[Path, typer.Option(help="Directory for summary.json, curve, report.")],
    router: RoutersOption = None,
    load_option: LoadOptionOption = None,
    thresholds: Annotated[
        int, typer.Option(help="Thresholds per router, spread evenly over strong shares.")
    ] = 100,
    strong_pct_grid: Annotated[
        str | None, typer.Option(help="Strong shares instead, comma-separated: 0.1,0.3,0.5.")
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
    prompt_column: PromptColumnOption = "prompt",
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer for missing input_tokens (default: MiniLM's).")
    ] = None,
    s3_endpoint: S3EndpointOption = None,
    local_ray_cpus: LocalRayCpusOption = None,
) -> None:
    """Sweep thresholds over scored traffic: cost, saving and quality, the Pareto front and a
    recommended threshold."""
    from batch_jobs.simulate import run
    from routers import Prices

    try:
        price_table = Prices.from_yaml(prices)
        grid = [float(x) for x in strong_pct_grid.split(",")] if strong_pct_grid else None
    except (OSError, ValueError) as exc:
        fail(exc)
    options = key_values(load_option, "--load-option")
    init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            str(output),
            prices=price_table,
            routers=router,
            load_options=options,
            thresholds=thresholds,
            strong_pct_grid=grid,
            budget=budget,
            quality_target=quality_target,
            prompt_column=prompt_column,
            tokenizer=tokenizer,
            s3_endpoint=s3_endpoint,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    brief = {k: v for k, v in summary.items() if k not in ("curve", "daily")}
    typer.echo(json.dumps(brief, indent=2))
    typer.echo(f"\nreport: {output / 'report.md'}  curve: {output / 'curve.parquet'}")
