"""Ray Data job: what routers would have saved and cost on historical traffic.

Scores every prompt once per router on Ray Data, then sweeps thresholds on the driver with one
sort and cumulative sums (routers.evaluation.simulation). Writes `summary.json`, `curve.parquet`,
`report.md` and `cost_quality.png` into the output directory; with a share controller target,
also its replay over time (batch_jobs.controller_replay). An N-model router's frontier on a
labelled outcome table is batch_jobs.simulate_multi's.

    routeray simulate --input traffic/ --prices prices.yaml --output sim/ [--router DIR ...]
    ray job submit -- routeray simulate --input ... --prices ... --output ...
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from batch_jobs.controller_replay import controller_replay, write_controller_report
from batch_jobs.inputs import (
    READ_CPUS,
    ROW_COLUMN,
    SOURCE_COLUMN,
    inspect_inputs,
    read_units,
    work_units,
)
from batch_jobs.route import DEFAULT_BATCH_SIZE, actor_layout, call_size
from batch_jobs.simulate_multi import load_if_multi, run_multi
from batch_jobs.storage import Location, locate
from routers import cap_threads
from routers.checkpoint import load_router
from routers.decision.share_control import ShareTarget
from routers.evaluation.calibration import thresholds_for_shares
from routers.evaluation.simulation import (
    CurvePoint,
    pareto_front,
    quality_labels,
    recommend,
    sweep,
    thresholds_for,
)
from routers.prices import Prices
from routers.prompts import SCORE_COLUMN, score_table
from routers.shipped import SHIPPED, router_path
from routers.thresholds import (
    ThresholdError,
    recorded_share_thresholds,
    recorded_threshold,
    threshold_for_share,
)

LABEL_COLUMNS = ("strong_score", "weak_score", "winner")
# The file and row of each prompt ride along so a controller replay can keep file order.
CARRIED = (
    "input_tokens", "output_tokens", "timestamp", *LABEL_COLUMNS, SOURCE_COLUMN, ROW_COLUMN
)  # fmt: skip


def _router_name(spec: str, taken: set[str]) -> str:
    name = spec if spec in SHIPPED else Path(spec).name
    while name in taken:
        name += "'"
    taken.add(name)
    return name


class ScoreRouters:
    """Ray Data actor: every router's score for each prompt, its input tokens (counted with a
    tokenizer when the traffic has none), and only the columns the simulation needs."""

    def __init__(
        self,
        routers: dict[str, str],
        prompt_column: str,
        tokenizer: str | None,
        threads: int,
        load_options: dict[str, Any] | None = None,
    ) -> None:
        cap_threads(threads)
        options = load_options or {}
        self.routers = {name: load_router(path, **options) for name, path in routers.items()}
        self.prompt_column = prompt_column
        self.tokenizer_path = tokenizer
        self._tokenizer: Any = None

    def _count_tokens(self, prompts: list[Any]) -> pa.Array:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from routers.text.embedders import default_model_path
            from routers.text.hf import offline

            offline()
            self._tokenizer = AutoTokenizer.from_pretrained(
                self.tokenizer_path or default_model_path()
            )
            # Counting, not encoding for the model: long prompts are fine (and not warned about).
            self._tokenizer.model_max_length = 1 << 30
        texts = [p if isinstance(p, str) else "" for p in prompts]
        ids = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return pa.array([len(x) for x in ids], pa.int64())

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, Any] = {}
        error = None
        for name, router in self.routers.items():
            scored = score_table(router, batch, self.prompt_column)
            out[f"score:{name}"] = scored.column(SCORE_COLUMN)
            error = scored.column("error")
        out["error"] = error
        for column in CARRIED:
            if column in batch.column_names:
                out[column] = batch.column(column)
        if "input_tokens" not in out:
            out["input_tokens"] = self._count_tokens(batch.column(self.prompt_column).to_pylist())
        return pa.table(out)


def score_traffic(
    source: Location,
    routers: dict[str, str],
    prompt_column: str,
    tokenizer: str | None,
    batch_size: int,
    num_actors: int | None,
    load_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    import ray

    files = inspect_inputs(source, prompt_column)
    # Scores are collected, not written: only the read tasks need room beside the actors.
    actors, cpus, threads = actor_layout(num_actors, None, 0.0, reserved_cpus=READ_CPUS)
    scored = read_units(source.fs, work_units(files)).map_batches(
        ScoreRouters,
        fn_constructor_args=(routers, prompt_column, tokenizer, threads, load_options),
        batch_size=call_size(batch_size, files, actors),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
    )
    tables = [ray.get(ref) for ref in scored.to_arrow_refs()]
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def request_costs(good: pd.DataFrame, prices: Prices) -> tuple[np.ndarray, np.ndarray]:
    """Each usable request's cost (USD) on the strong and on the weak model: its input tokens,
    and its output tokens where the traffic records them, else each model's mean."""
    n = len(good)
    tokens_in = good["input_tokens"].fillna(0).to_numpy(dtype=float)
    if "output_tokens" in good and good["output_tokens"].notna().any():
        observed = good["output_tokens"].to_numpy(dtype=float)
        out_strong = np.where(np.isnan(observed), prices.strong.mean_output_tokens, observed)
        out_weak = np.where(np.isnan(observed), prices.weak.mean_output_tokens, observed)
    else:
        out_strong = np.full(n, prices.strong.mean_output_tokens)
        out_weak = np.full(n, prices.weak.mean_output_tokens)
    return prices.strong.cost(tokens_in, out_strong), prices.weak.cost(tokens_in, out_weak)


