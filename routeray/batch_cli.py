"""`routeray batch ...`: the Ray Data jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

batch_app = typer.Typer(help="Offline jobs on Ray Data.", no_args_is_help=True)


def _fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2) from exc


def _init_ray(num_cpus: int | None) -> None:
    import ray

    if not ray.is_initialized():
        # Inside `ray job submit` RAY_ADDRESS points at the cluster and this connects to it.
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True)


@batch_app.command("route")
def route(
    output: Annotated[str, typer.Option(help="Output directory (Parquet files + _SUMMARY.json).")],
    input: Annotated[
        str | None, typer.Option(help="Parquet file or directory of Parquet files.")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Generate this many prompts as the input instead.")
    ] = None,
    router: Annotated[str | None, typer.Option(help="Router directory (default: shipped).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Route strong when score >= this.")
    ] = None,
    strong_pct: Annotated[
        float | None, typer.Option(help="Calibrate the threshold on the input for this share.")
    ] = None,
    prompt_column: str = "prompt",
    batch_size: Annotated[int, typer.Option(help="Prompts per router call.")] = 4096,
    num_actors: Annotated[
        int | None, typer.Option(help="Router actors (default: one per CPU, or per GPU share).")
    ] = None,
    num_cpus: Annotated[
        float | None, typer.Option(help="CPUs per router actor (default: an equal share).")
    ] = None,
    num_gpus: Annotated[float, typer.Option(help="GPUs per router actor.")] = 0.0,
    prices: Annotated[
        Path | None, typer.Option(help="prices.yaml: USD per million tokens.")
    ] = None,
    s3_endpoint: Annotated[
        str | None, typer.Option(help="S3 endpoint URL (default: AWS, or $AWS_ENDPOINT_URL).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Discard earlier results in --output instead of resuming.")
    ] = False,
    local_ray_cpus: Annotated[
        int | None, typer.Option(help="CPUs for a local Ray (ignored on a cluster).")
    ] = None,
) -> None:
    """Score every prompt, route it, price it, and write the results with a summary."""
    from batch_jobs.route import run
    from routeray.demo.prompts import generate_prompts
    from routers.checkpoint import CheckpointError
    from routers.prices import Prices

    if (input is None) == (sample is None):
        raise typer.BadParameter("give exactly one of --input and --sample")
    if sample is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sample_dir = Path(f"{output.rstrip('/')}-input")
        sample_dir.mkdir(parents=True, exist_ok=True)
        input = str(sample_dir / "prompts.parquet")
        prompts = generate_prompts(sample)
        pq.write_table(
            pa.table({"id": range(sample), "prompt": prompts}),
            input,
            row_group_size=max(1, sample // 8),
        )
        typer.echo(f"generated {sample} prompts into {input}")
    _init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            output,
            router_dir=router,
            threshold=threshold,
            strong_pct=strong_pct,
            prompt_column=prompt_column,
            batch_size=batch_size,
            num_actors=num_actors,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            prices=Prices.from_yaml(prices) if prices else None,
            s3_endpoint=s3_endpoint,
            # A generated sample is new input each time: never resume onto older results.
            overwrite=overwrite or sample is not None,
        )
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(
        f"\nrouted {summary['rows']} prompts: {summary['strong']} to the strong model, "
        f"{summary['weak']} to the weak model, {summary['errors']} unusable "
        f"(threshold {summary['threshold']:.4f})\n"
        f"estimated cost ${summary['estimated_cost_usd']:.4f} against "
        f"${summary['all_strong_cost_usd']:.4f} all-strong "
        f"({summary['saving_vs_all_strong']:.1%} saved)\n"
        f"results: {output}  (summary: {output.rstrip('/')}/_SUMMARY.json)"
    )


@batch_app.command("generate")
def generate(
    input: Annotated[str, typer.Option(help="Routed Parquet (or raw prompts, routed first).")],
    output: Annotated[str, typer.Option(help="Output directory, local or s3://.")],
    config: Annotated[
        Path, typer.Option(help="generate.yaml, or a serve config: models, limits, prices.")
    ],
    router: Annotated[
        str | None, typer.Option(help="Router for unrouted input (default: shipped).")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Threshold for unrouted input.")] = None,
    prompt_column: str = "prompt",
    s3_endpoint: Annotated[str | None, typer.Option(help="S3 endpoint URL.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard earlier results in --output.")] = False,
    local_ray_cpus: Annotated[
        int | None, typer.Option(help="CPUs for a local Ray (ignored on a cluster).")
    ] = None,
) -> None:
    """Answer every prompt: weak rows on vLLM, strong rows through the external API."""
    from batch_jobs.generate import GenerateConfig, run
    from routers.checkpoint import CheckpointError

    try:
        settings = GenerateConfig.from_yaml(config)
    except (OSError, ValueError) as exc:
        _fail(exc)
    _init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            output,
            settings,
            router_dir=router,
            threshold=threshold,
            prompt_column=prompt_column,
            s3_endpoint=s3_endpoint,
            overwrite=overwrite,
        )
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(
        f"\nanswered {summary['answered_strong']} prompts with the strong model and "
        f"{summary['answered_weak']} with the weak one; {summary['errors']} rows have an error\n"
        f"cost ${summary['cost_usd']:.4f} against about ${summary['all_strong_cost_usd']:.4f} "
        f"all-strong ({summary['saving_vs_all_strong']:.1%} saved)\nresults: {output}"
    )
