"""The `routeray` command line: the one package that imports routers, serve_app and batch_jobs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

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

CALIBRATION_PROMPTS = 2000

CacheOption = Annotated[
    Path, typer.Option(help="Directory caching prompt embeddings between runs.")
]
NoCacheOption = Annotated[
    bool, typer.Option("--no-embedding-cache", help="Embed every prompt afresh.")
]


def _cache(cache: Path, disabled: bool):
    from routers.text.embedders import embedding_cache

    return embedding_cache(None if disabled else cache)


ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="Training option KEY=VALUE passed to the router's `train` (repeatable; the value "
        "is read as YAML, so 2, 0.1, true and [64, 128] keep their types).",
    ),
]


def _params(items: list[str] | None) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--param takes KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            # YAML 1.1 reads 5e-5 (no dot) as a string; a learning rate is what was meant.
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        params[key.strip()] = parsed
    return params


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
    param: ParamOption = None,
    embedding_cache: CacheOption = CACHE_DIR,
    no_embedding_cache: NoCacheOption = False,
) -> None:
    """Train a router on the training sources in DATA_DIR and save it as a directory."""
    from routers.checkpoint import save_router
    from routers.data.tables import load_training_table
    from routers.evaluation.calibration import threshold_for_strong_share
    from routers.registry import router_class

    options = _params(param)
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
            table = load_training_table(cls, data_dir, eval_dir, seed=seed)
        except FileNotFoundError as exc:
            raise _fail(str(exc)) from exc
        if embedder:
            options["embedder"] = {"model_path": embedder}
        try:
            trained = cls.train(table, seed=seed, **options)
        except TypeError as exc:
            raise _fail(f"router {router!r} does not take these options: {exc}") from exc
        prompts = table["prompt"].drop_duplicates()
        # Scoring every training prompt is minutes for a fine-tuned LLM; a fixed sample sets a
        # threshold for a share just as well.
        prompts = prompts.sample(min(len(prompts), CALIBRATION_PROMPTS), random_state=seed)
        threshold = threshold_for_strong_share(trained.score(prompts.tolist()), strong_pct)
        metadata = {
            "default_threshold": threshold,
            "calibration": {
                "strong_pct": strong_pct,
                "prompts": "unique training prompts (a seeded sample)",
                "n": len(prompts),
            },
            "training": {
                "data_dir": str(data_dir),
                "table": cls.trains_on,
                "rows": len(table),
                "seed": seed,
                "options": options,
                "sources": table["source"].value_counts().to_dict(),
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

    from routers.checkpoint import CheckpointError, load_router
    from routers.evaluation.calibration import threshold_for_strong_share
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
    cross_fit: Annotated[
        int,
        typer.Option(
            help="Also train ROUTER_KIND K times on the training data plus K-1 folds of this "
            "benchmark's own labels, each scoring its held-out fold (0: off)."
        ),
    ] = 0,
    router_kind: Annotated[
        str | None, typer.Option(help="Router kind for --cross-fit (default: the shipped one's).")
    ] = None,
    train_dir: Annotated[
        Path, typer.Option(help="Training data for --cross-fit (../shared/data/train).")
    ] = Path("../shared/data/train"),
    seed: Annotated[int, typer.Option(help="Seed of the --cross-fit folds and training.")] = 0,
    param: ParamOption = None,
    embedding_cache: CacheOption = CACHE_DIR,
    no_embedding_cache: NoCacheOption = False,
) -> None:
    """Cost-quality curves, APGR and CPT on a benchmark, as the paper computes them."""
    from routers.checkpoint import CheckpointError, default_router_dir, load_router
    from routers.evaluation.benchmarks import load_benchmark
    from routers.evaluation.metrics import (
        cost_saving,
        evaluate_random,
        evaluate_scores,
        oracle_curve,
    )
    from routers.evaluation.plots import plot_curves

    options = _params(param)
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
        if cross_fit:
            name, scores = _cross_fit(
                benchmark, df, cross_fit, router_kind, train_dir, data_dir, seed, options
            )
            curve, result = evaluate_scores(scores, weak, strong)
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
        ratio = _weak_to_strong_cost(df["prompt"].tolist())
        typer.echo(
            f"{'router':<24}{'APGR':>8}{'CPT20':>9}{'CPT50':>9}{'CPT80':>9}{'AUC':>9}"
            f"{'strong@95%':>12}{'saving@95%':>12}"
        )
        for name, m in metrics.items():
            saving = cost_saving(m["strong_at_95"], ratio)
            typer.echo(
                f"{name:<24}{m['apgr']:>8.3f}{m['cpt20']:>8.2f}%{m['cpt50']:>8.2f}%"
                f"{m['cpt80']:>8.2f}%{m['auc']:>9.4f}{m['strong_at_95']:>11.2f}%{saving:>11.1%}"
            )
        typer.echo(
            "strong@95%: strong calls needed to reach 95 % of the strong model's quality; "
            f"saving@95%: the all-strong bill saved there (a weak request costs {ratio:.3f} of "
            "a strong one at the default prices, estimated tokens)"
        )
        typer.echo(f"wrote {output / 'metrics.json'} and {plot}")


def _weak_to_strong_cost(prompts: list[str]) -> float:
    from routers.prices import Prices, estimate_tokens

    prices = Prices()
    tokens = estimate_tokens(prompts)
    return float(prices.weak.cost(tokens).mean() / prices.strong.cost(tokens).mean())


def _cross_fit(
    benchmark: str,
    df,
    folds: int,
    kind: str | None,
    train_dir: Path,
    eval_dir: Path,
    seed: int,
    options: dict[str, Any],
):
    from routers.checkpoint import default_router_dir, read_config
    from routers.data.tables import load_training_table
    from routers.evaluation.cross_fit import cross_fit_scores
    from routers.registry import router_class

    kind = kind or str(read_config(default_router_dir())["router"])
    try:
        cls = router_class(kind)
        training = load_training_table(cls, train_dir, eval_dir, seed=seed)
        scores = cross_fit_scores(cls, df, benchmark, training, folds=folds, seed=seed, **options)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"cross-fit: {kind} trained {folds} times on {train_dir} plus {folds - 1}/{folds} of "
        f"{benchmark}'s labels; every prompt scored by the router that did not see it"
    )
    return f"{kind} cross-fit {folds}", scores


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
    from routers.data.battles import load_battles
    from routers.data.ratings import bradley_terry, tiers

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
