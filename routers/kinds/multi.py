"""N-model router: each prompt's predicted quality on every model of a list.

Trained on per-model outcomes (`routers.data.model_outcomes`: every source that grades many
models on the same prompts), it predicts q_m(prompt) in [0, 1], the probability that model m
answers correctly (or its judged score scaled to [0, 1]). Which model answers is the decision
rule's (`routers.decision.choice`), from these qualities and the models' prices.

A prompt is read by a sentence encoder (the shipped MiniLM by default), and one of three
recipes turns its embedding x into every model's logit:

- `mf`: matrix factorisation as the paper's MF router and EmbedLLM: a model embedding e_m
  against a linear projection of the prompt, e_m . Wx + b_m + u . x;
- `heads`: per-model linear heads on one shared non-linear layer, v_m . gelu(Wx) + b_m + u . x;
- `irt`: a two-parameter item-response model: a scalar ability per model against the
  prompt's difficulty and discrimination, softplus(a . x) * (theta_m - d . x).

The recipe is chosen by leave-one-source-out (`python -m bench.multi_loso`, docs/BENCHMARKS.md).
The loss is the cross-entropy of the predicted quality against the observed score on every
(prompt, model) cell a source labels; a source weighs the square root of its cells, so that
MMLU-Pro's 150,000 cells do not drown Arena-Hard's 4,000.

A model seen on fewer than `min_labels` prompts is left out: it has no quality to learn. Asking
a router for a model it has no labels for is an error naming the model and how to label it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import field_validator
from torch import nn

from routers.data.model_names import normalize_model_name
from routers.protocol import BaseRouter, LoadOptions
from routers.text.embedders import LazyEmbedder, get_embedder

logger = logging.getLogger(__name__)

RECIPES = ("mf", "heads", "irt")
DEFAULT_RECIPE = "irt"
MIN_LABELS = 100
VALIDATION_SHARE = 0.1
BATCH_PROMPTS = 512
MAX_EPOCHS = 300
PATIENCE = 8
HOW_TO_LABEL = (
    "label it on your own traffic with `routeray batch label` (list it under `backends:` in "
    "label.yaml) and train with `routeray train --kind multi --extra-data <labels>`"
)


class MultiLoadOptions(LoadOptions):
    models: list[str] | None = None
    device: str | None = None

    @field_validator("models")
    @classmethod
    def _some(cls, models: list[str] | None) -> list[str] | None:
        if models is not None and len(models) < 2:
            raise ValueError("an N-model router needs at least two models to choose between")
        if models is not None and len({normalize_model_name(m) for m in models}) < len(models):
            raise ValueError(f"models {models} name one model twice")
        return models


class QualityNet(nn.Module):
    """Prompt embeddings (n, d) -> every model's quality logit (n, M)."""

    def __init__(self, recipe: str, in_dim: int, n_models: int, dim: int) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        self.recipe = recipe
        if recipe == "irt":
            self.discrimination = nn.Linear(in_dim, 1)
            self.difficulty = nn.Linear(in_dim, 1)
            self.ability = nn.Parameter(torch.zeros(n_models))
            return
        layers: list[nn.Module] = [nn.Linear(in_dim, dim)]
        if recipe == "heads":
            layers.append(nn.GELU())
        self.project = nn.Sequential(*layers)
        self.model_embedding = nn.Parameter(torch.randn(n_models, dim) * 0.01)
        self.model_bias = nn.Parameter(torch.zeros(n_models))
        self.prompt_bias = nn.Linear(in_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recipe == "irt":
            scale = nn.functional.softplus(self.discrimination(x))
            return scale * (self.ability[None, :] - self.difficulty(x))
        return (
            self.project(x) @ self.model_embedding.T
            + self.model_bias[None, :]
            + self.prompt_bias(x)
        )


def _column_of(trained: list[str], name: str) -> int | None:
    normal = normalize_model_name(name)
    return trained.index(normal) if normal in trained else None


class MultiModelRouter(LazyEmbedder, BaseRouter):
    kind = "multi"
    trains_on: ClassVar[str] = "model_outcomes"
    load_options: ClassVar[type[LoadOptions]] = MultiLoadOptions

    def __init__(
        self,
        net: QualityNet,
        trained_models: Sequence[str],
        label_counts: dict[str, int],
        *,
        dim: int,
        models: Sequence[str] | None = None,
        embedder: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        self.net = net.eval()
        self.trained_models = list(trained_models)
        self.label_counts = dict(label_counts)
        self.dim = dim
        self.embedder_config = dict(embedder or {})
        self.hyperparameters = dict(hyperparameters or {})
        self.device = torch.device(device or "cpu")
        self.net.to(self.device)
        self.select(models)

    def select(self, models: Sequence[str] | None) -> None:
        """Route among `models` (any spelling, kept as given), in that order; None: every
        trained model. ValueError naming each model without labels and how to add some."""
        if models is None:
            self.models, self._columns = (
                list(self.trained_models),
                list(range(len(self.trained_models))),
            )
            return
        columns = [_column_of(self.trained_models, m) for m in models]
        missing = [m for m, c in zip(models, columns, strict=True) if c is None]
        if missing:
            named = ", ".join(
                f"{m!r}"
                + (
                    f" (read as {normalize_model_name(m)!r})"
                    if m != normalize_model_name(m)
                    else ""
                )
                for m in missing
            )
            raise ValueError(
                f"this N-model router has no labels for model {named}: it cannot predict how "
                f"well a model does without labels for it; {HOW_TO_LABEL}. Models it has labels "
                f"for: {', '.join(self.trained_models)}"
            )
        self.models, self._columns = list(models), [int(c) for c in columns if c is not None]

    @torch.inference_mode()
    def qualities_of_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(embeddings, np.float32), device=self.device)
        logits = self.net(x)[:, self._columns]
        return torch.sigmoid(logits).double().cpu().numpy()

    def qualities(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, len(self.models)))
        return self.qualities_of_embeddings(self.embedder.encode(prompts))

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """The two-model view: how much better the first model is predicted than the last,
        mapped to [0, 1] (0.5: the same). Narrow with `models=[strong, weak]` for a pair."""
        q = self.qualities(prompts)
        return 0.5 + 0.5 * (q[:, 0] - q[:, -1]) if len(q) else np.zeros(0)

    def config(self) -> dict[str, Any]:
        return {
            "recipe": self.net.recipe,
            "dim": self.dim,
            "in_dim": self._in_dim(),
            "trained_models": self.trained_models,
            "label_counts": self.label_counts,
            "embedder": self.embedder_config,
            "hyperparameters": self.hyperparameters,
        }

    def _in_dim(self) -> int:
        first = next(m for m in self.net.modules() if isinstance(m, nn.Linear))
        return int(first.in_features)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: MultiLoadOptions
    ) -> MultiModelRouter:
        net = QualityNet(
            config["recipe"], config["in_dim"], len(config["trained_models"]), config["dim"]
        )
        net.load_state_dict(tensors)
        try:
            return cls(
                net,
                config["trained_models"],
                config.get("label_counts", {}),
                dim=config["dim"],
                models=options.models,
                embedder=config.get("embedder"),
                hyperparameters=config.get("hyperparameters"),
                device=options.device,
            )
        except ValueError as exc:
            raise cls.option_error("models", options.models, str(exc)) from None

    # -- training -----------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        table: pd.DataFrame,
        *,
        seed: int = 0,
        recipe: str = DEFAULT_RECIPE,
        dim: int = 64,
        min_labels: int = MIN_LABELS,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = MAX_EPOCHS,
        embedder: dict[str, Any] | None = None,
    ) -> MultiModelRouter:
        """`table`: long outcomes (`prompt, model, score, source` [+ `weight`]), as
        `routers.data.model_outcomes.load_model_outcomes` gives them."""
        cells, prompts, models, counts = outcome_matrix(table, min_labels)
        embed = get_embedder(**(embedder or {}))
        embeddings = np.asarray(embed.encode(prompts), np.float32)
        net, report = fit_quality_net(
            embeddings,
            cells,
            recipe=recipe,
            dim=dim,
            seed=seed,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
        )
        router = cls(
            net,
            models,
            counts,
            dim=dim,
            embedder=embedder,
            hyperparameters={
                "recipe": recipe,
                "dim": dim,
                "min_labels": min_labels,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "seed": seed,
                "prompts": len(prompts),
                "cells": int(cells.observed.sum()),
                "sources": sorted(table["source"].unique().tolist()),
                **report,
            },
        )
        # The default order, best first: what `score` compares (first against last) and the
        # order a user reads the list in.
        mean_q = router.qualities_of_embeddings(embeddings).mean(axis=0)
        order = np.argsort(-mean_q, kind="stable")
        router.trained_models = [models[i] for i in order]
        router._reorder(order)
        return router

    def _reorder(self, order: np.ndarray) -> None:
        """Permute the net's per-model parameters so that column i is `trained_models[i]`."""
        index = torch.as_tensor(order, dtype=torch.long)
        with torch.no_grad():
            for name in ("ability", "model_embedding", "model_bias"):
                if hasattr(self.net, name):
                    param = getattr(self.net, name)
                    param.copy_(param[index].clone())
        self.label_counts = {m: self.label_counts[m] for m in self.trained_models}
        self.select(None)


