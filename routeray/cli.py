"""The `routeray` command line: the one package that imports routers, serve_app and batch_jobs.

Every option is defined once in routeray.options; a cluster runs the same commands
(`ray job submit -- routeray batch route ...`).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer

from routeray.batch_cli import batch_app
from routeray.corpus_cli import corpus
from routeray.demo_cli import demo_app
from routeray.options import (
    CACHE_DIR,
    SHARED_DATA,
    CorpusOption,
    CostWeightOption,
    EmbedderOption,
    EmbeddingCacheOption,
    EvalDirOption,
    ExtraDataOption,
    ExtraWeightOption,
    KindOption,
    LoadOptionOption,
    MarginOption,
    NoEmbeddingCacheOption,
    NoSharedDataOption,
    ParamOption,
    PricesOption,
    PromptColumnOption,
    RouterOption,
    RoutersOption,
    S3EndpointOption,
    SeedOption,
    SourceOption,
    TrainDirOption,
    choice_rule,
    embedding_cache,
    fail,
    key_values,
    setup_reporting,
)
from routeray.serve_cli import serve
from routeray.simulate_cli import simulate

app = typer.Typer(
    help="Learned LLM routing (RouteLLM) on Ray: train, evaluate, score and route prompts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(batch_app, name="batch")
app.add_typer(demo_app, name="demo")
app.command()(corpus)
app.command()(serve)
app.command()(simulate)

CALIBRATION_PROMPTS = 2000
# Cross-fitting retrains the recipe that learns from labels: the shipped default distils this
# router's scores, which a benchmark's own labels cannot change.
CROSS_FIT_ROUTER = "minilm"
RANDOM_BASELINE = "random"


def _version(show: bool) -> None:
    if show:
        try:
            typer.echo(f"routeray {version('routeray')}")
        except PackageNotFoundError:
            typer.echo("routeray (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Report debugging detail too.")] = False,
) -> None:
    setup_reporting(verbose)


def _load(router: str, load_option: list[str] | None):
    """A router by shipped name or directory, with its load options; failures exit 2."""
    from routers import load_router
    from routers.shipped import router_path

    options = key_values(load_option, "--load-option")
    try:
        return router_path(router), load_router(router_path(router), **options)
    except ValueError as exc:  # CheckpointError and OptionError are ValueErrors
        fail(exc)


def _read_parquet(uri: str, s3_endpoint: str | None) -> tuple[str, Any]:
    """A Parquet file or directory (local or S3) as one Arrow table, named after the file or
    directory; failures exit 2."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_jobs.storage import list_parquet, locate

    try:
        location = locate(uri, s3_endpoint)
        files = list_parquet(location)
        if not files:
            fail(f"no Parquet files under {uri}")
        tables = [pq.read_table(f.path, filesystem=f.fs) for f in files]
        name = Path(location.path.rstrip("/")).stem
        return name, pa.concat_tables(tables, promote_options="permissive")
    except (OSError, ValueError, pa.ArrowException) as exc:
        fail(exc)


def _read_labelled(
    uri: str, s3_endpoint: str | None, prompt_column: str = "prompt"
) -> tuple[str, Any]:
    """A user's labelled Parquet (file or directory, local or S3) in the user-label schema,
    named after the file or directory; failures exit 2."""
    import pyarrow as pa

    from routers.data.user_labels import read_user_labels, read_user_outcomes

    name, table = _read_parquet(uri, s3_endpoint)
    try:
        frame = table.to_pandas()
        if prompt_column != "prompt" and prompt_column in frame.columns:
            frame = frame.drop(columns=["prompt"], errors="ignore")
            frame = frame.rename(columns={prompt_column: "prompt"})
        # Labels of many models (`batch label` with `backends:`): one row per prompt and model.
        if {"model", "score"} <= set(frame.columns):
            return name, read_user_outcomes(frame, name)
        return name, read_user_labels(frame, name)
    except (ValueError, pa.ArrowException) as exc:
        fail(exc)


