"""How well a router's scores read as probabilities: reliability tables and ECE per source.

For each router, its raw scores (the kind's own output, before any probability curve) on
every labelled training source and share-alike check. The curve is fitted on the sources the
router never trained on (`routers.evaluation.calibration`); each of those sources is scored
with a curve fitted WITHOUT it (leave one source out). The router's own training sources and
the share-alike checks are scored with the curve fitted on all unseen sources (the router's
raw scores there are in-sample: it trained on those prompts). A win is the strong side's
outcome strictly better than the weak side's.

    python -m bench.calibration --router fast --router minilm [--train-dir DIR] [--bins 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def _table(name: str, predicted: np.ndarray, wins: np.ndarray, bins: int, note: str) -> float:
    from routers.evaluation.calibration import expected_calibration_error, reliability

    ece = expected_calibration_error(predicted, wins, bins)
    print(
        f"\n{name} ({note}): {len(wins)} prompts, win rate {wins.mean():.3f}, "
        f"mean predicted {predicted.mean():.3f}, ECE {ece:.3f}"
    )
    print(reliability(predicted, wins, bins).to_string(index=False, float_format="%.3f"))
    return ece


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", action="append", help="name or directory (default: both)")
    parser.add_argument("--train-dir", type=Path, default=Path("../shared/data/train"))
    parser.add_argument("--bins", type=int, default=10)
    args = parser.parse_args()

    from routeray.options import CACHE_DIR, embedding_cache
    from routers import load_router, router_path
    from routers.data.prompt_labels import load_prompt_labels, transfer_checks
    from routers.decision.probability import uncalibrated, win_labels
    from routers.evaluation.calibration import (
        fit_probability,
        leave_one_source_out,
        trained_sources,
    )

    labels = pd.concat(
        [load_prompt_labels(args.train_dir), transfer_checks(args.train_dir)], ignore_index=True
    )
    labels["win"] = win_labels(labels["weak_q"], labels["strong_q"])
    checks = set(transfer_checks(args.train_dir)["source"])
    summary = []
    with embedding_cache(CACHE_DIR, False):
        for name in args.router or ["fast", "minilm"]:
            directory = router_path(name)
            seen = trained_sources(directory)
            raw = uncalibrated(load_router(directory)).score(labels["prompt"].tolist())
            unseen = ~labels["source"].isin(seen | checks).to_numpy()
            fit_rows = labels[unseen].reset_index(drop=True)
            print(f"\n=== {name}: raw scores {raw.min():.4f}..{raw.max():.4f}; curve fitted on ")
            print(
                "    " + ", ".join(f"{s} {n}" for s, n in fit_rows["source"].value_counts().items())
            )
            held_out = leave_one_source_out(raw[unseen], fit_rows)
            for source in sorted(fit_rows["source"].unique()):
                rows = (fit_rows["source"] == source).to_numpy()
                wins = fit_rows.loc[rows, "win"].to_numpy()
                ece = _table(source, held_out[rows], wins, args.bins, "unseen; curve without it")
                summary.append((name, source, "unseen, leave one source out", rows.sum(), ece))
            wins = fit_rows["win"].to_numpy()
            ece = _table("all unseen sources", held_out, wins, args.bins, "each held out")
            summary.append((name, "all unseen sources", "leave one source out", len(wins), ece))
            curve = fit_probability(raw[unseen], fit_rows)
            print(f"\ncurve on all unseen sources: {len(curve.raw)} knots")
            for source in sorted(set(labels["source"]) - set(fit_rows["source"])):
                rows = (labels["source"] == source).to_numpy()
                note = "share-alike check" if source in checks else "trained on: in-sample"
                ece = _table(
                    source, curve(raw[rows]), labels.loc[rows, "win"].to_numpy(), args.bins, note
                )
                summary.append((name, source, note, rows.sum(), ece))
            raw_order = np.argsort(raw, kind="stable")
            same = np.array_equal(raw_order, np.argsort(curve(raw), kind="stable"))
            print(f"\nranking of all {len(raw)} labelled prompts unchanged by the curve: {same}")
    print("\n=== ECE summary")
    frame = pd.DataFrame(summary, columns=["router", "source", "scored", "prompts", "ECE"])
    print(frame.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
