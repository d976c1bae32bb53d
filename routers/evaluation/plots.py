"""Cost-quality curves as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from routers.evaluation.metrics import Curve

if TYPE_CHECKING:
    from routers.evaluation.multi_model import MultiModelReport


def plot_curves(
    curves: dict[str, Curve],
    weak_mean: float,
    strong_mean: float,
    oracle: Curve,
    title: str,
    path: str | Path,
) -> None:
    import matplotlib

    # Agg so plotting works on servers and CI without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot(c.strong_fraction * 100, c.quality, marker="o", markersize=4, label=name)
    ax.plot(oracle.strong_fraction * 100, oracle.quality, ":", color="gray", label="oracle")
    ax.axhline(weak_mean, linestyle="--", color="tab:red", label="weak model")
    ax.axhline(strong_mean, linestyle="--", color="tab:green", label="strong model")
    ax.set(xlabel="strong model calls (%)", ylabel="quality", title=title, xlim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(report: MultiModelReport, title: str, path: str | Path) -> None:
    """An N-model router's cost-quality frontier (routers.evaluation.multi_model): every
    model alone, the zero router's hull, the oracle's and the router's swept rules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve, style, colour in (("oracle", ":", "gray"), ("router", "-", "tab:blue")):
        points = getattr(report, curve).sort_values("cost")
        aiq = getattr(report, f"{curve}_aiq")
        ax.plot(points["cost"], points["quality"], style, marker=".", color=colour,
                label=f"{curve} (AIQ {aiq:.3f})")  # fmt: skip
    zero = report.zero_router
    ax.plot(zero["cost"], zero["quality"], "--", color="tab:red",
            label=f"zero router (AIQ {report.zero_router_aiq:.3f})")  # fmt: skip
    ax.scatter(report.single["cost"], report.single["quality"], color="black", zorder=5)
    for row in report.single.itertuples():
        ax.annotate(str(row.model), (row.cost, row.quality), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")  # fmt: skip
    # Prices span orders of magnitude; a free model (cost 0) keeps the axis linear.
    log = bool((report.single["cost"] > 0).all())
    if log:
        ax.set_xscale("log")
    xlabel = "mean cost per prompt (USD" + (", log scale)" if log else ")")
    ax.set(xlabel=xlabel, ylabel="mean quality", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
