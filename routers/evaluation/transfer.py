"""A trained router's APGR on labelled prompts it never trained on (`transfer_checks`: the
share-alike rows no shipped router learns from), per source."""

from __future__ import annotations

import pandas as pd

from routers.evaluation.metrics import evaluate_scores
from routers.protocol import Router


def apgr_by_source(router: Router, labels: pd.DataFrame) -> dict[str, float]:
    """APGR of `router`'s scores on each source of a label frame (`weak_q`, `strong_q`)."""
    out = {}
    for source, rows in labels.groupby("source", sort=True):
        scores = router.score(rows["prompt"].tolist())
        out[str(source)] = round(
            evaluate_scores(scores, rows["weak_q"].to_numpy(), rows["strong_q"].to_numpy())[1].apgr,
            4,
        )
    return out
