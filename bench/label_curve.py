"""How many in-domain labels are enough: cross-fitted APGR against the number of labelled
prompts each fold's router may train on, on MMLU and GSM8K.

For every size n, the benchmark is cut into 5 folds (every copy of a prompt in one fold); each
fold is scored by a router of the shipped kind trained on the shared training data plus n
labelled prompts drawn at random from the other folds (`routeray eval --cross-fit` with a cap
on the labels). Each size is run with several seeds (other folds, other draws); the spread is
the noise. Size 0 is the shipped router itself (trained on the shared data only), "all" is the
plain cross-fit. Prints a table and writes a plot.

    .venv/bin/python -m bench.label_curve [--sizes 100 300 1000 3000] [--seeds 3] \
        [--benchmarks mmlu gsm8k] [--output docs/label_curve.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from routers import load_router, read_config, router_class, router_path
from routers.data.tables import training_table
from routers.evaluation.benchmarks import load_benchmark
from routers.evaluation.cross_fit import cross_fit_scores
from routers.evaluation.metrics import evaluate_scores
from routers.text.embedders import embedding_cache

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmarks", nargs="+", default=["mmlu", "gsm8k"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 300, 1000, 3000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--embedding-cache", default=str(Path.home() / ".cache" / "routeray"))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "label_curve.png")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    kind = str(read_config(router_path("minilm"))["router"])
    cls = router_class(kind)
    results: dict[str, list[dict[str, float]]] = {}
    with embedding_cache(args.embedding_cache):
        shipped = load_router(router_path("minilm"))
        training = training_table(cls, args.data_dir / "train", args.data_dir / "eval")
        for name in args.benchmarks:
            df = load_benchmark(name, args.data_dir / "eval")
            weak, strong = df["weak_score"].to_numpy(), df["strong_score"].to_numpy()
            rows = results.setdefault(name, [])
            apgr = evaluate_scores(shipped.score(df["prompt"].tolist()), weak, strong)[1].apgr
            rows.append({"labels": 0, "mean": apgr, "std": 0.0, "runs": 1, "seconds": 0.0})
            print(f"{name}: {len(df)} prompts; 0 labels (the shipped router): APGR {apgr:.3f}")
            available = int(df["prompt"].nunique() * (args.folds - 1) / args.folds)
            sizes = [n for n in args.sizes if n < available] + [None]
            for size in sizes:
                runs, started = [], time.perf_counter()
                for seed in range(args.seeds):
                    scores = cross_fit_scores(
                        cls, df, name, training, folds=args.folds, seed=seed, labels_per_fold=size
                    )
                    runs.append(evaluate_scores(scores, weak, strong)[1].apgr)
                seconds = (time.perf_counter() - started) / args.seeds
                label = size if size is not None else available
                rows.append(
                    {
                        "labels": label,
                        "all": size is None,
                        "mean": float(np.mean(runs)),
                        "std": float(np.std(runs, ddof=1)) if len(runs) > 1 else 0.0,
                        "runs": len(runs),
                        "seconds": seconds,
                    }
                )
                print(
                    f"{name}: {label:>6} labels{' (all)' if size is None else ''}: APGR "
                    f"{np.mean(runs):.3f} +- {rows[-1]['std']:.3f} over {len(runs)} seeds "
                    f"({', '.join(f'{r:.3f}' for r in runs)}; {seconds:.0f} s per cross-fit)",
                    flush=True,
                )
    print(json.dumps(results, indent=2))
    plot(results, args.output)
    print(f"wrote {args.output}")


def plot(results: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in results.items():
        x = [max(r["labels"], 30) for r in rows]  # 0 labels drawn at the left edge
        y = [r["mean"] for r in rows]
        ax.errorbar(x, y, yerr=[r["std"] for r in rows], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.axhline(0.5, linestyle=":", color="gray", label="random")
    ax.set(
        xlabel="in-domain labelled prompts per router (log; left edge: none)",
        ylabel="cross-fitted APGR",
        title="How many labels are enough (quality_gap, 5 folds)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
