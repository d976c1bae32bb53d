"""`routeray eval` on a labelled outcome table (`prompt, model, score` [+ `id`]): each N-model
router's AIQ against the zero router's and the oracle's (routers.evaluation.multi_model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from routeray.options import fail, key_values

OUTCOME_COLUMNS = {"prompt", "model", "score"}


def is_outcome_table(uri: str, s3_endpoint: str | None, prompt_column: str = "prompt") -> bool:
    """Whether the Parquet at `uri` is a long outcome table (read from its schema alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_jobs.storage import list_parquet, locate

    try:
        files = list_parquet(locate(uri, s3_endpoint))
        names = set(pq.read_schema(files[0].path, filesystem=files[0].fs).names) if files else set()
    except (OSError, ValueError, pa.ArrowException) as exc:
        fail(exc)
    if prompt_column in names:
        names.add("prompt")
    return names >= OUTCOME_COLUMNS


def evaluate_multi(
    data: str,
    routers: list[str],
    load_option: list[str] | None,
    prices: Path | None,
    rule: Any,
    output: Path,
    prompt_column: str,
    s3_endpoint: str | None,
) -> None:
    """Judge every router in `routers` (each must be an N-model router) on the table; write
    metrics.json and one cost-quality plot per router into `output`."""
    from batch_jobs.simulate_multi import read_outcomes
    from routeray.simulate_cli import print_aiq
    from routers import Prices, load_router
    from routers.evaluation.multi_model import judge_table
    from routers.evaluation.plots import plot_frontier
    from routers.protocol import is_multi
    from routers.shipped import SHIPPED, router_path

    if prices is None:
        fail(
            "an N-model eval needs --prices prices.yaml, with a price for each model under "
            "`models:` (USD per million tokens)"
        )
    options = key_values(load_option, "--load-option")
    try:
        price_table = Prices.from_yaml(prices)
        table = read_outcomes(data, s3_endpoint, prompt_column)
    except (OSError, ValueError) as exc:
        fail(exc)
    title = Path(data.rstrip("/")).stem
    output.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    for spec in routers:
        try:
            router = load_router(router_path(spec), **options)
        except ValueError as exc:
            fail(exc)
        if not is_multi(router):
            fail(
                f"router {spec!r} chooses between two models; {data} is an N-model outcome "
                "table (prompt, model, score): give an N-model router (`--router multi`)"
            )
        name = spec if spec in SHIPPED else Path(spec).name
        name = spec if name in metrics else name
        try:
            report, left_out = judge_table(
                table, list(router.models), router.qualities, price_table, rule=rule
            )
        except ValueError as exc:
            fail(exc)
        metrics[name] = {**report.as_dict(), "left_out": left_out}
        typer.echo(f"{name} on {title}:")
        print_aiq(metrics[name])
        plot = output / (f"{title}.png" if len(routers) == 1 else f"{title}-{Path(name).name}.png")
        plot_frontier(report, f"{title}: {name}, cost vs quality", plot)
        typer.echo(f"plot: {plot}")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    typer.echo(f"wrote {output / 'metrics.json'}")
