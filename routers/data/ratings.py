"""Bradley-Terry (Elo) ratings from battles, and the paper's grouping of models into tiers.

Few battles involve exactly the routed pair, so the paper ranks every model by rating, groups
them into tiers, and treats a battle between a tier-1 model and a lower tier as a
strong-vs-weak comparison.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from routers.data.model_names import normalize_model_name

logger = logging.getLogger(__name__)

WINNER_TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}
# The classifier routers' three labels, in the order of their output columns.
CLASS_LABELS: tuple[str, str, str] = ("strong", "tie", "weak")
ELO_SCALE = 400.0 / math.log(10.0)


def bradley_terry(battles: pd.DataFrame, l2: float = 1e-4, base: float = 1000.0) -> pd.Series:
    """Elo-scaled ratings, highest first; a tie counts half a win to each side."""
    models = pd.Index(sorted(set(battles["model_a"]) | set(battles["model_b"])))
    frame = pd.DataFrame(
        {
            "a": models.get_indexer(battles["model_a"]),
            "b": models.get_indexer(battles["model_b"]),
            "wins": battles["winner"].map(WINNER_TARGET) * battles["weight"],
            "games": battles["weight"],
        }
    )
    # Sufficient statistics per ordered pair: the fit is then over pairs, not battles.
    pairs = frame.groupby(["a", "b"], sort=False)[["wins", "games"]].sum().reset_index()
    a = torch.tensor(pairs["a"].to_numpy())
    b = torch.tensor(pairs["b"].to_numpy())
    wins = torch.tensor(pairs["wins"].to_numpy(), dtype=torch.float64)
    games = torch.tensor(pairs["games"].to_numpy(), dtype=torch.float64)
    beta = torch.zeros(len(models), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [beta], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = beta[a] - beta[b]
        nll = games * torch.nn.functional.softplus(-logits) + (games - wins) * logits
        loss = nll.sum() / games.sum() + l2 * (beta**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    ratings = beta.detach().numpy()
    ratings = base + ELO_SCALE * (ratings - ratings.mean())
    return pd.Series(ratings, index=models, name="rating").sort_values(ascending=False)


def tiers(ratings: pd.Series, n_tiers: int = 10) -> pd.Series:
    """Tier 1 (best) to n_tiers: the 1-D partition of ratings with the least within-tier
    squared error (optimal, by dynamic programming: quadratic in the number of models, which
    is small)."""
    values = ratings.sort_values(ascending=False).to_numpy()
    n = len(values)
    k = min(n_tiers, n)
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    prefix2 = np.concatenate([[0.0], np.cumsum(values**2)])

    def sse(i: int, j: int) -> float:  # values[i:j]
        s = prefix[j] - prefix[i]
        return prefix2[j] - prefix2[i] - s * s / (j - i)

    cost = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), dtype=int)
    cost[0, 0] = 0.0
    for t in range(1, k + 1):
        for j in range(t, n + 1):
            best = min(range(t - 1, j), key=lambda i: cost[t - 1, i] + sse(i, j))
            cost[t, j], cut[t, j] = cost[t - 1, best] + sse(best, j), best
    labels = np.zeros(n, dtype=int)
    j = n
    for t in range(k, 0, -1):
        labels[cut[t, j] : j] = t
        j = cut[t, j]
    order = ratings.sort_values(ascending=False).index
    return pd.Series(labels, index=order, name="tier")


def strong_weak_labels(battles: pd.DataFrame, model_tiers: pd.Series) -> pd.DataFrame:
    """Battles between a tier-1 model and a lower tier, oriented as strong vs weak:
    columns prompt, label in {strong, tie, weak}, source, weight."""
    ta = battles["model_a"].map(model_tiers)
    tb = battles["model_b"].map(model_tiers)
    a_strong = (ta == 1) & (tb > 1)
    b_strong = (tb == 1) & (ta > 1)
    picked = battles[a_strong | b_strong].copy()
    flip = b_strong[a_strong | b_strong].to_numpy()
    winner = picked["winner"].to_numpy()
    strong_won = np.where(flip, winner == "b", winner == "a")
    weak_won = np.where(flip, winner == "a", winner == "b")
    picked["label"] = np.select([strong_won, weak_won], ["strong", "weak"], "tie")
    return picked[["prompt", "label", "source", "weight"]].reset_index(drop=True)


def classifier_labels(
    battles: pd.DataFrame,
    strong_model: str,
    weak_model: str,
    n_tiers: int = 10,
    pair_battles: bool = True,
) -> pd.DataFrame:
    """Strong/weak/tie labelled battles (prompt, label, source, weight) for the classifier
    routers: tier 1 vs lower tiers as in the paper, plus (with `pair_battles`) every battle of
    exactly the configured pair, whatever its tiers, oriented by name; each battle once.

    The pair's own battles are the most direct evidence there is, and tiering alone would
    drop them when both models land in one tier or flip them when the strong one is not in
    tier 1."""
    strong_model, weak_model = normalize_model_name(strong_model), normalize_model_name(weak_model)
    battles = battles.assign(
        model_a=battles["model_a"].map(normalize_model_name),
        model_b=battles["model_b"].map(normalize_model_name),
    )
    model_tiers = tiers(bradley_terry(battles), n_tiers)
    top = list(model_tiers[model_tiers == 1].index)
    logger.info(
        f"tier 1: {', '.join(top)}; {strong_model} tier {model_tiers.get(strong_model, '-')}, "
        f"{weak_model} tier {model_tiers.get(weak_model, '-')}"
    )
    a, b = battles["model_a"], battles["model_b"]
    pair = ((a == strong_model) & (b == weak_model)) | ((a == weak_model) & (b == strong_model))
    parts = [strong_weak_labels(battles[~pair] if pair_battles else battles, model_tiers)]
    if pair_battles and pair.any():
        # Oriented by name: a two-tier table of just the pair.
        by_name = pd.Series({strong_model: 1, weak_model: 2})
        parts.append(strong_weak_labels(battles[pair], by_name))
        logger.info(
            f"{int(pair.sum())} battles of {strong_model} vs {weak_model} labelled directly"
        )
    if not any(len(p) for p in parts):
        raise ValueError(
            "no strong/weak labelled battles: no battle pits a tier-1 model against a lower "
            "tier, and none is between the configured strong and weak models"
        )
    return pd.concat(parts, ignore_index=True)


def aggregate_labels(labelled: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Unique prompts (first-seen order), each one's weighted label distribution (n, 3) over
    `CLASS_LABELS`, and its total weight: sum_i w_i CE(y_i) = W * CE(distribution) per prompt."""
    codes, prompts = pd.factorize(labelled["prompt"])
    label = pd.Index(CLASS_LABELS).get_indexer(labelled["label"])
    if (label < 0).any():
        raise ValueError(f"labels must be in {CLASS_LABELS}")
    mass = np.zeros((len(prompts), len(CLASS_LABELS)))
    np.add.at(mass, (codes, label), labelled["weight"].to_numpy(dtype=np.float64))
    total = mass.sum(1)
    keep = total > 0
    return list(prompts[keep]), mass[keep] / total[keep, None], total[keep]
