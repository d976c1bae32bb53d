"""The `routeray` command line: the one package that imports routers, serve_app and batch_jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from routeray import CACHE_DIR
from routeray.batch_cli import batch_app
from routeray.serve_cli import serve
from routeray.simulate_cli import simulate

app = typer.Typer(
    help="Learned LLM routing (RouteLLM) on Ray: train, evaluate, score and route prompts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(batch_app, name="batch")
app.command()(serve)
app.command()(simulate)

CacheOption = Annotated[
    Path, typer.Option(help="Directory caching prompt embeddings between runs.")
]
NoCacheOption = Annotated[
    bool, typer.Option("--no-embedding-cache", help="Embed every prompt afresh.")
]


def _cache(cache: Path, disabled: bool):
    from routers.embedders import embedding_cache

    return embedding_cache(None if disabled else cache)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.command()
def train(
    router: Annotated[str, typer.Option(help="Router kind (see `routeray routers`).")] = "mf",
    data_dir: Annotated[Path, typer.Option(help="Training data (../shared/data/train).")] = Path(
        "../shared/data/train"
    ),
    eval_dir: Annotated[
        Path, typer.Option(help="Eval data; training prompts equal to an eval prompt are dropped.")
    ] = Path("../shared/data/eval"),
    output: Annotated[Path, typer.Option(help="Router directory to write.")] = Path("out/router"),
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same router.")] = 0,
    embedder: Annotated[
        str | None, typer.Option(help="sentence-transformers model path (default: MiniLM).")
    ] = None,
    strong_pct: Annotated[
        float, typer.Option(help="Strong share the recorded default threshold aims at.")
    ] = 0.5,
    embedding_cache: CacheOption = CACHE_DIR,
    no_embedding_cache: NoCacheOption = False,
) -> None:
    """Train a router on the battle table built from DATA_DIR and save it as a directory."""
    from routers.calibration import threshold_for_strong_share
    from routers.checkpoint import save_router
    from routers.registry import router_class
    from routers.training_data import load_battles

    with _cache(embedding_cache, no_embedding_cache):
        try:
            cls = router_class(router)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        if not eval_dir.is_dir():
            raise _fail(
                f"eval dir {eval_dir} not found: training is always decontaminated against it"
            )
        try:
            battles = load_battles(data_dir, eval_dir, seed=seed)
        except FileNotFoundError as exc:
            raise _fail(str(exc)) from exc
        options = {"embedder": {"model_path": embedder}} if embedder else {}
        trained = cls.train(battles, seed=seed, **options)
        prompts = battles["prompt"].drop_duplicates().tolist()
        threshold = threshold_for_strong_share(trained.score(prompts), strong_pct)
        metadata = {
            "default_threshold": threshold,
            "calibration": {
                "strong_pct": strong_pct,
                "prompts": "unique training prompts",
                "n": len(prompts),
            },
            "training": {
                "data_dir": str(data_dir),
                "battles": len(battles),
                "seed": seed,
                "sources": battles["source"].value_counts().to_dict(),
            },
        }
        save_router(trained, output, metadata)
        typer.echo(
            f"saved {router} router to {output} (default threshold {threshold:.4f} "
            f"for {strong_pct:.0%} strong calls on the training prompts)"
        )


@app.command()
def calibrate(
    router: Annotated[Path, typer.Option(help="Router directory.")],
    input: Annotated[Path, typer.Option(help="Parquet file of prompts.")],
    strong_pct: Annotated[float, typer.Option(help="Share of strong calls, 0..1.")] = 0.5,
    prompt_column: str = "prompt",
) -> None:
    """Print the threshold that sends STRONG_PCT of INPUT's prompts to the strong model."""
    import pyarrow.parquet as pq

    from routers.calibration import threshold_for_strong_share
    from routers.checkpoint import CheckpointError, load_router
    from routers.prompts import prompt_error

    try:
        loaded = load_router(router)
        prompts = pq.read_table(input, columns=[prompt_column]).column(0).to_pylist()
        good = [p for p in prompts if prompt_error(p) is None]
        threshold = threshold_for_strong_share(loaded.score(good), strong_pct)
    except (CheckpointError, ValueError, KeyError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"threshold {threshold:.6f} sends {strong_pct:.1%} of {len(good)} prompts "
        f"to the strong model ({len(prompts) - len(good)} unusable rows ignored)"
    )
    # Full precision: a rounded threshold can land above the k-th score and miss the share.
    typer.echo(repr(threshold))


