"""`simulate` for an N-model router: its cost-quality frontier on a labelled outcome table.

The input is a long table (`prompt, model, score` [+ `id`], the format of the outcome tables
in `../shared/data/train`). Its true quality matrix (routers.evaluation.multi_model) is judged
on the models both the table and the router know; every distinct prompt is scored once, by an
actor pool on Ray Data, and the sweep runs on the driver. Writes `summary.json` (AIQs and every
point), `frontier.csv` (every single model, the zero router's hull, the oracle and the router
over the sweep) and `cost_quality.png`.

    routeray simulate --router DIR --input outcomes.parquet --prices prices.yaml --output sim/
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch_jobs.inputs import READ_CPUS
from batch_jobs.route import DEFAULT_BATCH_SIZE, actor_layout
from batch_jobs.storage import list_parquet, locate
from routers import cap_threads, read_config, router_class
from routers.checkpoint import load_router
from routers.evaluation.multi_model import judge_table
from routers.evaluation.plots import plot_frontier
from routers.prices import Prices
from routers.protocol import is_multi

ROW = "__row"


def load_if_multi(path: str, load_options: dict[str, Any] | None = None) -> Any | None:
    """The router at `path` if it predicts N models' qualities, else None; a two-model
    router's kind is recognised from its config alone, without loading it."""
    kind = router_class(str(read_config(path)["router"]))
    if not hasattr(kind, "qualities"):
        return None
    router = load_router(path, **(load_options or {}))
    return router if is_multi(router) else None


def read_outcomes(uri: str, s3_endpoint: str | None, prompt_column: str = "prompt") -> pd.DataFrame:
    """A labelled long table (file or directory, local or S3) as one frame."""
    files = list_parquet(locate(uri, s3_endpoint))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    tables = [pq.read_table(f.path, filesystem=f.fs) for f in files]
    frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    if prompt_column != "prompt" and prompt_column in frame.columns:
        frame = frame.drop(columns=["prompt"], errors="ignore").rename(
            columns={prompt_column: "prompt"}
        )
    return frame


class ScoreQualities:
    """Ray Data actor: every model's predicted quality for each prompt, with its row."""

    def __init__(self, path: str, load_options: dict[str, Any], threads: int) -> None:
        cap_threads(threads)
        self.router = load_router(path, **load_options)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        q = self.router.qualities(batch["prompt"].tolist())
        out = pd.DataFrame(q, columns=[f"q{i}" for i in range(q.shape[1])])
        out[ROW] = batch[ROW].to_numpy()
        return out


def predict_qualities(
    path: str,
    prompts: list[str],
    load_options: dict[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_actors: int | None = None,
) -> np.ndarray:
    """(prompts, router models) predicted qualities, scored on Ray Data, in prompt order."""
    import ray

    actors, cpus, threads = actor_layout(num_actors, None, 0.0, reserved_cpus=READ_CPUS)
    frame = pd.DataFrame({"prompt": prompts, ROW: np.arange(len(prompts))})
    # One block per actor, made on the driver: a repartition would need CPUs for its tasks
    # that the actor pool already holds.
    edges = np.linspace(0, len(frame), actors + 1).astype(int)
    blocks = [frame.iloc[a:b] for a, b in itertools.pairwise(edges) if b > a]
    scored = (
        ray.data.from_pandas(blocks)
        .map_batches(
            ScoreQualities,
            fn_constructor_args=(path, load_options or {}, threads),
            batch_size=max(1, min(batch_size, -(-len(prompts) // actors))),
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus,
        )
        .to_pandas()
    )
    # Blocks come back in whatever order the actors finish them.
    scored = scored.sort_values(ROW)
    return scored.drop(columns=ROW).to_numpy(dtype=np.float64)


def run_multi(
    input_path: str,
    output_dir: str,
    *,
    router_path: str,
    prices: Prices,
    load_options: dict[str, Any] | None = None,
    prompt_column: str = "prompt",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_actors: int | None = None,
    s3_endpoint: str | None = None,
    router_models: list[str] | None = None,
) -> dict[str, Any]:
    """The whole job; `router_models` spares a second load when the caller has the router."""
    table = read_outcomes(input_path, s3_endpoint, prompt_column)
    if router_models is None:
        router_models = list(load_router(router_path, **(load_options or {})).models)

    def predict(prompts: list[str]) -> np.ndarray:
        return predict_qualities(router_path, prompts, load_options, batch_size, num_actors)

    report, left_out = judge_table(table, router_models, predict, prices)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary = {
        "kind": "multi",
        "router": str(router_path),
        "input": input_path,
        **report.as_dict(),
        "left_out": left_out,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report.frontier().to_csv(output / "frontier.csv", index=False)
    plot_frontier(report, f"{Path(router_path).name}: cost vs quality", output / "cost_quality.png")
    return summary