def _read_corpus(uri: str, s3_endpoint: str | None, prompt_column: str) -> list[str]:
    """The non-empty prompts of a Parquet file or directory (local or S3); failures exit 2."""
    import pyarrow as pa

    _, table = _read_parquet(uri, s3_endpoint)
    if prompt_column not in table.column_names:
        fail(f"{uri} has no column {prompt_column!r}")
    column = table.column(prompt_column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        fail(f"{uri}: column {prompt_column!r} holds {column.type}, not text")
    return [p for p in column.to_pylist() if p and p.strip()]


@app.command()
def train(
    kind: KindOption = "mf",
    train_dir: TrainDirOption = SHARED_DATA / "train",
    eval_dir: EvalDirOption = SHARED_DATA / "eval",
    output: Annotated[Path, typer.Option(help="Router directory to write.")] = Path("out/router"),
    seed: SeedOption = 0,
    embedder: EmbedderOption = None,
    strong_pct: Annotated[
        float, typer.Option(help="Strong share the recorded default threshold aims at.")
    ] = 0.5,
    param: ParamOption = None,
    extra_data: ExtraDataOption = None,
    extra_weight: ExtraWeightOption = 1.0,
    corpus: CorpusOption = None,
    no_shared_data: NoSharedDataOption = False,
    source: SourceOption = None,
    prompt_column: PromptColumnOption = "prompt",
    s3_endpoint: S3EndpointOption = None,
    embedding_cache_dir: EmbeddingCacheOption = CACHE_DIR,
    no_embedding_cache: NoEmbeddingCacheOption = False,
) -> None:
    """Train a router of KIND on the shared training sources and/or your own labelled data, and
    save it as a directory."""
    from routers import OptionError, router_class, save_router
    from routers.data.tables import GOLDEN_PREFIX, training_table
    from routers.evaluation.calibration import threshold_for_strong_share
    from routers.protocol import is_multi

    options = key_values(param, "--param")
    try:
        cls = router_class(kind)
        if embedder:
            options["embedder"] = {"model_path": embedder}
        if corpus:
            options["corpus"] = corpus
        cls.check_train_options(options)
    except (OptionError, ValueError) as exc:
        fail(exc)
    if no_shared_data and not extra_data:
        fail("--no-shared-data leaves nothing to train on: give --extra-data")
    benchmarks: Path | None = eval_dir
    if not eval_dir.is_dir():
        if not no_shared_data:
            fail(f"eval dir {eval_dir} not found: training is always decontaminated against it")
        # Only the user's own labels: the project's benchmarks are not there to protect.
        benchmarks = None
    extra = [_read_labelled(uri, s3_endpoint, prompt_column) for uri in extra_data or []]
    corpus_prompts: dict[str, Any] = {}
    if corpus:
        import pandas as pd

        from routers.data.sources import decontaminate

        read = [(uri, _read_corpus(uri, s3_endpoint, prompt_column)) for uri in corpus]
        files = {uri: len(prompts) for uri, prompts in read}
        frame = pd.DataFrame({"prompt": [p for _, ps in read for p in ps], "source": "corpus"})
        kept = decontaminate(frame, benchmarks, rows="corpus prompts")["prompt"].tolist()
        if not kept:
            fail("--corpus: no prompt is left after decontamination")
        options["corpus"] = kept
        corpus_prompts = {"files": files, "kept": len(kept)}
    with embedding_cache(embedding_cache_dir, no_embedding_cache):
        try:
            table = training_table(
                cls,
                None if no_shared_data else train_dir,
                benchmarks,
                seed=seed,
                extra=extra,
                extra_weight=extra_weight,
                sources=source,
            )
        except (FileNotFoundError, ValueError) as exc:
            fail(exc)
        trained = cls.train(table, seed=seed, **options)
        if is_multi(trained):
            _save_multi(trained, output, table, extra, train_dir, no_shared_data, seed, options)
            return
        prompts = table["prompt"].drop_duplicates()
        # Scoring every training prompt is minutes for a fine-tuned LLM; a fixed sample sets a
        # threshold for a share just as well.
        prompts = prompts.sample(min(len(prompts), CALIBRATION_PROMPTS), random_state=seed)
        threshold = threshold_for_strong_share(trained.score(prompts.tolist()), strong_pct)
        checks, licences, excluded = {}, {}, {}
        if not no_shared_data:
            from routers.data.prompt_labels import licences_of, transfer_checks
            from routers.evaluation.transfer import apgr_by_source

            licences = licences_of(table, train_dir)
            held_back = transfer_checks(train_dir, benchmarks)
            checks = apgr_by_source(trained, held_back)
            excluded = {
                source: "share-alike licence: a check of transfer, never trained on"
                for source in checks
            }
            for source, apgr in checks.items():
                typer.echo(f"transfer check {source}: APGR {apgr:.3f} (never trained on)")
    metadata = {
        "default_threshold": threshold,
        "calibration": {
            "strong_pct": strong_pct,
            "prompts": "unique training prompts (a seeded sample)",
            "n": len(prompts),
        },
        "training": {
            "data_dir": None if no_shared_data else str(train_dir),
            "extra_data": {name: len(labels) for name, labels in extra},
            "extra_weight": extra_weight,
            "table": cls.trains_on,
            "rows": len(table),
            "seed": seed,
            # The corpus by where it came from, not its prompts.
            "options": {**options, **({"corpus": corpus_prompts} if corpus else {})},
            "sources": table["source"].value_counts().to_dict(),
            "licences": {
                **licences,
                **{f"{GOLDEN_PREFIX}{name}": "your own data (--extra-data)" for name, _ in extra},
            },
            "not_trained_on": excluded,
        },
        "transfer_checks": checks,
    }
    save_router(trained, output, metadata)
    typer.echo(
        f"saved {kind} router to {output} (default threshold {threshold:.4f} "
        f"for {strong_pct:.0%} strong calls on the training prompts)"
    )


def _save_multi(
    trained: Any,
    output: Path,
    table: Any,
    extra: list[tuple[str, Any]],
    train_dir: Path,
    no_shared_data: bool,
    seed: int,
    options: dict[str, Any],
) -> None:
    """An N-model router has no threshold: the decision rule and prices choose per request."""
    from routers import save_router
    from routers.data.prompt_labels import licences_of
    from routers.data.tables import GOLDEN_PREFIX

    licences = {} if no_shared_data else licences_of(table, train_dir)
    metadata = {
        "training": {
            "data_dir": None if no_shared_data else str(train_dir),
            "extra_data": {name: len(labels) for name, labels in extra},
            "licences": {
                **licences,
                **{f"{GOLDEN_PREFIX}{name}": "your own data (--extra-data)" for name, _ in extra},
            },
            "table": trained.trains_on,
            "rows": len(table),
            "seed": seed,
            "options": options,
            "sources": table["source"].value_counts().to_dict(),
        },
    }
    save_router(trained, output, metadata)
    typer.echo(
        f"saved multi router to {output}: {len(trained.models)} models with labels "
        f"({', '.join(trained.models[:5])}{', ...' if len(trained.models) > 5 else ''})"
    )


@app.command()
def calibrate(
    input: Annotated[
        list[Path] | None,
        typer.Option(help="Parquet file of prompts; repeatable (their prompts together)."),
    ] = None,
    router: RouterOption = "default",
    strong_pct: Annotated[
        float, typer.Option(help="Share of strong calls, 0..1 (with --write: the default).")
    ] = 0.3,
    prompt_column: PromptColumnOption = "prompt",
    load_option: LoadOptionOption = None,
    unique_prompts: Annotated[
        bool,
        typer.Option(
            "--unique-prompts",
            help="Count each distinct prompt once (inputs holding a prompt per model answer).",
        ),
    ] = False,
    fit_probability: Annotated[
        bool,
        typer.Option(
            "--fit-probability",
            help="First fit the curve that makes scores P(strong wins), on the labelled "
            "sources in --train-dir that the router did not train on.",
        ),
    ] = False,
    train_dir: TrainDirOption = SHARED_DATA / "train",
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Record in the router directory: the probability curve (--fit-probability) "
            "and the thresholds for every 1 % strong share of INPUT, the default at STRONG_PCT.",
        ),
    ] = False,
    embedding_cache_dir: EmbeddingCacheOption = CACHE_DIR,
    no_embedding_cache: NoEmbeddingCacheOption = False,
) -> None:
    """Print the threshold that sends STRONG_PCT of INPUT's prompts to the strong model;
    --fit-probability and --write calibrate a router directory (docs: README, "What a score
    means")."""
    import numpy as np
    import pyarrow.parquet as pq

    from routers import prompt_error
    from routers.checkpoint import update_config
    from routers.evaluation.calibration import share_thresholds, thresholds_for_shares

    if not input and not fit_probability:
        fail("give --input (prompts to calibrate a threshold on) or --fit-probability")
    if write and not input:
        fail(
            "--write records thresholds as well as the curve, and they need --input: "
            "thresholds recorded before a new curve would be in the old scores' units"
        )
    if not 0.0 <= strong_pct <= 1.0:
        fail(f"--strong-pct must be a fraction in [0, 1], got {strong_pct}")
    path, loaded = _load(router, load_option)
    curve = None
    with embedding_cache(embedding_cache_dir, no_embedding_cache):
        if fit_probability:
            loaded, curve = _fit_probability(loaded, path, train_dir)
        if not input:
            return
        prompts: list[Any] = []
        try:
            for source in input:
                prompts += pq.read_table(source, columns=[prompt_column]).column(0).to_pylist()
        except (KeyError, OSError, ValueError) as exc:
            fail(exc)
        if unique_prompts:
            prompts = list(dict.fromkeys(prompts))
        usable = [p for p in prompts if prompt_error(p) is None]
        if not usable:
            fail("none of the prompts given is usable")
        scores = loaded.score(usable)
    threshold = float(thresholds_for_shares(scores, [strong_pct])[0])
    typer.echo(
        f"threshold {threshold:.6f} sends {strong_pct:.1%} of {len(usable)} prompts "
        f"to the strong model ({len(prompts) - len(usable)} unusable rows ignored)"
    )
    if write:
        metadata = {
            "default_threshold": threshold,
            "share_thresholds": share_thresholds(scores),
            "calibration": {
                "prompts": [str(p) for p in input],
                "prompt_column": prompt_column,
                "unique_prompts": unique_prompts,
                "n": len(usable),
                "strong_pct": strong_pct,
                "share_thresholds": "every 1 % from 1 % to 99 %",
                "scores": "probabilities" if _is_calibrated(loaded) else "raw",
            },
        }
        try:
            update_config(path, probability=curve, metadata=metadata)
        except (OSError, ValueError) as exc:
            fail(exc)
        mean = float(np.mean(scores))
        typer.echo(
            f"recorded in {path}: thresholds for 1-99 % strong, default {threshold:.6f} for "
            f"{strong_pct:.0%}; mean score on these prompts {mean:.3f}"
            + (f"; a probability curve of {len(curve.raw)} knots" if curve else "")
        )
    # Full precision: a rounded threshold can land above the k-th score and miss the share.
    typer.echo(repr(threshold))


