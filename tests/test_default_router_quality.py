"""The shipped default router against the floors recorded in docs (CI runs this).

Embeds every kept eval prompt (about 15,400) with the real embedder: the slowest check here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routers.checkpoint import default_router_dir, load_router
from routers.evaluation import evaluate_scores, load_benchmark

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

RECORDED = Path(__file__).resolve().parents[1] / "docs" / "default_router_metrics.json"
# Scores differ across BLAS builds in the last bits; a decile edge may move a prompt or two.
TOLERANCE = 0.01


@pytest.mark.parametrize("benchmark", ["mt-bench", "mmlu", "gsm8k"])
def test_default_router_apgr_does_not_regress(shared_data_dir: Path, benchmark: str):
    recorded = json.loads(RECORDED.read_text())[benchmark]
    df = load_benchmark(benchmark, shared_data_dir / "eval")
    scores = load_router(default_router_dir()).score(df["prompt"].tolist())
    _, metrics = evaluate_scores(scores, df["weak_score"], df["strong_score"])
    assert metrics.apgr >= recorded["apgr"] - TOLERANCE, (
        f"{benchmark}: APGR {metrics.apgr:.4f} fell below the recorded {recorded['apgr']:.4f}"
    )