class OutcomeCells:
    """Observed (prompt, model) scores as dense matrices: `score` and `weight`, 0 where a
    cell is not observed (`observed` False)."""

    def __init__(self, score: np.ndarray, weight: np.ndarray) -> None:
        self.score = score.astype(np.float32)
        self.weight = weight.astype(np.float32)
        self.observed = weight > 0


def outcome_matrix(
    table: pd.DataFrame, min_labels: int = MIN_LABELS
) -> tuple[OutcomeCells, list[str], list[str], dict[str, int]]:
    """(cells, prompts, models, prompts labelled per model) of a long outcome table; models
    with fewer than `min_labels` labelled prompts are dropped."""
    missing = {"prompt", "model", "score", "source"} - set(table.columns)
    if missing:
        raise ValueError(f"an N-model router trains on long outcomes; missing {sorted(missing)}")
    frame = table.assign(model=table["model"].map(normalize_model_name))
    if "weight" not in frame:
        frame = frame.assign(weight=1.0)
    counts = frame.groupby("model")["prompt"].nunique()
    kept = counts[counts >= min_labels]
    if len(kept) < 2:
        raise ValueError(
            f"fewer than two models have labels on >= {min_labels} prompts "
            f"({', '.join(f'{m} {n}' for m, n in counts.items())}); lower min_labels or add labels"
        )
    frame = frame[frame["model"].isin(kept.index)]
    # A source weighs the square root of its cells.
    cells_per_source = frame.groupby("source")["score"].transform("size").to_numpy(float)
    frame = frame.assign(weight=frame["weight"].to_numpy(float) / np.sqrt(cells_per_source))
    grouped = frame.groupby(["prompt", "model"], sort=False).agg(
        score=("score", "mean"), weight=("weight", "sum")
    )
    prompts = list(dict.fromkeys(grouped.index.get_level_values(0)))
    models = sorted(kept.index)
    p_index = {p: i for i, p in enumerate(prompts)}
    m_index = {m: i for i, m in enumerate(models)}
    rows = np.array([p_index[p] for p in grouped.index.get_level_values(0)])
    cols = np.array([m_index[m] for m in grouped.index.get_level_values(1)])
    score = np.zeros((len(prompts), len(models)), np.float32)
    weight = np.zeros_like(score)
    score[rows, cols] = grouped["score"].to_numpy(float)
    weight[rows, cols] = grouped["weight"].to_numpy(float)
    weight *= weight.size / max(weight.sum(), 1e-12) * (weight > 0).mean()
    return OutcomeCells(score, weight), prompts, models, {m: int(kept[m]) for m in models}


