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
    controller: Annotated[
        str | None,
        typer.Option(
            help="Replay the traffic through a share controller holding this target: a YAML "
            "file of its fields, or KEY=VALUE[,KEY=VALUE] (strong_share=0.3, "
            "spend_usd_per_hour=2, window=300, ...; README, 'Share controller').",
        ),
    ] = None,
    replay_hours: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Without a timestamp column: the hours the replay spreads the "
            "traffic over, evenly, in file order.",
        ),
    ] = 24.0,
    controller_batch: Annotated[
        int,
        typer.Option(
            min=1, help="Requests per report to the controller, as an ingress batches them."
        ),
    ] = 1,
) -> None:
    """Sweep thresholds over scored traffic: cost, saving and quality, the Pareto front and a
    recommended threshold; with --controller, share and spend over time under a share
    controller."""
    from batch_jobs.controller_replay import load_target
    from batch_jobs.simulate import run
    from routers import Prices

    try:
        price_table = Prices.from_yaml(prices)
        grid = [float(x) for x in strong_pct_grid.split(",")] if strong_pct_grid else None
        target = load_target(controller) if controller else None
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
            controller=target,
            replay_hours=replay_hours,
            controller_batch=controller_batch,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    brief = {k: v for k, v in summary.items() if k not in ("curve", "daily")}
    typer.echo(json.dumps(brief, indent=2))
    typer.echo(f"\nreport: {output / 'report.md'}  curve: {output / 'curve.parquet'}")
    if target is not None:
        typer.echo(f"controller: {output / 'controller.json'}  {output / 'controller.png'}")
