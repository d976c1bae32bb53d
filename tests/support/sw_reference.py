"""The paper's SW ranking, one query at a time: every raw training battle weighted by the literal
formula and a Bradley-Terry fit from scratch per query. The reference the batched router
(routers.kinds.sw_ranking) is tested and benchmarked against; not shipped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from routers.data.ratings import WINNER_TARGET
from routers.kinds.sw_ranking import SWRankingRouter


@dataclass(frozen=True)
class RawBattles:
    """The training battles as arrays, one row per battle: what the paper refits from."""

    prompt_idx: np.ndarray  # (N,) into the router's training prompts
    model_a: np.ndarray  # (N,) int64
    model_b: np.ndarray  # (N,) int64
    target: np.ndarray  # (N,) float64, 1 a wins, 0 b wins, 0.5 tie
    weight: np.ndarray  # (N,) float64

    @classmethod
    def of(cls, router: SWRankingRouter, battles: pd.DataFrame) -> RawBattles:
        """`battles` must be the table `router` was trained on: its prompts, in `pd.factorize`
        order, are the rows of `router.prompt_embeddings`. Battles of a model against itself
        are left out, as in `build_pair_stats`, so that both normalise by the same weight."""
        codes, prompts = pd.factorize(battles["prompt"])
        if len(prompts) != len(router.prompt_embeddings):
            raise ValueError("battles are not the table this router was trained on")
        keep = (battles["model_a"] != battles["model_b"]).to_numpy()
        battles = battles[keep]
        index = pd.Index(router.models)
        return cls(
            prompt_idx=codes[keep],
            model_a=index.get_indexer(battles["model_a"]),
            model_b=index.get_indexer(battles["model_b"]),
            target=battles["winner"].map(WINNER_TARGET).to_numpy(dtype=np.float64),
            weight=battles["weight"].to_numpy(dtype=np.float64),
        )


def refit_single(router: SWRankingRouter, raw: RawBattles, embedding: np.ndarray) -> float:
    """P(strong wins) for one query the paper's way: weight every raw battle by the literal
    formula and refit Bradley-Terry from scratch with scipy's L-BFGS-B (the solver behind the
    paper's scikit-learn LogisticRegression), to tolerances tight enough for a 1e-6 reference.

    Shares nothing with the batched path but the stored embeddings and the settings.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    s = router.settings
    train = router.prompt_embeddings.double().numpy()
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    query = np.asarray(embedding, dtype=np.float64).ravel()
    sims = train @ (query / np.linalg.norm(query))
    per_prompt = s.weight_scale * s.weight_base ** (sims / abs(sims.max()))
    w = raw.weight * per_prompt[raw.prompt_idx]
    w = w / w.sum()
    a, b, target, m = raw.model_a, raw.model_b, raw.target, len(router.models)

    def loss_and_grad(beta: np.ndarray) -> tuple[float, np.ndarray]:
        d = beta[a] - beta[b]
        # t * softplus(-d) + (1 - t) * softplus(d), using softplus(d) = softplus(-d) + d.
        loss = w @ (np.logaddexp(0.0, -d) + (1.0 - target) * d) + s.l2 * beta @ beta
        r = w * (expit(d) - target)
        grad = np.bincount(a, r, m) - np.bincount(b, r, m) + 2.0 * s.l2 * beta
        return float(loss), grad

    result = minimize(
        loss_and_grad,
        np.zeros(m),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 30},
    )
    beta = result.x
    return float(expit(beta[router.strong_model] - beta[router.weak_model]))


def score_one_by_one(
    router: SWRankingRouter, battles: pd.DataFrame, embeddings: np.ndarray
) -> np.ndarray:
    """`refit_single` for every row of `embeddings`: the reference for the batched path."""
    raw = RawBattles.of(router, battles)
    return np.array([refit_single(router, raw, e) for e in np.atleast_2d(embeddings)])
