"""Matrix factorisation router (RouteLLM's recommended router).

s(model, q) = w . (normalize(v_model) * (W e_q)) + b_model, and
P(strong beats weak | q) = sigmoid(s(strong, q) - s(weak, q)), trained with a Bradley-Terry
(logistic) loss on battles among every model in the data. The per-model bias is our addition:
it carries a model's overall strength so the bilinear term is free to learn what depends on the
prompt. It shifts every prompt's score equally, so the routing order is unaffected by it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from routers.data.model_names import STRONG_MODEL, WEAK_MODEL, model_index
from routers.kinds.pair import PairLoadOptions, routed_pair
from routers.protocol import BaseRouter, LoadOptions
from routers.text.embedders import LazyEmbedder, get_embedder
from routers.training.encoding import EncodedBattles, encode_battles
from routers.training.loop import fit_epochs, seed_everything
from routers.training.splits import grouped_split

logger = logging.getLogger(__name__)


class MFNet(nn.Module):
    def __init__(
        self, n_models: int, embedding_dim: int, dim: int, model_bias: bool = True
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim, dim, bias=False)
        self.models = nn.Embedding(n_models, dim)
        self.head = nn.Linear(dim, 1, bias=False)
        self.bias = nn.Embedding(n_models, 1)
        nn.init.zeros_(self.bias.weight)
        self.bias.weight.requires_grad_(model_bias)

    def model_scores(self, prompt_emb: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
        v = F.normalize(self.models(model), dim=-1)
        return self.head(v * self.proj(prompt_emb)).squeeze(-1) + self.bias(model).squeeze(-1)

    def pair_direction(self, strong: int, weak: int) -> tuple[torch.Tensor, float]:
        """(u, c) with s(strong, q) - s(weak, q) = e_q . u + c: scoring is one dot product."""
        v = F.normalize(self.models.weight, dim=-1)
        delta = self.head.weight[0] * (v[strong] - v[weak])
        u = self.proj.weight.T @ delta
        c = self.bias.weight[strong, 0] - self.bias.weight[weak, 0]
        return u.detach(), float(c.detach())


class MFRouter(LazyEmbedder, BaseRouter):
    kind = "mf"
    load_options: ClassVar[type[LoadOptions]] = PairLoadOptions

    def __init__(
        self,
        net: MFNet,
        models: list[str],
        *,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        embedder: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> None:
        self.net = net.eval()
        self.models = list(models)
        self.embedder_config = dict(embedder or {})
        self.hyperparameters = dict(hyperparameters or {})
        self.strong_model = model_index(self.models, strong_model)
        self.weak_model = model_index(self.models, weak_model)
        self._direction, self._offset = net.pair_direction(self.strong_model, self.weak_model)

    @property
    def pair(self) -> tuple[str, str]:
        return self.models[self.strong_model], self.models[self.weak_model]

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return self.score_embeddings(self.embedder.encode(prompts))

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        logits = torch.from_numpy(np.asarray(embeddings, dtype=np.float32)) @ self._direction
        return torch.sigmoid(logits + self._offset).double().numpy()

    def config(self) -> dict[str, Any]:
        strong, weak = self.pair
        return {
            "models": self.models,
            "strong_model": strong,
            "weak_model": weak,
            "embedder": self.embedder_config,
            "embedding_dim": self.net.proj.in_features,
            "dim": self.net.proj.out_features,
            "model_bias": bool(self.net.bias.weight.requires_grad),
            "hyperparameters": self.hyperparameters,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: PairLoadOptions
    ) -> MFRouter:
        strong_model, weak_model = routed_pair(cls, config, options)
        net = MFNet(
            len(config["models"]), config["embedding_dim"], config["dim"], config["model_bias"]
        )
        net.load_state_dict(tensors)
        return cls(
            net,
            config["models"],
            strong_model=strong_model,
            weak_model=weak_model,
            embedder=config.get("embedder"),
            hyperparameters=config.get("hyperparameters"),
        )

    @classmethod
    def train(
        cls,
        battles: pd.DataFrame,
        *,
        seed: int = 0,
        embedder: dict[str, Any] | None = None,
        dims: Sequence[int] = (64, 128),
        weight_decays: Sequence[float] = (1e-3, 1e-1),
        lr: float = 3e-3,
        batch_size: int = 4096,
        max_epochs: int = 30,
        patience: int = 3,
        holdout: float = 0.2,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
    ) -> MFRouter:
        """Choose dim, weight decay and epochs on a held-out split of the training prompts,
        then refit on every battle with the chosen values."""
        seed_everything(seed)
        models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
        prompts, encoded = encode_battles(battles, models)
        logger.info(f"embedding {len(prompts)} unique training prompts")
        embeddings = torch.from_numpy(get_embedder(**(embedder or {})).encode(prompts))
        train_mask, val_mask = grouped_split(battles["prompt"], holdout, seed)
        train = encoded.subset(np.flatnonzero(train_mask))
        val = encoded.subset(np.flatnonzero(val_mask))

        results = []
        for dim, wd in itertools.product(dims, weight_decays):
            seed_everything(seed)
            net = MFNet(len(models), embeddings.shape[1], dim)
            history = _fit(
                net,
                embeddings,
                train,
                lr,
                wd,
                batch_size,
                max_epochs,
                patience,
                seed,
                val,
                f"mf dim={dim} wd={wd:g}",
            )
            best_epoch = int(np.argmin(history)) + 1
            results.append((min(history), dim, wd, best_epoch))
            logger.info(
                f"  dim={dim} weight_decay={wd:g}: validation loss {min(history):.4f} "
                f"at epoch {best_epoch}"
            )
        val_loss, dim, wd, epochs = min(results)
        logger.info(
            f"chosen: dim={dim} weight_decay={wd:g} epochs={epochs} "
            f"(validation loss {val_loss:.4f})"
        )

        seed_everything(seed)
        net = MFNet(len(models), embeddings.shape[1], dim)
        _fit(
            net,
            embeddings,
            encoded,
            lr,
            wd,
            batch_size,
            epochs,
            None,
            seed,
            None,
            "mf final fit",
        )
        chosen = {
            "dim": dim,
            "weight_decay": wd,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "validation_loss": val_loss,
        }
        return cls(
            net,
            models,
            strong_model=strong_model,
            weak_model=weak_model,
            embedder=embedder,
            hyperparameters=chosen,
        )


def _loss(net: MFNet, embeddings: torch.Tensor, b: EncodedBattles) -> torch.Tensor:
    e = embeddings[b.prompt_idx]
    logits = net.model_scores(e, b.model_a) - net.model_scores(e, b.model_b)
    losses = F.binary_cross_entropy_with_logits(logits, b.target, reduction="none")
    return (losses * b.weight).sum() / b.weight.sum()


def _fit(
    net: MFNet,
    embeddings: torch.Tensor,
    train: EncodedBattles,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    patience: int | None,
    seed: int,
    val: EncodedBattles | None,
    desc: str,
) -> list[float]:
    """Mini-batch AdamW, a fresh seeded shuffle every epoch; returns the validation loss after
    each epoch (early stopping after `patience` epochs without a better one), or [nan]
    without `val`."""
    optimiser = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    generator = torch.Generator().manual_seed(seed)

    def epoch_batches(_: int) -> list[EncodedBattles]:
        order = torch.randperm(len(train), generator=generator)
        return [
            train.subset(order[start : start + batch_size])
            for start in range(0, len(train), batch_size)
        ]

    def batch_loss(batch: EncodedBattles) -> tuple[torch.Tensor, float]:
        return _loss(net, embeddings, batch), float(len(batch))

    def validate() -> dict[str, float]:
        return {"val_loss": float(_loss(net, embeddings, val))}

    result = fit_epochs(
        net,
        optimiser,
        epoch_batches,
        batch_loss,
        epochs=epochs,
        validate=validate if val is not None else None,
        patience=patience,
        desc=desc,
        unit="battles",
    )
    return result.validation_losses if val is not None else [math.nan]
