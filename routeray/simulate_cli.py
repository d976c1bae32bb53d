"""`routeray simulate`: what routers would have cost and delivered on historical traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    input: Annotated[
        str,
        typer.Option(
            help="Traffic Parquet (file or directory, or s3://); for an N-model router, a "
            "labelled outcome table (prompt, model, score [, id])."
        ),
    ],
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
    controller. For an N-model router: its cost-quality frontier on a labelled outcome table
    against every single model, the zero router and the oracle, with their AIQs."""
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
    if summary.get("kind") == "multi":
        _print_frontier(summary, output)
        return
    brief = {k: v for k, v in summary.items() if k not in ("curve", "daily")}
    typer.echo(json.dumps(brief, indent=2))
    typer.echo(f"\nreport: {output / 'report.md'}  curve: {output / 'curve.parquet'}")
    if target is not None:
        typer.echo(f"controller: {output / 'controller.json'}  {output / 'controller.png'}")


def print_aiq(summary: dict[str, Any]) -> None:
    """An N-model judgement (routers.evaluation.multi_model) as a few lines: the AIQs, then
    every model alone."""
    aiq = summary["aiq"]
    lo, hi = summary["cost_range"]
    typer.echo(
        f"{summary['prompts']} prompts, {len(summary['models'])} models; AIQ over mean cost "
        f"${lo:.6f}-${hi:.6f} per prompt: router {aiq['router']:.4f}, zero router "
        f"{aiq['zero_router']:.4f}, oracle {aiq['oracle']:.4f}"
    )
    at = summary.get("at_rule")
    if at:
        typer.echo(
            f"router at {at['rule']}: ${at['cost']:.6f} per prompt, quality {at['quality']:.4f}"
        )
    typer.echo(f"{'model':<40}{'USD/prompt':>12}{'quality':>9}")
    for row in summary["single_models"]:
        typer.echo(f"{row['model']:<40}{row['cost']:>12.6f}{row['quality']:>9.4f}")


def _print_frontier(summary: dict[str, Any], output: Path) -> None:
    print_aiq(summary)
    left_out = {k: v for k, v in summary["left_out"].items() if v}
    if left_out:
        typer.echo(f"left out: {json.dumps(left_out)}")
    typer.echo(
        f"\nsummary: {output / 'summary.json'}  frontier: {output / 'frontier.csv'}  "
        f"plot: {output / 'cost_quality.png'}"
    )