def simulate_frame(
    frame: pd.DataFrame,
    router_names: list[str],
    prices: Prices,
    *,
    thresholds: int = 100,
    strong_pct_grid: list[float] | None = None,
    budget: float | None = None,
    quality_target: float | None = None,
    default_thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The sweep over a scored traffic frame: summary dict plus the curve as a DataFrame."""
    bad = frame["error"].notna().to_numpy()
    good = frame.loc[~bad].reset_index(drop=True)
    cost_strong, cost_weak = request_costs(good, prices)

    def column(name: str) -> np.ndarray | None:
        return good[name].to_numpy() if name in good else None

    rows: list[dict[str, Any]] = []
    points: list[tuple[str, CurvePoint]] = []
    for name in router_names:
        scores = good[f"score:{name}"].to_numpy(dtype=float)
        if strong_pct_grid:
            grid = thresholds_for_shares(scores, strong_pct_grid)
        else:
            grid = thresholds_for(scores, thresholds)
        q_strong, q_weak, estimate = quality_labels(
            scores,
            strong_score=column("strong_score"),
            weak_score=column("weak_score"),
            winner=column("winner"),
        )
        for point in sweep(scores, grid, cost_strong, cost_weak, q_strong, q_weak, estimate):
            points.append((name, point))
            rows.append({"router": name, **point.as_dict()})
    curve = pd.DataFrame(rows)
    if len(curve):
        curve["pareto"] = pareto_front(curve["cost"].to_numpy(), curve["quality"].to_numpy())
    summary: dict[str, Any] = {
        "rows": len(frame),
        "bad_rows": int(bad.sum()),
        "bad_row_reasons": frame.loc[bad, "error"].value_counts().to_dict(),
        "all_strong_cost": float(cost_strong.sum()),
        "all_weak_cost": float(cost_weak.sum()),
        "quality_is_estimate": bool(curve["quality_is_estimate"].any()) if len(curve) else True,
        "curve": {
            name: [
                {k: v for k, v in row.items() if k != "router"}
                for row in curve[curve["router"] == name].to_dict("records")
            ]
            for name in router_names
        },
    }
    if budget is not None or quality_target is not None:
        choice = recommend(points, budget=budget, quality_target=quality_target)
        summary["recommendation"] = None
        if choice is not None:
            summary["recommendation"] = {"router": choice[0], **choice[1].as_dict()}
        summary["recommendation_for"] = {"budget": budget, "quality_target": quality_target}
    # Day by day at the recommended point, else at the first router's recorded threshold.
    at = None
    if summary.get("recommendation"):
        at = (summary["recommendation"]["router"], summary["recommendation"]["threshold"])
    elif default_thresholds and router_names[0] in default_thresholds:
        at = (router_names[0], default_thresholds[router_names[0]])
    if at is not None and "timestamp" in good:
        strong = good[f"score:{at[0]}"].to_numpy(dtype=float) >= at[1]
        summary["daily_at"] = {"router": at[0], "threshold": at[1]}
        summary["daily"] = daily_breakdown(good["timestamp"], strong, cost_strong, cost_weak)
    return {"summary": summary, "curve": curve}


def daily_breakdown(
    timestamps: pd.Series, strong: np.ndarray, cost_strong: np.ndarray, cost_weak: np.ndarray
) -> list[dict[str, Any]]:
    days = pd.to_datetime(timestamps, utc=True, errors="coerce").dt.strftime("%Y-%m-%d")
    frame = pd.DataFrame(
        {
            "day": days.fillna("unknown"),
            "strong": strong,
            "cost": np.where(strong, cost_strong, cost_weak),
            "all_strong": cost_strong,
        }
    )
    out = []
    for day, group in frame.groupby("day", sort=True):
        all_strong = float(group["all_strong"].sum())
        out.append(
            {
                "day": day,
                "requests": len(group),
                "strong_share": float(group["strong"].mean()),
                "cost": float(group["cost"].sum()),
                "all_strong_cost": all_strong,
                "saving": 1.0 - float(group["cost"].sum()) / all_strong if all_strong else 0.0,
            }
        )
    return out


def write_report(output: Path, summary: dict[str, Any], curve: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, group in curve.groupby("router", sort=False):
        ax.plot(group["cost"], group["quality"], marker=".", label=name)
    front = curve[curve["pareto"]].sort_values("cost")
    ax.plot(front["cost"], front["quality"], "k--", lw=1, label="Pareto front")
    rec = summary.get("recommendation")
    if rec:
        ax.scatter([rec["cost"]], [rec["quality"]], s=120, facecolors="none", edgecolors="red",
                   label="recommended", zorder=5)  # fmt: skip
    estimate = " (estimated from router scores)" if summary["quality_is_estimate"] else ""
    ax.set_xlabel("total cost (USD)")
    ax.set_ylabel(f"quality{estimate}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output / "cost_quality.png", dpi=120)
    plt.close(fig)

    lines = [
        "# Routing simulation",
        "",
        f"{summary['rows']} requests ({summary['bad_rows']} unusable, left out). All strong: "
        f"${summary['all_strong_cost']:.2f}; all weak: ${summary['all_weak_cost']:.2f}.",
        "",
        f"Quality{estimate}: mean quality of the answers served.",
        "",
        "![cost against quality](cost_quality.png)",
        "",
    ]
    if "recommendation" in summary:
        if rec:
            lines += [
                "## Recommendation",
                "",
                f"Router `{rec['router']}` at threshold {rec['threshold']:.4f}: "
                f"{rec['strong_share']:.1%} strong, ${rec['cost']:.2f} "
                f"({rec['saving']:.1%} saved against all-strong), quality "
                f"{rec['quality']:.4f} ({rec['quality_vs_strong']:.1%} of all-strong).",
                "",
            ]
        else:
            lines += ["## Recommendation", "", "No threshold meets the budget or target.", ""]
    lines += [
        "## Pareto front",
        "",
        "| router | threshold | strong share | cost | saving | quality |",
        "|---|---|---|---|---|---|",
    ]
    for row in curve[curve["pareto"]].sort_values("cost").itertuples():
        lines.append(
            f"| {row.router} | {row.threshold:.4f} | {row.strong_share:.1%} | "
            f"${row.cost:.2f} | {row.saving:.1%} | {row.quality:.4f} |"
        )
    if summary.get("daily"):
        at = summary["daily_at"]
        lines += ["", f"## Per day: `{at['router']}` at threshold {at['threshold']:.4f}", ""]
        lines += ["| day | requests | strong share | cost | saving |", "|---|---|---|---|---|"]
        for day in summary["daily"]:
            lines.append(
                f"| {day['day']} | {day['requests']} | {day['strong_share']:.1%} | "
                f"${day['cost']:.2f} | {day['saving']:.1%} |"
            )
    (output / "report.md").write_text("\n".join(lines) + "\n")


def run(
    input_path: str,
    output_dir: str,
    *,
    prices: Prices,
    routers: list[str] | None = None,
    load_options: dict[str, Any] | None = None,
    thresholds: int = 100,
    strong_pct_grid: list[float] | None = None,
    budget: float | None = None,
    quality_target: float | None = None,
    prompt_column: str = "prompt",
    tokenizer: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_actors: int | None = None,
    s3_endpoint: str | None = None,
    controller: ShareTarget | None = None,
    replay_hours: float = 24.0,
    controller_batch: int = 1,
) -> dict[str, Any]:
    if budget is not None and quality_target is not None:
        raise ValueError("give either --budget or --quality-target, not both")
    specs = routers or ["default"]
    multi = [load_if_multi(str(router_path(spec)), load_options) for spec in specs]
    if any(m is not None for m in multi):
        # An N-model router's frontier is judged on labelled outcomes, not on thresholds.
        if len(specs) > 1:
            raise ValueError("an N-model router is simulated alone: give one --router")
        if budget is not None or quality_target is not None or controller is not None:
            raise ValueError(
                "--budget, --quality-target and --controller are for two-model routers"
            )
        return run_multi(
            input_path,
            output_dir,
            router_path=str(router_path(specs[0])),
            prices=prices,
            load_options=load_options,
            prompt_column=prompt_column,
            batch_size=batch_size,
            num_actors=num_actors,
            s3_endpoint=s3_endpoint,
            router_models=list(multi[0].models),
        )
    taken: set[str] = set()
    named = {_router_name(spec, taken): str(router_path(spec)) for spec in specs}
    recorded = {name: recorded_threshold(path) for name, path in named.items()}
    frame = score_traffic(
        locate(input_path, s3_endpoint),
        named,
        prompt_column,
        tokenizer,
        batch_size,
        num_actors,
        load_options,
    )
    result = simulate_frame(
        frame,
        list(named),
        prices,
        thresholds=thresholds,
        strong_pct_grid=strong_pct_grid,
        budget=budget,
        quality_target=quality_target,
        default_thresholds={name: t for name, t in recorded.items() if t is not None},
    )
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary, curve = result["summary"], result["curve"]
    if controller is not None:
        good = frame.loc[frame["error"].isna()].reset_index(drop=True)
        replayed = controller_replay(
            good,
            list(named),
            *request_costs(good, prices),
            controller,
            replay_hours=replay_hours,
            batch=controller_batch,
            initial_thresholds=_initial_thresholds(named, controller),
        )
        write_controller_report(output, replayed)
        # The totals; the timeline is in controller.json and controller.csv.
        summary["controller"] = {
            k: v if not isinstance(v, dict) else {n: x for n, x in v.items() if n != "timeline"}
            for k, v in replayed["summary"].items()
        }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    curve.to_parquet(output / "curve.parquet", index=False)
    write_report(output, summary, curve)
    return summary


def _initial_thresholds(named: dict[str, str], target: ShareTarget) -> dict[str, float]:
    """Where the router records a threshold for the target share, the controller starts there
    (it is what `router-NAME-30pct` would route at); else it starts from the first scores."""
    if target.initial_threshold is not None or target.strong_share is None:
        return {}
    out = {}
    for name, path in named.items():
        with contextlib.suppress(ThresholdError):
            out[name] = threshold_for_share(
                recorded_share_thresholds(path), target.strong_share, path
            )
    return out
