"""`routeray batch ...`: the Ray Data jobs. On a cluster: `ray job submit -- routeray batch ...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from routeray.options import (
    CostWeightOption,
    DryRunOption,
    JudgeModeOption,
    LoadOptionOption,
    LocalRayCpusOption,
    MarginOption,
    OverwriteOption,
    PricesOption,
    PromptColumnOption,
    RouterOption,
    S3EndpointOption,
    SampleRowsOption,
    SeedOption,
    StrongPctOption,
    ThresholdOption,
    choice_rule,
    fail,
    init_ray,
    key_values,
)

batch_app = typer.Typer(help="Offline jobs on Ray Data.", no_args_is_help=True)

QualityColumnsOption = Annotated[
    bool,
    typer.Option(
        "--quality-columns",
        help="N-model routers: also write every model's predicted quality (quality:<model>).",
    ),
]


def _rule(cost_weight: float | None, margin: float | None) -> Any:
    """The N-model rule the options give, or None when neither is given (the job's default)."""
    return None if cost_weight is None and margin is None else choice_rule(cost_weight, margin)


def _print_route_summary(summary: dict[str, Any], output: str) -> None:
    if "models" not in summary:
        typer.echo(
            f"\nrouted {summary['rows']} prompts: {summary['strong']} to the strong model, "
            f"{summary['weak']} to the weak model, {summary['errors']} unusable "
            f"(threshold {summary['threshold']:.4f})\n"
            f"estimated cost ${summary['estimated_cost_usd']:.4f} against "
            f"${summary['all_strong_cost_usd']:.4f} all-strong "
            f"({summary['saving_vs_all_strong']:.1%} saved)"
        )
    else:
        per_model = ", ".join(
            f"{name} {row['rows']} (${row['estimated_cost_usd']:.4f})"
            for name, row in summary["models"].items()
        )
        typer.echo(
            f"\nrouted {summary['rows']} prompts ({summary['rule']}), {summary['errors']} "
            f"unusable: {per_model}\nestimated cost ${summary['estimated_cost_usd']:.4f}"
        )
    typer.echo(f"results: {output}  (summary: {output.rstrip('/')}/_SUMMARY.json)")


@batch_app.command("route")
def route(
    output: Annotated[str, typer.Option(help="Output directory (Parquet files + _SUMMARY.json).")],
    input: Annotated[
        str | None, typer.Option(help="Parquet file or directory of Parquet files.")
    ] = None,
    demo_prompts: Annotated[
        int | None, typer.Option(help="Route this many generated demo prompts instead of --input.")
    ] = None,
    router: RouterOption = "default",
    load_option: LoadOptionOption = None,
    threshold: ThresholdOption = None,
    strong_pct: StrongPctOption = None,
    cost_weight: CostWeightOption = None,
    margin: MarginOption = None,
    quality_columns: QualityColumnsOption = False,
    prompt_column: PromptColumnOption = "prompt",
    batch_size: Annotated[int, typer.Option(help="Prompts per router call.")] = 4096,
    num_actors: Annotated[
        int | None, typer.Option(help="Router actors (default: one per CPU, or per GPU share).")
    ] = None,
    num_cpus: Annotated[
        float | None, typer.Option(help="CPUs per router actor (default: an equal share).")
    ] = None,
    num_gpus: Annotated[float, typer.Option(help="GPUs per router actor.")] = 0.0,
    prices: PricesOption = None,
    s3_endpoint: S3EndpointOption = None,
    overwrite: OverwriteOption = False,
    local_ray_cpus: LocalRayCpusOption = None,
) -> None:
    """Score every prompt, route it, price it, and write the results with a summary. A
    two-model router routes at a threshold; an N-model router sends each prompt to the model
    --cost-weight or --margin picks (every model needs a price under `models:` in --prices)."""
    from batch_jobs.route import run
    from routers import Prices

    if (input is None) == (demo_prompts is None):
        raise typer.BadParameter("give exactly one of --input and --demo-prompts")
    if demo_prompts is not None:
        from routeray.demo.prompts import write_sample

        input = str(write_sample(Path(f"{output.rstrip('/')}-input"), demo_prompts))
        typer.echo(f"generated {demo_prompts} prompts into {input}")
    options = key_values(load_option, "--load-option")
    rule = _rule(cost_weight, margin)
    try:
        price_table = Prices.from_yaml(prices) if prices else None
    except (OSError, ValueError) as exc:
        fail(exc)
    init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            output,
            router=router,
            load_options=options,
            threshold=threshold,
            strong_pct=strong_pct,
            prompt_column=prompt_column,
            batch_size=batch_size,
            num_actors=num_actors,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            prices=price_table,
            s3_endpoint=s3_endpoint,
            # Generated prompts are new input each time: never resume onto older results.
            overwrite=overwrite or demo_prompts is not None,
            rule=rule,
            quality_columns=quality_columns,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(json.dumps(summary, indent=2))
    _print_route_summary(summary, output)


@batch_app.command("generate")
def generate(
    input: Annotated[str, typer.Option(help="Routed Parquet (or raw prompts, routed first).")],
    output: Annotated[str, typer.Option(help="Output directory, local or s3://.")],
    config: Annotated[
        Path, typer.Option(help="generate.yaml, or a serve config: models, limits, prices.")
    ],
    router: RouterOption = "default",
    load_option: LoadOptionOption = None,
    threshold: ThresholdOption = None,
    strong_pct: StrongPctOption = None,
    cost_weight: CostWeightOption = None,
    margin: MarginOption = None,
    prompt_column: PromptColumnOption = "prompt",
    s3_endpoint: S3EndpointOption = None,
    overwrite: OverwriteOption = False,
    local_ray_cpus: LocalRayCpusOption = None,
) -> None:
    """Answer every prompt: weak rows on vLLM, strong rows through the external API. Input
    without a `route` column is routed first, with --router and its threshold. A config that
    lists N `backends:` is routed by an N-model router (--cost-weight or --margin) and each row
    answered by its chosen model's backend."""
    from batch_jobs.generate import GenerateConfig, run

    try:
        settings = GenerateConfig.from_yaml(config)
    except (OSError, ValueError) as exc:
        fail(exc)
    options = key_values(load_option, "--load-option")
    rule = _rule(cost_weight, margin)
    init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            output,
            settings,
            rule=rule,
            router=router,
            load_options=options,
            threshold=threshold,
            strong_pct=strong_pct,
            prompt_column=prompt_column,
            s3_endpoint=s3_endpoint,
            overwrite=overwrite,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(json.dumps(summary, indent=2))
    if "models" in summary:
        answered = ", ".join(
            f"{name} {row['answered']} (${row['cost_usd']:.4f})"
            for name, row in summary["models"].items()
        )
        typer.echo(
            f"\nanswered: {answered}; {summary['errors']} rows have an error\n"
            f"cost ${summary['cost_usd']:.4f}\nresults: {output}"
        )
        return
    typer.echo(
        f"\nanswered {summary['answered_strong']} prompts with the strong model and "
        f"{summary['answered_weak']} with the weak one; {summary['errors']} rows have an error\n"
        f"cost ${summary['cost_usd']:.4f} against about ${summary['all_strong_cost_usd']:.4f} "
        f"all-strong ({summary['saving_vs_all_strong']:.1%} saved)\nresults: {output}"
    )


@batch_app.command("label")
def label(
    input: Annotated[str, typer.Option(help="Parquet file or directory of prompts (or answers).")],
    output: Annotated[str, typer.Option(help="Output directory, local or s3://.")],
    config: Annotated[
        Path, typer.Option(help="label.yaml, or a serve config: models, judge, limits, prices.")
    ],
    sample: SampleRowsOption = None,
    seed: SeedOption = 0,
    judge_mode: JudgeModeOption = None,
    dry_run: DryRunOption = False,
    prompt_column: PromptColumnOption = "prompt",
    s3_endpoint: S3EndpointOption = None,
    overwrite: OverwriteOption = False,
    local_ray_cpus: LocalRayCpusOption = None,
) -> None:
    """Label prompts for router training: the weak and the strong model answer (or the
    input's weak_response/strong_response are used), an LLM judge compares the answers, and
    every row gets strong_score, weak_score and winner. With `backends:` in the config, every
    listed model answers and the judge grades each answer alone: one row per prompt and model
    (prompt, model, score), for an N-model router. Prints the cost estimate first."""
    from batch_jobs.judge import JUDGE_MODES
    from batch_jobs.label import run
    from batch_jobs.label_config import LabelConfig

    try:
        settings = LabelConfig.from_yaml(config)
    except (OSError, ValueError) as exc:
        fail(exc)
    if judge_mode is not None:
        if judge_mode not in JUDGE_MODES:
            fail(f"--judge-mode takes one of {', '.join(JUDGE_MODES)}, got {judge_mode!r}")
        settings = settings.model_copy(update={"judge_mode": judge_mode})
    if not dry_run:  # a dry run reads footers and a few rows, here; it needs no cluster
        init_ray(local_ray_cpus)
    try:
        summary = run(
            input,
            output,
            settings,
            sample=sample,
            seed=seed,
            prompt_column=prompt_column,
            s3_endpoint=s3_endpoint,
            overwrite=overwrite,
            dry_run=dry_run,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(json.dumps(summary, indent=2))
    estimate = summary["estimated_cost_usd"]
    if dry_run:
        typer.echo(
            f"\ndry run: labelling would cost about ${estimate['total_usd']:.4f} "
            f"({estimate['rows']} rows, {estimate['judge_calls']} judge calls, "
            f"{_answers_to_write(estimate)} answers to write); no model was called"
        )
        return
    cost = summary["cost_usd"]
    typer.echo(
        f"\n{_labelled(summary)}\n"
        f"cost ${cost['total']:.4f} (answers ${cost['answers']:.4f}, judge "
        f"${cost['judge']:.4f}) against an estimate of ${estimate['total_usd']:.4f}\n"
        f"results: {output}"
    )


def _labelled(summary: dict[str, Any]) -> str:
    """What a label run labelled: per model for N-model labels (one row per prompt and
    model), else the two-model winners."""
    if "models" in summary:
        means = ", ".join(
            f"{m} {v['mean_score']:.3f}" if v["mean_score"] is not None else f"{m} -"
            for m, v in summary["models"].items()
        )
        return (
            f"labelled {summary['labeled']} of {summary['rows']} (prompt, model) pairs of "
            f"{summary['prompts']} prompts (single, judge {summary['judge']}); mean score: "
            f"{means}; {summary['errors']} pairs have an error"
        )
    winners = summary["winners"]
    return (
        f"labelled {summary['labeled']} of {summary['rows']} rows ({summary['judge_mode']}): "
        f"strong {winners['strong']}, weak {winners['weak']}, tie {winners['tie']}; "
        f"{summary['errors']} rows have an error"
    )


def _answers_to_write(estimate: dict[str, Any]) -> int:
    if "answers" in estimate:  # N-model labelling
        return estimate["answers"]
    return estimate["weak_answers"] + estimate["strong_answers"]