def _is_calibrated(router: Any) -> bool:
    from routers.decision.probability import probability_curve

    return probability_curve(router) is not None


def _fit_probability(loaded: Any, path: Path, train_dir: Path) -> tuple[Any, Any]:
    """The router with a probability curve fitted on the labelled sources of `train_dir` that
    it did not train on, and the curve; prints each source's held-out calibration."""
    from routers.decision.probability import CalibratedRouter, uncalibrated
    from routers.evaluation.calibration import (
        calibration_labels,
        expected_calibration_error,
        fit_probability,
        leave_one_source_out,
        trained_sources,
    )

    raw_router = uncalibrated(loaded)
    try:
        labels = calibration_labels(train_dir, None, trained_sources(path))
        raw = raw_router.score(labels["prompt"].tolist())
        curve = fit_probability(raw, labels, {"train_dir": str(train_dir)})
        held_out = leave_one_source_out(raw, labels) if labels["source"].nunique() > 1 else None
    except (OSError, ValueError) as exc:
        fail(exc)
    typer.echo(f"probability curve: {len(curve.raw)} knots, fitted on {len(labels)} prompts")
    if held_out is not None:
        wins = labels["win"].to_numpy()
        for source, rows in labels.groupby("source").indices.items():
            ece = expected_calibration_error(held_out[rows], wins[rows])
            typer.echo(
                f"  {source}: {len(rows)} prompts, win rate {wins[rows].mean():.3f}, "
                f"held-out mean p {held_out[rows].mean():.3f}, ECE {ece:.3f}"
            )
        ece = expected_calibration_error(held_out, wins)
        typer.echo(f"  all, each source held out: ECE {ece:.3f}")
    return CalibratedRouter(raw_router, curve), curve


