"""The command line's one vocabulary: every option is defined here once, so it means the same
thing in every command that takes it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

# Where routeray keeps what it can rebuild: embedding caches, the demo's tiny model.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "routeray"
SHARED_DATA = Path("../shared/data")

RouterOption = Annotated[
    str,
    typer.Option(
        "--router",
        help="Router: a shipped name (default) or a router directory.",
        show_default=True,
    ),
]
RoutersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--router",
        "--routers",
        help="Router: a shipped name (default) or a router directory; repeat for more.",
    ),
]
EmbedderOption = Annotated[
    str | None,
    typer.Option(
        help="Embedder: a sentence-transformers or a static (model2vec) model directory "
        "(default: the shipped MiniLM)."
    ),
]
KindOption = Annotated[str, typer.Option(help="Router kind to train (see `routeray routers`).")]
LoadOptionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--load-option",
        help="Load-time option KEY=VALUE of the router's kind, e.g. strong_model=gpt-4-0613 "
        "(repeatable; the value is read as YAML).",
    ),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="Training option KEY=VALUE passed to the router kind's `train` (repeatable; the "
        "value is read as YAML, so 2, 0.1, true and [64, 128] keep their types).",
    ),
]
PromptColumnOption = Annotated[str, typer.Option(help="Column holding the prompt text.")]
ThresholdOption = Annotated[
    float | None,
    typer.Option(help="Route to the strong model when score >= this (default: the router's)."),
]
StrongPctOption = Annotated[
    float | None,
    typer.Option(help="Calibrate the threshold that sends this share (0..1) to the strong model."),
]
CostWeightOption = Annotated[
    float | None,
    typer.Option(
        "--cost-weight",
        help="N-model routers: send each prompt to argmax quality - COST_WEIGHT x cost (quality "
        "points per US dollar; 0: the best model, large: the cheapest).",
        min=0.0,
    ),
]
MarginOption = Annotated[
    float | None,
    typer.Option(
        "--margin",
        help="N-model routers: send each prompt to the cheapest model predicted within MARGIN "
        "quality points of the best (default 0.05; 0: the best model, 1: the cheapest).",
        min=0.0,
        max=1.0,
    ),
]


def choice_rule(cost_weight: float | None, margin: float | None) -> Any:
    """The N-model decision rule (routers.decision.choice.ChoiceRule) the options give."""
    from routers.decision.choice import ChoiceRule

    if cost_weight is not None and margin is not None:
        raise typer.BadParameter("give --cost-weight or --margin, not both")
    return ChoiceRule(cost_weight=cost_weight, margin=margin)


SeedOption = Annotated[int, typer.Option(help="Seed: the same seed gives the same result.")]
TrainDirOption = Annotated[Path, typer.Option(help="Training data (../shared/data/train).")]
ExtraDataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--extra-data",
        help="Your own labelled Parquet (file or directory, local or s3://) to train on as well "
        "(schema: README, 'Your own labels'); repeatable.",
    ),
]
CorpusOption = Annotated[
    list[str] | None,
    typer.Option(
        "--corpus",
        help="Unlabelled prompts (Parquet file or directory, local or s3://, read from "
        "--prompt-column) a `distilled` router learns its teacher's scores on; repeatable.",
    ),
]
ExtraWeightOption = Annotated[
    float, typer.Option(help="Weight of each --extra-data row against a shared training row.")
]
SourceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        help="Train only on this shared training source (a name as the router card lists it: "
        "mmlu_pro, arena_hard, alpaca_eval or an outcome table's file name); repeatable. "
        "Default: every source.",
    ),
]
NoSharedDataOption = Annotated[
    bool,
    typer.Option("--no-shared-data", help="Leave out the shared training sources (--train-dir)."),
]
EvalDirOption = Annotated[
    Path,
    typer.Option(
        help="Eval data (../shared/data/eval); training prompts equal to one are dropped."
    ),
]
PricesOption = Annotated[
    Path | None, typer.Option(help="prices.yaml: USD per million tokens per model.")
]
S3EndpointOption = Annotated[
    str | None,
    typer.Option(help="S3 endpoint URL (default: AWS, or $AWS_ENDPOINT_URL_S3/$AWS_ENDPOINT_URL)."),
]
OverwriteOption = Annotated[
    bool, typer.Option(help="Discard earlier results in --output instead of resuming.")
]
LocalRayCpusOption = Annotated[
    int | None,
    typer.Option(help="CPUs for a Ray started here (ignored when joining a cluster)."),
]
EmbeddingCacheOption = Annotated[
    Path,
    typer.Option("--embedding-cache", help="Directory caching prompt embeddings between runs."),
]
NoEmbeddingCacheOption = Annotated[
    bool, typer.Option("--no-embedding-cache", help="Embed every prompt afresh.")
]


def fail(message: str | BaseException) -> NoReturn:
    """Exit 2 with the message on stderr: the CLI's one way to refuse."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    """`KEY=VALUE` items as a dict, each value read as YAML."""
    import yaml

    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{option} takes KEY=VALUE, got {item!r}")
        loaded = yaml.safe_load(value)
        if isinstance(loaded, str):
            # YAML 1.1 reads 5e-5 (no dot) as a string; a number is what was meant.
            with contextlib.suppress(ValueError):
                loaded = float(loaded)
        parsed[key.strip()] = loaded
    return parsed


def embedding_cache(cache: Path, disabled: bool) -> contextlib.AbstractContextManager[None]:
    from routers.text.embedders import embedding_cache as cache_block

    return cache_block(None if disabled else cache)


def init_ray(local_cpus: int | None) -> None:
    import ray

    if not ray.is_initialized():
        # Inside `ray job submit` RAY_ADDRESS points at the cluster and this joins it.
        ray.init(num_cpus=local_cpus, include_dashboard=False, ignore_reinit_error=True)


OUR_PACKAGES = ("routers", "backends", "batch_jobs", "serve_app", "routeray")


class _Stderr(logging.Handler):
    """Writes each record to whatever sys.stderr is at the time (a test runner swaps it),
    through tqdm so that a line logged under a progress bar does not break the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_reporting(verbose: bool = False) -> None:
    """The library reports through `logging` and draws progress bars only when asked; a
    command line shows both. Only our packages' loggers are set, so Ray's and the other
    libraries' logging stays as they configure it."""
    from routers.progress import enable_progress

    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in OUR_PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, _Stderr)]
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False
    enable_progress(True)


# `batch label`
SampleRowsOption = Annotated[
    int | None,
    typer.Option(
        "--sample",
        min=1,
        help="Take a reproducible sample of this many rows, spread across the input's files "
        "(with --seed; default: every row).",
    ),
]
JudgeModeOption = Annotated[
    str | None,
    typer.Option(
        help="pairwise: the two answers compared, asked in both orders; single: each answer "
        "graded 1-10 (default: the config's judge_mode, else pairwise).",
    ),
]
DryRunOption = Annotated[
    bool, typer.Option(help="Print the cost estimate and stop before any model is called.")
]