@app.command()
def score(
    input: Annotated[Path, typer.Option(help="Parquet file to score.")],
    output: Annotated[Path, typer.Option(help="Parquet file to write.")],
    router: Annotated[
        Path | None, typer.Option(help="Router directory (default: shipped).")
    ] = None,
    prompt_column: str = "prompt",
    batch_rows: Annotated[int, typer.Option(help="Rows read and scored at a time.")] = 4096,
) -> None:
    """Write INPUT's columns plus `strong_win_rate` (and `error` for unusable prompts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routers.checkpoint import CheckpointError, default_router_dir, load_router
    from routers.prompts import ERROR_COLUMN, score_table

    try:
        loaded = load_router(router or default_router_dir())
        source = pq.ParquetFile(input)
    except (CheckpointError, OSError) as exc:
        raise _fail(str(exc)) from exc
    if prompt_column not in source.schema_arrow.names:
        raise _fail(
            f"{input} has no column {prompt_column!r}; columns: "
            f"{', '.join(source.schema_arrow.names)}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    rows = bad = 0
    writer = None
    try:
        for batch in source.iter_batches(batch_size=batch_rows):
            scored = score_table(loaded, pa.Table.from_batches([batch]), prompt_column)
            bad += scored.num_rows - scored.column(ERROR_COLUMN).null_count
            rows += scored.num_rows
            if writer is None:
                writer = pq.ParquetWriter(partial, scored.schema)
            writer.write_table(scored)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise _fail(f"{input} has no rows")
    # Only a complete file ever carries the output name.
    partial.replace(output)
    typer.echo(
        f"scored {rows} rows into {output}; {bad} rows had an unusable prompt "
        f"(null score, reason in `{ERROR_COLUMN}`)"
    )


@app.command("eval", context_settings={"allow_extra_args": True})
def evaluate(
    ctx: typer.Context,
    benchmark: Annotated[str, typer.Option(help="mt-bench, mmlu or gsm8k.")],
    routers: Annotated[
        list[str],
        typer.Option(help="`random`, `default`, or router directories; more may follow."),
    ],
    data_dir: Annotated[Path, typer.Option(help="Eval data (../shared/data/eval).")] = Path(
        "../shared/data/eval"
    ),
    output: Annotated[Path, typer.Option(help="Directory for metrics.json and the plot.")] = Path(
        "out/eval"
    ),
    embedding_cache: CacheOption = CACHE_DIR,
    no_embedding_cache: NoCacheOption = False,
) -> None:
    """Cost-quality curves, APGR and CPT on a benchmark, as the paper computes them."""
    from routers.checkpoint import CheckpointError, default_router_dir, load_router
    from routers.evaluation import (
        evaluate_random,
        evaluate_scores,
        load_benchmark,
        oracle_curve,
        plot_curves,
    )

    with _cache(embedding_cache, no_embedding_cache):
        names = [*routers, *ctx.args]
        try:
            df = load_benchmark(benchmark, data_dir)
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(str(exc)) from exc
        typer.echo(
            f"{benchmark}: {len(df)} prompts ({df.attrs['contaminated_dropped']} "
            "contaminated prompts left out)"
        )
        weak, strong = df["weak_score"].to_numpy(), df["strong_score"].to_numpy()
        curves, metrics = {}, {}
        for name in names:
            if name == "random":
                curve, result = evaluate_random(weak, strong)
            else:
                path = default_router_dir() if name == "default" else Path(name)
                label = "default" if name == "default" else path.name
                # Two directories with one base name would overwrite each other's results.
                label = str(path) if label in curves else label
                try:
                    loaded = load_router(path)
                except CheckpointError as exc:
                    raise _fail(str(exc)) from exc
                curve, result = evaluate_scores(loaded.score(df["prompt"].tolist()), weak, strong)
                name = label
            curves[name], metrics[name] = curve, result.to_dict()
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot = output / f"{benchmark}.png"
        plot_curves(
            curves,
            weak.mean(),
            strong.mean(),
            oracle_curve(weak, strong),
            f"{benchmark}: cost vs quality",
            plot,
        )
        typer.echo(f"{'router':<24}{'APGR':>8}{'CPT20':>9}{'CPT50':>9}{'CPT80':>9}{'AUC':>9}")
        for name, m in metrics.items():
            typer.echo(
                f"{name:<24}{m['apgr']:>8.3f}{m['cpt20']:>8.2f}%{m['cpt50']:>8.2f}%"
                f"{m['cpt80']:>8.2f}%{m['auc']:>9.4f}"
            )
        typer.echo(f"wrote {output / 'metrics.json'} and {plot}")


@app.command()
def ratings(
    data_dir: Annotated[Path, typer.Option(help="Training data (../shared/data/train).")] = Path(
        "../shared/data/train"
    ),
    eval_dir: Annotated[Path, typer.Option(help="Eval data to decontaminate against.")] = Path(
        "../shared/data/eval"
    ),
    n_tiers: Annotated[int, typer.Option("--tiers", help="Number of tiers.")] = 10,
    top: Annotated[int, typer.Option(help="Show this many models (0: all).")] = 0,
) -> None:
    """Bradley-Terry (Elo) ratings of every model in the battles, grouped into tiers."""
    from routers.ratings import bradley_terry, tiers
    from routers.training_data import load_battles

    try:
        battles = load_battles(data_dir, eval_dir)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    rated = bradley_terry(battles)
    grouped = tiers(rated, n_tiers)
    games = _battle_counts(battles)
    typer.echo(f"{'tier':>4}  {'rating':>7}  {'battles':>7}  model")
    for model in rated.index[: top or None]:
        typer.echo(f"{grouped[model]:>4}  {rated[model]:>7.1f}  {games[model]:>7}  {model}")


def _battle_counts(battles) -> dict[str, int]:
    return (
        battles["model_a"]
        .value_counts()
        .add(battles["model_b"].value_counts(), fill_value=0)
        .astype(int)
        .to_dict()
    )


@app.command("routers")
def list_routers() -> None:
    """List the router kinds that `train` accepts."""
    from routers.registry import ROUTERS

    for kind in sorted(ROUTERS):
        typer.echo(kind)
