"""Similarity-weighted (SW) ranking router, from the RouteLLM paper.

For a query q every training battle is weighted by w = scale * base^(sim / max_sim), with sim
the cosine similarity between q and the battle's prompt and max_sim the largest such similarity
over the training prompts; a Bradley-Terry model over every model in the battles is fitted with
those weights (a tie is half a win to each side), and P(strong beats weak | q) =
sigmoid(rating_strong - rating_weak).

The paper refits from the raw battles for every query. Here the
battles are reduced at training time to wins and games per (training prompt, model pair), so a
query's weighted data is one matrix product, and the fits of a whole chunk of queries run
together as batched Newton steps. The paper's way is kept in tests/support/sw_reference.py as the
reference the batched path is tested and benchmarked against.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import ValidationInfo, field_validator

from routers.data.model_names import STRONG_MODEL, WEAK_MODEL, model_index
from routers.data.ratings import WINNER_TARGET
from routers.kinds.pair import PairLoadOptions, routed_pair
from routers.protocol import BaseRouter, LoadOptions
from routers.text.embedders import LazyEmbedder, get_embedder

logger = logging.getLogger(__name__)

# Armijo constant of the line search, and the slack that lets a step whose loss change is
# below float64 rounding count as a decrease (near the optimum every change is that small).
_ARMIJO = 1e-4
_ROUNDING_SLACK = 1e-13
_LINE_SEARCH_STEPS = 20


@dataclass(frozen=True)
class SWSettings:
    """Inference-time choices: none of them changes the stored statistics, so a loaded router
    can try another weighting without retraining.

    `weight_scale` cancels out because the loss is a weighted mean (so that `l2` means the same
    whatever the data size, as in `routers.data.ratings.bradley_terry`); it is kept so that the
    weight formula reads as the paper's. `weight_base` is what sharpens the weighting: the
    paper's 10 gives every battle a weight between 10 and 100, so the global fit dominates.
    """

    l2: float = 1e-4
    weight_base: float = 10.0
    weight_scale: float = 10.0
    max_iter: int = 50
    tol: float = 1e-9
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if not self.l2 > 0:
            raise ValueError(f"l2 must be > 0 (it keeps every fit well posed), got {self.l2}")
        if not (self.weight_base > 0 and self.weight_scale > 0):
            raise ValueError("weight_base and weight_scale must be > 0")
        if self.max_iter < 1 or self.chunk_size < 1 or not self.tol > 0:
            raise ValueError("max_iter and chunk_size must be >= 1 and tol > 0")


class SWLoadOptions(PairLoadOptions):
    """The routed pair, and any of the `SWSettings`: the weighting is an inference choice."""

    l2: float | None = None
    weight_base: float | None = None
    weight_scale: float | None = None
    max_iter: int | None = None
    tol: float | None = None
    chunk_size: int | None = None

    @field_validator("l2", "weight_base", "weight_scale", "max_iter", "tol", "chunk_size")
    @classmethod
    def _valid_setting(cls, value: float | None, info: ValidationInfo) -> float | None:
        # SWSettings holds the rules; a value is checked against the defaults of the others.
        if value is not None:
            replace(SWSettings(), **{str(info.field_name): value})
        return value

    def settings(self, stored: SWSettings) -> SWSettings:
        """`stored` with the settings these options give."""
        given = {name: getattr(self, name) for name in SWSettings.__dataclass_fields__}
        return replace(stored, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True)
class PairStats:
    """Wins and games per (training prompt, unordered model pair), as sparse triplets.

    `wins` are the first model's (`pair_a`), ties counting half; both are already multiplied by
    each battle's `weight`. Sparse because most prompts are judged on few of the pairs.
    """

    prompt_idx: torch.Tensor  # (nnz,) int64 into the training prompts
    pair_idx: torch.Tensor  # (nnz,) int64 into pair_a / pair_b
    wins: torch.Tensor  # (nnz,) float32
    games: torch.Tensor  # (nnz,) float32
    pair_a: torch.Tensor  # (n_pairs,) int64 model index, pair_a < pair_b
    pair_b: torch.Tensor  # (n_pairs,) int64

    @property
    def n_pairs(self) -> int:
        return len(self.pair_a)

    def dense(self, n_prompts: int) -> torch.Tensor:
        """(n_prompts, 2 * n_pairs) float64: wins then games, the right operand of weights @."""
        out = torch.zeros(n_prompts, 2 * self.n_pairs, dtype=torch.float64)
        out[self.prompt_idx, self.pair_idx] = self.wins.double()
        out[self.prompt_idx, self.pair_idx + self.n_pairs] = self.games.double()
        return out


def build_pair_stats(battles: pd.DataFrame, models: list[str]) -> tuple[list[str], PairStats]:
    """Unique prompts (first-seen order, as `pd.factorize`) and their pair statistics.

    A battle of a model against itself says nothing about ratings and is left out.
    """
    unknown = set(battles["winner"].unique()) - set(WINNER_TARGET)
    if unknown:
        raise ValueError(f"winner must be one of {sorted(WINNER_TARGET)}, got {sorted(unknown)}")
    prompt_codes, prompts = pd.factorize(battles["prompt"])
    index = pd.Index(models)
    a = index.get_indexer(battles["model_a"])
    b = index.get_indexer(battles["model_b"])
    target_a = battles["winner"].map(WINNER_TARGET).to_numpy(dtype=np.float64)
    weight = battles["weight"].to_numpy(dtype=np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    frame = pd.DataFrame(
        {
            "prompt": prompt_codes,
            "lo": lo,
            "hi": hi,
            "wins": np.where(a == lo, target_a, 1.0 - target_a) * weight,
            "games": weight,
        }
    )[lo != hi]
    pairs = frame[["lo", "hi"]].drop_duplicates().sort_values(["lo", "hi"], ignore_index=True)
    frame["pair"] = pd.MultiIndex.from_frame(pairs).get_indexer(
        pd.MultiIndex.from_frame(frame[["lo", "hi"]])
    )
    grouped = frame.groupby(["prompt", "pair"], sort=True)[["wins", "games"]].sum().reset_index()
    grouped = grouped[grouped["games"] > 0]
    stats = PairStats(
        prompt_idx=torch.tensor(grouped["prompt"].to_numpy(), dtype=torch.long),
        pair_idx=torch.tensor(grouped["pair"].to_numpy(), dtype=torch.long),
        wins=torch.tensor(grouped["wins"].to_numpy(), dtype=torch.float32),
        games=torch.tensor(grouped["games"].to_numpy(), dtype=torch.float32),
        pair_a=torch.tensor(pairs["lo"].to_numpy(), dtype=torch.long),
        pair_b=torch.tensor(pairs["hi"].to_numpy(), dtype=torch.long),
    )
    return list(prompts), stats


def prompt_weights(similarities: torch.Tensor, base: float) -> torch.Tensor:
    """(B, P) paper weights base^(sim / max_sim), up to a per-query factor.

    The factor (weight_scale and base^-1) cancels in the weighted-mean loss; leaving it out,
    i.e. working in log space relative to the most similar prompt, keeps a sharp base from
    overflowing. Dividing by |max_sim| rather than max_sim keeps the most similar prompt the
    heaviest when every similarity is negative (identical to the paper otherwise).
    """
    max_sim = similarities.max(dim=1, keepdim=True).values
    ratio = similarities / max_sim.abs().clamp_min(1e-12)
    return torch.exp(math.log(base) * (ratio - ratio.max(dim=1, keepdim=True).values))


def fit_ratings(
    wins: torch.Tensor,
    games: torch.Tensor,
    pair_a: torch.Tensor,
    pair_b: torch.Tensor,
    n_models: int,
    *,
    l2: float,
    init: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> torch.Tensor:
    """(B, n_models) Bradley-Terry ratings for B weighted problems at once.

    Minimises sum(games * softplus(-d) + (games - wins) * d) / sum(games) + l2 * |beta|^2 with
    d = beta[pair_a] - beta[pair_b], the loss of `routers.data.ratings.bradley_terry`, by Newton
    steps with backtracking. The objective is strictly convex (the ridge also pins down models
    a problem never weights), so Newton converges in a few steps. A problem leaves the batch
    once its step is below `tol`, so its result does not depend on the others in the batch.
    """
    wins, games = wins.double(), games.double()
    total = games.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    wins, games = wins / total, games / total
    batch, m = wins.shape[0], n_models
    if init is None:
        beta = torch.zeros(batch, m, dtype=torch.float64)
    else:
        beta = init.double().expand(batch, m).clone()
    problem = _Problem(pair_a, pair_b, m, l2)
    active = torch.arange(batch)
    for _ in range(max_iter):
        if len(active) == 0:
            return beta
        w, g = wins[active], games[active]
        update = problem.newton_step(beta[active], w, g)
        beta[active] += update
        active = active[update.abs().amax(dim=1) >= tol]
    if len(active) == 0:
        return beta
    warnings.warn(
        f"sw_ranking: {len(active)} Bradley-Terry fits not converged to {tol:g} in "
        f"{max_iter} Newton steps",
        RuntimeWarning,
        stacklevel=2,
    )
    return beta


@dataclass(frozen=True)
class _Problem:
    """What every fit of one router shares: the pairs, the model count and the ridge."""

    pair_a: torch.Tensor
    pair_b: torch.Tensor
    n_models: int
    l2: float

    def objective(
        self, beta: torch.Tensor, wins: torch.Tensor, games: torch.Tensor
    ) -> torch.Tensor:
        """Weighted Bradley-Terry negative log-likelihood plus ridge, per problem."""
        d = beta[..., self.pair_a] - beta[..., self.pair_b]
        nll = games * F.softplus(-d) + (games - wins) * d
        return nll.sum(-1) + self.l2 * (beta**2).sum(-1)

    def newton_step(
        self, beta: torch.Tensor, wins: torch.Tensor, games: torch.Tensor
    ) -> torch.Tensor:
        a, b, m = self.pair_a, self.pair_b, self.n_models
        p = torch.sigmoid(beta[:, a] - beta[:, b])
        residual = games * p - wins
        grad = (2.0 * self.l2 * beta).index_add_(1, a, residual).index_add_(1, b, -residual)
        c = games * p * (1.0 - p)
        # Each pair (i, j) adds c to H[i,i] and H[j,j] and -c to H[i,j] and H[j,i].
        flat = torch.cat([a * m + a, b * m + b, a * m + b, b * m + a])
        hess = torch.zeros(len(beta), m * m, dtype=torch.float64)
        hess.index_add_(1, flat, torch.cat([c, c, -c, -c], dim=1))
        hess = hess.view(-1, m, m) + 2.0 * self.l2 * torch.eye(m, dtype=torch.float64)
        direction = -torch.linalg.solve(hess, grad)
        return self.step_sizes(beta, direction, grad, wins, games)[:, None] * direction

    def step_sizes(
        self,
        beta: torch.Tensor,
        direction: torch.Tensor,
        grad: torch.Tensor,
        wins: torch.Tensor,
        games: torch.Tensor,
    ) -> torch.Tensor:
        """(B,) the largest of 1, 1/2, 1/4, ... that satisfies Armijo, per problem; 0 where
        none of `_LINE_SEARCH_STEPS` does. The full step almost always passes, so only the
        problems where it fails pay for trying the shorter ones."""
        current = self.objective(beta, wins, games)
        # Rounding slack: near the optimum every change in the loss is below float64 noise.
        bound = current + _ROUNDING_SLACK * (1.0 + current.abs())
        slope = _ARMIJO * (grad * direction).sum(1)
        t = torch.ones_like(current)
        failed = torch.nonzero(self.objective(beta + direction, wins, games) > bound + slope)
        failed = failed.squeeze(1)
        if len(failed):
            steps = 0.5 ** torch.arange(1, _LINE_SEARCH_STEPS, dtype=torch.float64)
            trial = beta[failed, None, :] + steps[:, None] * direction[failed, None, :]
            values = self.objective(trial, wins[failed, None], games[failed, None])
            ok = values <= bound[failed, None] + steps * slope[failed, None]
            first = ok.float().argmax(dim=1)
            t[failed] = torch.where(ok.any(dim=1), steps[first], 0.0)
        return t


class SWRankingRouter(LazyEmbedder, BaseRouter):
    """Scores a query by a Bradley-Terry fit over every training battle, weighted by how
    similar the battle's prompt is to the query; the weighting is chosen at inference time."""

    kind = "sw_ranking"
    load_options: ClassVar[type[LoadOptions]] = SWLoadOptions

    def __init__(
        self,
        prompt_embeddings: torch.Tensor,
        stats: PairStats,
        models: list[str],
        *,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        embedder: dict[str, Any] | None = None,
        settings: SWSettings | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        # Kept as float16, the stored precision, so a loaded router scores exactly like this one.
        self.prompt_embeddings = prompt_embeddings.to(torch.float16)
        self.stats = stats
        self.models = list(models)
        self.embedder_config = dict(embedder or {})
        self.settings = settings or SWSettings()
        self.training = dict(training or {})
        self.strong_model = model_index(self.models, strong_model)
        self.weak_model = model_index(self.models, weak_model)
        self._train = F.normalize(self.prompt_embeddings.double(), dim=1)
        self._stats = stats.dense(len(self._train))
        # The unweighted fit: every query's fit starts here and is only a few steps away.
        n = stats.n_pairs
        totals = self._stats.sum(0, keepdim=True)
        self._start = self._fit(totals[:, :n], totals[:, n:])

    @property
    def pair(self) -> tuple[str, str]:
        return self.models[self.strong_model], self.models[self.weak_model]

    def _fit(
        self, wins: torch.Tensor, games: torch.Tensor, init: torch.Tensor | None = None
    ) -> torch.Tensor:
        s = self.settings
        return fit_ratings(
            wins,
            games,
            self.stats.pair_a,
            self.stats.pair_b,
            len(self.models),
            l2=s.l2,
            init=init,
            max_iter=s.max_iter,
            tol=s.tol,
        )

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return self.score_embeddings(self.embedder.encode(prompts))

    def ratings_for_embeddings(self, embeddings: np.ndarray) -> torch.Tensor:
        """(B, n_models) fitted ratings per query (mean zero, natural-log odds scale)."""
        queries = torch.from_numpy(np.asarray(embeddings, dtype=np.float64).reshape(-1, self.dim))
        queries = F.normalize(queries, dim=1)
        n = self.stats.n_pairs
        out = [self._start.new_zeros(0, len(self.models))]
        for chunk in queries.split(self.settings.chunk_size):
            weighted = prompt_weights(chunk @ self._train.T, self.settings.weight_base)
            weighted = weighted @ self._stats
            out.append(self._fit(weighted[:, :n], weighted[:, n:], self._start))
        return torch.cat(out)

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        ratings = self.ratings_for_embeddings(embeddings)
        diff = ratings[:, self.strong_model] - ratings[:, self.weak_model]
        return torch.sigmoid(diff).numpy()

    @property
    def dim(self) -> int:
        return self.prompt_embeddings.shape[1]

    def config(self) -> dict[str, Any]:
        strong, weak = self.pair
        return {
            "models": self.models,
            "strong_model": strong,
            "weak_model": weak,
            "embedder": self.embedder_config,
            "embedding_dim": self.dim,
            "n_prompts": len(self.prompt_embeddings),
            "settings": asdict(self.settings),
            "training": self.training,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        s = self.stats
        return {
            "prompt_embeddings": self.prompt_embeddings,
            # int32 halves the largest arrays; a few million prompts or pairs still fit.
            "stat_prompt": s.prompt_idx.to(torch.int32),
            "stat_pair": s.pair_idx.to(torch.int32),
            "stat_wins": s.wins,
            "stat_games": s.games,
            "pair_a": s.pair_a,
            "pair_b": s.pair_b,
        }

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: SWLoadOptions
    ) -> SWRankingRouter:
        strong_model, weak_model = routed_pair(cls, config, options)
        settings = options.settings(SWSettings(**config["settings"]))
        stats = PairStats(
            prompt_idx=tensors["stat_prompt"].long(),
            pair_idx=tensors["stat_pair"].long(),
            wins=tensors["stat_wins"],
            games=tensors["stat_games"],
            pair_a=tensors["pair_a"].long(),
            pair_b=tensors["pair_b"].long(),
        )
        embeddings = tensors["prompt_embeddings"]
        if embeddings.shape != (config["n_prompts"], config["embedding_dim"]):
            raise RuntimeError(
                f"prompt_embeddings has shape {tuple(embeddings.shape)}, config says "
                f"({config['n_prompts']}, {config['embedding_dim']})"
            )
        return cls(
            embeddings,
            stats,
            config["models"],
            strong_model=strong_model,
            weak_model=weak_model,
            embedder=config.get("embedder"),
            settings=settings,
            training=config.get("training"),
        )

    @classmethod
    def train(
        cls,
        battles: pd.DataFrame,
        *,
        seed: int = 0,
        embedder: dict[str, Any] | None = None,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        l2: float = SWSettings.l2,
        weight_base: float = SWSettings.weight_base,
        weight_scale: float = SWSettings.weight_scale,
        max_iter: int = SWSettings.max_iter,
        tol: float = SWSettings.tol,
        chunk_size: int = SWSettings.chunk_size,
    ) -> SWRankingRouter:
        """Embed the unique training prompts and reduce the battles to pair statistics.

        Nothing is learned before a query arrives, so there is nothing random: `seed` is only
        recorded.
        """
        settings = SWSettings(l2, weight_base, weight_scale, max_iter, tol, chunk_size)
        models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
        for name in (strong_model, weak_model):
            model_index(models, name)  # fail before the slow part, not after it
        prompts, stats = build_pair_stats(battles, models)
        logger.info(
            f"sw_ranking: {len(battles)} battles -> {len(stats.wins)} (prompt, pair) statistics "
            f"over {len(prompts)} prompts, {stats.n_pairs} model pairs, {len(models)} models"
        )
        logger.info(f"embedding {len(prompts)} unique training prompts")
        embeddings = torch.from_numpy(get_embedder(**(embedder or {})).encode(prompts))
        return cls(
            embeddings,
            stats,
            models,
            strong_model=strong_model,
            weak_model=weak_model,
            embedder=embedder,
            settings=settings,
            training={"seed": seed, "battles": len(battles), "prompts": len(prompts)},
        )