def _loss(net: QualityNet, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logits = net(x)
    per_cell = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (per_cell * w).sum() / w.sum().clamp_min(1e-12)


def fit_quality_net(
    embeddings: np.ndarray,
    cells: OutcomeCells,
    *,
    recipe: str,
    dim: int,
    seed: int,
    learning_rate: float,
    weight_decay: float,
    max_epochs: int,
) -> tuple[QualityNet, dict[str, Any]]:
    """Adam on mini-batches of prompts, stopped when the loss on a held-out tenth of the
    prompts has not improved for PATIENCE epochs; the best epoch's weights are kept."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.as_tensor(embeddings)
    y = torch.as_tensor(cells.score)
    w = torch.as_tensor(cells.weight)
    order = torch.randperm(len(x), generator=generator)
    n_val = max(1, int(len(x) * VALIDATION_SHARE)) if len(x) >= 20 else 0
    val, train = order[:n_val], order[n_val:]
    net = QualityNet(recipe, x.shape[1], y.shape[1], dim)
    optimiser = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best, best_state, best_epoch, stale = np.inf, None, 0, 0
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(BATCH_PROMPTS):
            optimiser.zero_grad()
            _loss(net, x[batch], y[batch], w[batch]).backward()
            optimiser.step()
        net.eval()
        with torch.no_grad():
            check = val if n_val else train
            loss = float(_loss(net, x[check], y[check], w[check]))
        if loss < best - 1e-5:
            best, best_epoch, stale = loss, epoch, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    logger.info(f"multi ({recipe}): best validation loss {best:.4f} at epoch {best_epoch}")
    return net.eval(), {"epochs": best_epoch, "validation_loss": round(best, 5)}
