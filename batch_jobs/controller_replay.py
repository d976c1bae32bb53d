"""`simulate --controller`: historical traffic replayed through the share controller.

The traffic, scored once per router by the simulate job, is put in arrival order (by its
`timestamp` column where every usable row has one, else in file order spread evenly over
`replay_hours`) and fed to `routers.decision.share_control.ShareController`, the same code the
online endpoint runs, `batch` requests per report. Written next to the sweep: `controller.json`
(per router: totals and a timeline), `controller.csv` (the timeline, one row per router and
time bucket) and `controller.png` (share and spend over time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from batch_jobs.inputs import ROW_COLUMN, SOURCE_COLUMN
from routers.decision.share_control import ShareController, ShareTarget, replay

BUCKETS = 48  # timeline rows per replay: half-hourly over a day


def arrival_order(
    good: pd.DataFrame, replay_hours: float
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(row order, seconds since the first request in that order, the seconds the replay
    spans, how the times were got)."""
    if "timestamp" in good:
        stamps = pd.to_datetime(good["timestamp"], utc=True, errors="coerce")
        if len(stamps) and stamps.notna().all():
            seconds = (stamps - stamps.min()).dt.total_seconds().to_numpy()
            order = np.argsort(seconds, kind="stable")
            span = float(seconds.max()) if len(seconds) else 0.0
            return order, seconds[order], span, "timestamp column"
    keys = [c for c in (SOURCE_COLUMN, ROW_COLUMN) if c in good]
    order = good.sort_values(keys, kind="stable").index.to_numpy() if keys else np.arange(len(good))
    n = len(order)
    times = np.arange(n) * (replay_hours * 3600.0 / max(n, 1))
    return order, times, replay_hours * 3600.0, f"file order, spread evenly over {replay_hours:g} h"


def controller_replay(
    good: pd.DataFrame,
    router_names: list[str],
    cost_strong: np.ndarray,
    cost_weak: np.ndarray,
    target: ShareTarget,
    *,
    replay_hours: float = 24.0,
    batch: int = 1,
    initial_thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Replay the usable rows of a scored traffic frame through one controller per router:
    {"summary": per router totals and timeline, "timeline": the same as one DataFrame}."""
    order, times, span, timing = arrival_order(good, replay_hours)
    costs = np.stack([cost_strong, cost_weak], axis=1)[order]
    width = max(span / BUCKETS, 1e-9)
    bucket = np.minimum((times / width).astype(np.int64), BUCKETS - 1)
    summary: dict[str, Any] = {"target": target.model_dump(exclude_none=True), "timing": timing}
    frames = []
    for name in router_names:
        scores = good[f"score:{name}"].to_numpy(dtype=float)[order]
        initial = (initial_thresholds or {}).get(name)
        controller = ShareController(target, initial_threshold=initial)
        out = replay(controller, scores, times, costs, batch=batch)
        timeline = _timeline(out, bucket, width)
        timeline.insert(0, "router", name)
        frames.append(timeline)
        hours = span / 3600.0
        summary[name] = {
            "requests": len(scores),
            "initial_threshold": initial,
            "strong_share": float(out["strong"].mean()) if len(scores) else None,
            "spend": float(np.nansum(out["cost"])),
            "hours": hours,
            "spend_per_hour": float(np.nansum(out["cost"]) / hours) if hours > 0 else None,
            "final": controller.snapshot(),
            "timeline": timeline.drop(columns="router").to_dict("records"),
        }
    return {"summary": summary, "timeline": pd.concat(frames, ignore_index=True)}


def _timeline(out: dict[str, np.ndarray], bucket: np.ndarray, width: float) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "bucket": bucket,
            "strong": out["strong"],
            "cost": out["cost"],
            "threshold": out["threshold"],
            "target_share": out["target_share"],
        }
    )
    groups = frame.groupby("bucket", sort=True)
    timeline = pd.DataFrame(
        {
            "start_hour": groups["bucket"].first() * width / 3600.0,
            "requests": groups.size(),
            "strong_share": groups["strong"].mean(),
            "spend": groups["cost"].sum(),
            "threshold": groups["threshold"].last(),
            "target_share": groups["target_share"].last(),
        }
    ).reset_index(drop=True)
    timeline["spend_per_hour"] = timeline["spend"] / (width / 3600.0)
    return timeline


def write_controller_report(output: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, timeline = result["summary"], result["timeline"]
    (output / "controller.json").write_text(json.dumps(summary, indent=2) + "\n")
    timeline.to_csv(output / "controller.csv", index=False)
    target = summary["target"]
    fig, (share_ax, spend_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, group in timeline.groupby("router", sort=False):
        share_ax.plot(group["start_hour"], group["strong_share"], marker=".", label=name)
        spend_ax.plot(group["start_hour"], group["spend_per_hour"], marker=".", label=name)
    if "strong_share" in target:
        share_ax.axhline(target["strong_share"], color="k", ls="--", lw=1, label="target")
    if "spend_usd_per_hour" in target:
        spend_ax.axhline(target["spend_usd_per_hour"], color="k", ls="--", lw=1, label="target")
    share_ax.set_ylabel("strong share")
    spend_ax.set_ylabel("spend (USD/hour)")
    spend_ax.set_xlabel(f"hours ({summary['timing']})")
    for ax in (share_ax, spend_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(output / "controller.png", dpi=120)
    plt.close(fig)


def load_target(spec: str) -> ShareTarget:
    """A `--controller` value: a YAML file holding a ShareTarget, or its fields inline as
    KEY=VALUE pairs separated by commas (`strong_share=0.3`, `spend_usd_per_hour=2,window=500`)."""
    import yaml

    path = Path(spec)
    try:
        if "=" not in spec and path.exists():
            return ShareTarget.model_validate(yaml.safe_load(path.read_text()) or {})
        fields: dict[str, Any] = {}
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(
                    f"--controller takes a YAML file or KEY=VALUE[,KEY=VALUE], got {item!r}"
                )
            fields[key.strip()] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        # A clear error for the command line, not a parser's traceback.
        raise ValueError(f"--controller {spec!r} is not valid YAML: {exc}") from None
    return ShareTarget.model_validate(fields)