@app.command()
def score(
    input: Annotated[Path, typer.Option(help="Parquet file to score.")],
    output: Annotated[Path, typer.Option(help="Parquet file to write.")],
    router: RouterOption = "default",
    prompt_column: PromptColumnOption = "prompt",
    batch_rows: Annotated[int, typer.Option(help="Rows read and scored at a time.")] = 4096,
    load_option: LoadOptionOption = None,
) -> None:
    """Write INPUT's columns plus `strong_win_rate` (and `error` for unusable prompts); for an
    N-model router, one `quality:<model>` column per model instead, in the router's order
    (`--load-option models=[a, b, c]` narrows and reorders it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routers import score_table
    from routers.progress import progress
    from routers.prompts import ERROR_COLUMN, quality_table
    from routers.protocol import is_multi

    _, loaded = _load(router, load_option)
    scorer = quality_table if is_multi(loaded) else score_table
    try:
        source = pq.ParquetFile(input)
    except OSError as exc:
        fail(exc)
    if prompt_column not in source.schema_arrow.names:
        fail(
            f"{input} has no column {prompt_column!r}; columns: "
            f"{', '.join(source.schema_arrow.names)}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    rows = bad = 0
    writer = None
    bar = progress(None, "scoring", total=source.metadata.num_rows, unit="row")
    try:
        for batch in source.iter_batches(batch_size=batch_rows):
            scored = scorer(loaded, pa.Table.from_batches([batch]), prompt_column)
            bad += scored.num_rows - scored.column(ERROR_COLUMN).null_count
            rows += scored.num_rows
            if writer is None:
                writer = pq.ParquetWriter(partial, scored.schema)
            writer.write_table(scored)
            bar.update(scored.num_rows)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if writer is None:
        fail(f"{input} has no rows")
    # Only a complete file ever carries the output name.
    partial.replace(output)
    typer.echo(
        f"scored {rows} rows into {output}; {bad} rows had an unusable prompt "
        f"(null score, reason in `{ERROR_COLUMN}`)"
    )


@app.command("eval")
def evaluate(
    benchmark: Annotated[
        str | None, typer.Option(help="mt-bench, mmlu or gsm8k (or give --data).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Your own labelled Parquet instead of a benchmark (file or directory, local or "
            "s3://; schema: README, 'Your own labels')."
        ),
    ] = None,
    router: RoutersOption = None,
    eval_dir: EvalDirOption = SHARED_DATA / "eval",
    output: Annotated[Path, typer.Option(help="Directory for metrics.json and the plot.")] = Path(
        "out/eval"
    ),
    cross_fit: Annotated[
        int,
        typer.Option(
            help="Also train KIND K times on the training data plus K-1 folds of these labels, "
            "each scoring its held-out fold (0: off)."
        ),
    ] = 0,
    kind: Annotated[
        str | None, typer.Option(help="Router kind for --cross-fit (default: shipped minilm's).")
    ] = None,
    train_dir: TrainDirOption = SHARED_DATA / "train",
    no_shared_data: NoSharedDataOption = False,
    source: SourceOption = None,
    seed: SeedOption = 0,
    param: ParamOption = None,
    load_option: LoadOptionOption = None,
    prompt_column: PromptColumnOption = "prompt",
    s3_endpoint: S3EndpointOption = None,
    embedding_cache_dir: EmbeddingCacheOption = CACHE_DIR,
    no_embedding_cache: NoEmbeddingCacheOption = False,
    prices: PricesOption = None,
    cost_weight: CostWeightOption = None,
    margin: MarginOption = None,
) -> None:
    """Cost-quality curves, APGR and CPT on a benchmark or on your own labelled prompts, as the
    paper computes them. Routers are shipped names, directories, or `random` (the paper's
    baseline, averaged over 10 runs). With --data a labelled outcome table (prompt, model,
    score) and N-model routers: each router's AIQ against the zero router's and the oracle's,
    priced by --prices (and its point at --cost-weight or --margin)."""
    from routeray.eval_multi import evaluate_multi, is_outcome_table
    from routers.evaluation.benchmarks import load_benchmark
    from routers.evaluation.metrics import evaluate_random, evaluate_scores, oracle_curve
    from routers.evaluation.plots import plot_curves

    if (benchmark is None) == (data is None):
        fail("give exactly one of --benchmark and --data")
    options = key_values(param, "--param")
    names = router or ["default"]
    if data is not None and is_outcome_table(data, s3_endpoint, prompt_column):
        if cross_fit:
            fail("--cross-fit takes two-model labels, not an N-model outcome table")
        rule = choice_rule(cost_weight, margin)
        with embedding_cache(embedding_cache_dir, no_embedding_cache):
            evaluate_multi(
                data, names, load_option, prices, rule, output, prompt_column, s3_endpoint
            )
        return
    with embedding_cache(embedding_cache_dir, no_embedding_cache):
        if data is not None:
            title, df = _read_labelled(data, s3_endpoint, prompt_column)
            typer.echo(f"{title}: {len(df)} labelled prompts from {data}")
        else:
            title = benchmark
            try:
                df = load_benchmark(benchmark, eval_dir)
            except (ValueError, FileNotFoundError) as exc:
                fail(exc)
            typer.echo(
                f"{benchmark}: {len(df)} prompts ({df.attrs['contaminated_dropped']} "
                "contaminated prompts left out)"
            )
        weak, strong = df["weak_score"].to_numpy(), df["strong_score"].to_numpy()
        curves, metrics = {}, {}
        for name in names:
            if name == RANDOM_BASELINE:
                curve, result = evaluate_random(weak, strong)
            else:
                path, loaded = _load(name, load_option)
                label = name if name == "default" else Path(name).name
                # Two directories with one base name would overwrite each other's results.
                name = str(path) if label in curves else label
                curve, result = evaluate_scores(loaded.score(df["prompt"].tolist()), weak, strong)
            curves[name], metrics[name] = curve, result.to_dict()
        if cross_fit:
            shared = None if no_shared_data else train_dir
            benchmarks = eval_dir if eval_dir.is_dir() else None
            if shared is not None and benchmarks is None:
                fail(f"eval dir {eval_dir} not found: training is always decontaminated against it")
            name, scores = _cross_fit(
                title,
                df,
                cross_fit,
                kind,
                shared,
                benchmarks,
                seed,
                options,
                data is not None,
                source,
            )
            curve, result = evaluate_scores(scores, weak, strong)
            curves[name], metrics[name] = curve, result.to_dict()
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot = output / f"{title}.png"
    oracle = oracle_curve(weak, strong)
    plot_curves(curves, weak.mean(), strong.mean(), oracle, f"{title}: cost vs quality", plot)
    _print_metrics(metrics, _weak_to_strong_cost(df["prompt"].tolist()))
    typer.echo(f"wrote {output / 'metrics.json'} and {plot}")


def _print_metrics(metrics: dict[str, dict[str, float]], ratio: float) -> None:
    from routers.evaluation.metrics import cost_saving

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


def _weak_to_strong_cost(prompts: list[str]) -> float:
    from routers import Prices, estimate_tokens

    prices = Prices()
    tokens = estimate_tokens(prompts)
    return float(prices.weak.cost(tokens).mean() / prices.strong.cost(tokens).mean())


def _cross_fit(
    name: str,
    df: Any,
    folds: int,
    kind: str | None,
    train_dir: Path | None,
    eval_dir: Path | None,
    seed: int,
    options: dict[str, Any],
    users: bool,
    sources: list[str] | None = None,
) -> tuple[str, Any]:
    """Scores of `df` from K routers, each trained on the shared data (unless `train_dir` is
    None) plus the other folds of `df`'s labels; a user's own set is also kept out of the
    shared training rows, as the benchmarks are."""
    from routers import read_config, router_class
    from routers.data.tables import training_table
    from routers.evaluation.cross_fit import cross_fit_scores
    from routers.shipped import router_path

    kind = kind or str(read_config(router_path(CROSS_FIT_ROUTER))["router"])
    try:
        cls = router_class(kind)
        cls.check_train_options(options)
        exclude = df["prompt"].tolist() if users else []
        if train_dir is None:
            training = None
        else:
            training = training_table(
                cls, train_dir, eval_dir, seed=seed, exclude_prompts=exclude, sources=sources
            )
        scores = cross_fit_scores(cls, df, name, training, folds=folds, seed=seed, **options)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    shared = f"{train_dir} plus " if train_dir is not None else ""
    typer.echo(
        f"cross-fit: {kind} trained {folds} times on {shared}{folds - 1}/{folds} of "
        f"{name}'s labels; every prompt scored by the router that did not see it"
    )
    return f"{kind} cross-fit {folds}", scores


@app.command()
def ratings(
    train_dir: TrainDirOption = SHARED_DATA / "train",
    eval_dir: EvalDirOption = SHARED_DATA / "eval",
    n_tiers: Annotated[int, typer.Option("--tiers", help="Number of tiers.")] = 10,
    top: Annotated[int, typer.Option(help="Show this many models (0: all).")] = 0,
) -> None:
    """Bradley-Terry (Elo) ratings of every model in the battles, grouped into tiers."""
    from routers.data.battles import load_battles
    from routers.data.ratings import bradley_terry, tiers

    try:
        battles = load_battles(train_dir, eval_dir)
    except FileNotFoundError as exc:
        fail(exc)
    rated = bradley_terry(battles)
    grouped = tiers(rated, n_tiers)
    games = (
        battles["model_a"]
        .value_counts()
        .add(battles["model_b"].value_counts(), fill_value=0)
        .astype(int)
        .to_dict()
    )
    typer.echo(f"{'tier':>4}  {'rating':>7}  {'battles':>7}  model")
    for model in rated.index[: top or None]:
        typer.echo(f"{grouped[model]:>4}  {rated[model]:>7.1f}  {games[model]:>7}  {model}")


@app.command()
def distill(
    output: Annotated[Path, typer.Option(help="Directory to write the static model to.")] = Path(
        "out/static-embedder"
    ),
    embedder: EmbedderOption = None,
    dims: Annotated[int, typer.Option(help="Dimensions kept (PCA) per token vector.")] = 256,
) -> None:
    """Distil a static embedder (one vector per token, model2vec) from a sentence-transformers
    EMBEDDER; `train --embedder OUTPUT` then trains a router that needs no transformer pass."""
    from routers.text.embedders import DEFAULT_MODEL_NAME, default_model_path
    from routers.text.static import distill_static

    source = embedder or default_model_path()
    if not Path(source).is_dir():
        fail(f"--embedder {source} is not a local sentence-transformers model directory")
    name = Path(source).name if embedder else DEFAULT_MODEL_NAME
    distill_static(source, output, dims, source_name=name)
    typer.echo(f"saved a {dims}-dimension static embedder distilled from {name} to {output}")


@app.command("routers")
def list_routers() -> None:
    """List the router kinds that `train --kind` accepts and the shipped routers `--router`
    can name."""
    from routers import ROUTERS
    from routers.checkpoint import read_config
    from routers.shipped import SHIPPED

    typer.echo("kinds:   " + ", ".join(sorted(ROUTERS)))
    typer.echo("shipped: " + ", ".join(f"{name} ({path})" for name, path in SHIPPED.items()))
    for name, path in SHIPPED.items():
        # An N-model router's models are what `--load-option models=[...]` may name.
        trained = read_config(path)["config"].get("trained_models")
        if trained:
            typer.echo(f"{name} knows {len(trained)} models: {', '.join(trained)}")
