"""Prompts/s of the SW ranking router's batched scoring against the paper's per-query refit.

The router is trained on the real battle table when DATA_DIR/train exists (otherwise on a
synthetic one of similar size: ~6,000 prompts, 30 models, ~150k battles). Queries are generated
prompts of mixed kind and length. Embedding is timed apart from the Bradley-Terry fits, since
the fits are what SW ranking adds; the per-query refit (`score_one_by_one`, LBFGS over the raw
weighted battles) runs on a subset because it takes seconds a query.

    .venv/bin/python -m bench.sw_ranking_speed [--queries 1024] [--reference-queries 20]
        [--data-dir ../shared/data] [--embedding-cache ~/.cache/routeray] [--weight-base 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

os.environ.pop("ROUTERAY_EMBEDDING_CACHE", None)  # measure the model, not a cache

import numpy as np
import pandas as pd
import torch

from bench.timing import timed
from routeray.demo.prompts import generate_prompts
from routers.checkpoint import save_router
from routers.data.battles import load_battles
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.kinds.sw_ranking import SWRankingRouter
from routers.text.embedders import embedding_cache
from tests.support.sw_reference import score_one_by_one


def synthetic_battles(
    n_prompts: int = 6000, n_models: int = 30, n_battles: int = 150_000, seed: int = 0
) -> pd.DataFrame:
    """Battles whose outcome depends on the prompt's kind, so the weighting has work to do."""
    rng = np.random.default_rng(seed)
    prompts = list(dict.fromkeys(generate_prompts(n_prompts * 2, seed=seed + 100)))[:n_prompts]
    kinds = rng.integers(0, 8, len(prompts))
    models = [STRONG_MODEL, WEAK_MODEL] + [f"model-{k}" for k in range(n_models - 2)]
    skill = rng.normal(size=(n_models, 8))
    p = rng.integers(0, len(prompts), n_battles)
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    a_wins = 1.0 / (1.0 + np.exp(skill[b, kinds[p]] - skill[a, kinds[p]]))
    u = rng.random(n_battles)
    winner = np.where(u < 0.3, "tie", np.where(rng.random(n_battles) < a_wins, "a", "b"))
    return pd.DataFrame(
        {
            "prompt": np.array(prompts, dtype=object)[p],
            "model_a": np.array(models)[a],
            "model_b": np.array(models)[b],
            "winner": winner,
            "source": "synthetic",
            "weight": 1.0,
        }
    )


def training_battles(data_dir: Path) -> tuple[pd.DataFrame, str]:
    if (data_dir / "train").is_dir():
        battles = load_battles(data_dir / "train", data_dir / "eval")
        return battles, f"real ({data_dir / 'train'}, decontaminated)"
    return synthetic_battles(), "synthetic (no data dir)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--reference-queries", type=int, default=20)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument(
        "--embedding-cache",
        default=None,
        help="cache for the training prompts' embeddings only; queries are always embedded",
    )
    parser.add_argument("--weight-base", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    battles, kind = training_battles(args.data_dir)
    with embedding_cache(args.embedding_cache):
        router, train_s = timed(
            lambda: SWRankingRouter.train(battles, weight_base=args.weight_base)
        )
    with tempfile.TemporaryDirectory() as tmp:
        size = sum(f.stat().st_size for f in save_router(router, tmp).iterdir())

    prompts = generate_prompts(args.queries, seed=args.seed)
    router.score(prompts[:16])  # load the model and warm up before timing
    emb, embed_s = timed(router.embedder.encode, prompts)
    batched, fit_s = timed(router.score_embeddings, emb)
    _, end_to_end_s = timed(router.score, prompts)
    k = min(args.reference_queries, len(prompts))
    reference, reference_s = timed(score_one_by_one, router, battles, emb[:k])

    n = len(prompts)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(
        f"training data: {kind}: {len(battles)} battles, {router.training['prompts']} prompts, "
        f"{len(router.models)} models, {router.stats.n_pairs} pairs, "
        f"{len(router.stats.wins)} (prompt, pair) statistics"
    )
    print(
        f"train (pair statistics + training prompt embeddings"
        f"{', cached' if args.embedding_cache else ''}): {train_s:.1f} s; "
        f"checkpoint {size / 2**20:.1f} MiB"
    )
    print(f"settings: {router.settings}")
    print(f"queries: {n} generated (seed {args.seed}), reference on the first {k}")
    print(f"embedding only:           {n / embed_s:8.1f} prompts/s ({embed_s:.2f} s)")
    print(f"batched fits (embedded):  {n / fit_s:8.1f} prompts/s ({fit_s:.2f} s)")
    print(f"batched end-to-end score: {n / end_to_end_s:8.1f} prompts/s ({end_to_end_s:.2f} s)")
    print(f"per-query refit (paper):  {k / reference_s:8.2f} prompts/s ({reference_s:.1f} s)")
    print(f"ratio batched/per-query fits: {(reference_s / k) / (fit_s / n):8.0f}x")
    print(
        f"max |batched - per-query| score difference: {np.abs(batched[:k] - reference).max():.2e}"
    )
    print(
        f"scores: min {batched.min():.4f} median {np.median(batched):.4f} max {batched.max():.4f}"
    )


if __name__ == "__main__":
    main()
