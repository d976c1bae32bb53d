"""Routers scored on every training source's own labels, as `routeray train` builds them.

For each source in the training directory (the three older ones and every outcome table, each
table's strong and weak classes by `routers.data.outcome_tables`' rule) and each share-alike
transfer check, the APGR of each router's scores with its bootstrap spread, and all the outcome
tables on one curve. A router that trained on a source is scored in-sample there: this says
where a router stands, leave-one-source-out (the router card's "Held out") says how it holds.

    python -m bench.training_sources --router minilm --router fast [--train-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from routers.data.outcome_tables import find_outcome_tables
from routers.data.prompt_labels import load_prompt_labels, transfer_checks
from routers.evaluation.metrics import apgr_spread, evaluate_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", action="append", required=True, help="name or directory")
    parser.add_argument("--train-dir", type=Path, default=Path("../shared/data/train"))
    parser.add_argument("--eval-dir", type=Path, default=Path("../shared/data/eval"))
    args = parser.parse_args()

    from routeray.options import CACHE_DIR, embedding_cache
    from routers import load_router
    from routers.shipped import router_path

    labels = pd.concat(
        [
            load_prompt_labels(args.train_dir, args.eval_dir),
            transfer_checks(args.train_dir, args.eval_dir),
        ],
        ignore_index=True,
    )
    tables = {t.name for t in find_outcome_tables(args.train_dir)}
    weak, strong = labels["weak_q"].to_numpy(float), labels["strong_q"].to_numpy(float)
    groups = labels.groupby("source", sort=True).indices
    groups["outcome tables, one curve"] = np.flatnonzero(labels["source"].isin(tables))
    table: dict[str, dict[str, str]] = {}
    with embedding_cache(CACHE_DIR, False):
        for name in args.router:
            scores = load_router(router_path(name)).score(labels["prompt"].tolist())
            column = {}
            for source, idx in groups.items():
                value = evaluate_scores(scores[idx], weak[idx], strong[idx])[1].apgr
                spread = apgr_spread(scores[idx], weak[idx], strong[idx])
                column[source] = f"{value:.3f} ({spread:.3f})"
            table[name] = column
    sizes = {source: len(idx) for source, idx in groups.items()}
    frame = pd.DataFrame(table)
    frame.insert(0, "prompts", pd.Series(sizes))
    print("APGR (bootstrap sd) per training source")
    print(frame.to_string())


if __name__ == "__main__":
    main()
