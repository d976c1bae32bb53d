"""Cost-quality curves as a picture."""

from __future__ import annotations

from pathlib import Path

from routers.evaluation.metrics import Curve


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
