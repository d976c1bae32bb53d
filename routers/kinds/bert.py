"""BERT classifier router (the RouteLLM paper's `bert` router).

A BERT-family encoder, mean-pooled, with a linear head over three labels in the order
`CLASS_LABELS` = (strong wins, tie, weak wins); the score is
P(strong wins) = 1 - (P(tie) + P(weak)).

Labels come from battles the paper's way: every model is rated (Bradley-Terry), ratings are
grouped into tiers, and a battle between a tier-1 model and a lower tier is a strong-vs-weak
example. Battles between exactly the configured strong and weak models are always used too,
oriented by those names rather than by tier: when both land in one tier (or the configured
strong model is not tier 1) the tiering would drop them or flip them, and they are the most
direct evidence there is. Each such battle is counted once.

Many battles share a prompt (one Alpaca prompt is judged for dozens of model pairs), so the
labelled battles are summed per prompt into a weighted label distribution and the loss is the
cross-entropy against it, times the prompt's total battle weight: the same objective as the
battle-weighted cross-entropy over every battle, at one forward pass per *prompt*, and far
fewer prompts than battles. "Examples" below are prompts.

Train on the real data. One epoch is few optimiser steps (one per `batch_size` prompts), so
ask for a few:

    routeray train --router bert --data-dir ../shared/data/train --output out/bert \\
        --param epochs=4 --param lr=5e-5

`--param base_model=/path/to/bert-base-uncased` fine-tunes another local BERT-family model
(the paper used BERT-base; `--embedder PATH` does the same); `--param max_examples=20000`
caps the labelled battles. On a machine with a GPU, training runs there under bf16 autocast
(`--param device=cpu` forces the CPU) and a loaded router scores there, in fp32 unless loaded
with bf16=True. The saved router is config.json + model.safetensors, the whole fine-tuned
encoder: keep it out of git. Load with
`routers.checkpoint.load_router(dir, device="cuda", bf16=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from routers.data.model_names import STRONG_MODEL, WEAK_MODEL, normalize_model_name
from routers.data.ratings import CLASS_LABELS, aggregate_labels, classifier_labels
from routers.protocol import BaseRouter, LoadOptions
from routers.text.batching import CLASSIFIER_BATCH_TOKENS, MAX_BATCH_ROWS, length_batches
from routers.text.embedders import default_model_path
from routers.text.hf import DeviceName, offline, resolve_device
from routers.text.tokens import TokenWindow
from routers.training.loop import (
    fit_epochs,
    seed_everything,
    warmup_decay_schedule,
)
from routers.training.splits import grouped_split

logger = logging.getLogger(__name__)

STRONG, TIE, WEAK = range(3)
POOLINGS = ("mean", "cls")
# Training batches are length-sorted within pools of this many batches (see _train_batches).
_POOL_BATCHES = 50


def _is_default(path: str | Path | None) -> bool:
    if path is None or str(path) in ("", "default"):
        return True
    return Path(path).resolve() == Path(default_model_path()).resolve()


def _resolve_base(path: str | None) -> str:
    return default_model_path() if _is_default(path) else str(path)


class BertLoadOptions(LoadOptions):
    """Where and how a loaded router scores. The pair is fixed at training time: naming it is
    allowed, naming another is an error."""

    device: DeviceName | None = None
    bf16: bool = False
    batch_tokens: int = Field(default=CLASSIFIER_BATCH_TOKENS, ge=1)
    max_batch_size: int = Field(default=MAX_BATCH_ROWS, ge=1)
    strong_model: str | None = None
    weak_model: str | None = None


class BertClassifier(nn.Module):
    """Encoder -> pooled sentence vector -> dropout -> linear head over `CLASS_LABELS`."""

    def __init__(self, encoder: nn.Module, pooling: str = "mean", dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, len(CLASS_LABELS))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(**features).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            # Padding must not dilute the mean: a prompt scores the same in any batch.
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


class BertRouter(BaseRouter):
    kind = "bert"
    load_options: ClassVar[type[LoadOptions]] = BertLoadOptions

    def __init__(
        self,
        net: BertClassifier,
        tokenizer: Any,
        *,
        base_model: str | None = None,
        max_tokens: int = 256,
        head_tokens: int = 64,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        hyperparameters: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        bf16: bool = False,
        batch_tokens: int = CLASSIFIER_BATCH_TOKENS,
        max_batch_size: int = MAX_BATCH_ROWS,
    ) -> None:
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.base_model = None if _is_default(base_model) else str(base_model)
        self.strong_model = normalize_model_name(strong_model)
        self.weak_model = normalize_model_name(weak_model)
        self.hyperparameters = dict(hyperparameters or {})
        # bf16 autocast only where it is fast and supported; elsewhere fp32 scores.
        self.bf16 = bool(bf16 and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("BertRouter needs a fast (Rust) tokenizer: tokenizer.json")
        self.max_tokens = min(max_tokens, self._model_max_tokens())
        self.head_tokens = head_tokens
        self.window = TokenWindow(tokenizer, self.max_tokens, head_tokens)

    # -- tokens -------------------------------------------------------------------------

    def _model_max_tokens(self) -> int:
        limits = [self.net.encoder.config.max_position_embeddings]
        # RoBERTa-style models reserve position slots; the tokenizer knows the usable length.
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and tokenizer_max < 1_000_000:
            limits.append(tokenizer_max)
        return min(limits)

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens; a prompt over the window keeps its first
        `head_tokens` and its end, where a long prompt's question usually is."""
        return self.window.token_ids(prompts)

    def _collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        features = self.window.collate(ids)
        return {k: v.to(self.device, non_blocking=True) for k, v in features.items()}

    def _length_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        return length_batches(lengths, self.max_batch_size, self.batch_tokens)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _logits(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """float32 logits (n, 3) on the CPU, in the order of `ids`."""
        out = torch.empty((len(ids), len(CLASS_LABELS)), dtype=torch.float32)
        if not ids:
            return out
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for batch in self._length_batches(lengths):
                    logits = self.net(self._collate([ids[i] for i in batch]))
                    out[torch.from_numpy(batch)] = logits.float().cpu()
        finally:
            self.net.train(was_training)
        return out

    # -- scoring ------------------------------------------------------------------------

    def probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, 3) float64 probabilities over `CLASS_LABELS` (strong, tie, weak)."""
        logits = self._logits(self.token_ids(prompts))
        return torch.softmax(logits.double(), dim=-1).numpy()

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        p = self.probabilities(prompts)
        # The paper's form: 1 - (P(tie) + P(weak wins)); clipped against rounding.
        return np.clip(1.0 - (p[:, TIE] + p[:, WEAK]), 0.0, 1.0)

    @property
    def pair(self) -> tuple[str, str]:
        return self.strong_model, self.weak_model

    # -- checkpoint ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        encoder_config = json.loads(self.net.encoder.config.to_json_string(use_diff=False))
        return {
            # null means the packaged MiniLM, resolved at load time: checkpoints stay portable.
            "base_model": self.base_model,
            "encoder_config": encoder_config,
            "pooling": self.net.pooling,
            "dropout": float(self.net.dropout.p),
            "max_tokens": self.max_tokens,
            "head_tokens": self.head_tokens,
            "labels": list(CLASS_LABELS),
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "hyperparameters": self.hyperparameters,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        # The whole fine-tuned encoder plus head: the base path is needed for the tokenizer only.
        return {k: v.detach().float() for k, v in self.net.state_dict().items()}

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: BertLoadOptions
    ) -> BertRouter:
        if tuple(config.get("labels", CLASS_LABELS)) != CLASS_LABELS:
            raise ValueError(
                f"unsupported label order {config['labels']!r}; expected {CLASS_LABELS}"
            )
        for key in ("strong_model", "weak_model"):
            wanted = getattr(options, key)
            if wanted and normalize_model_name(wanted) != config[key]:
                raise cls.option_error(
                    key,
                    wanted,
                    f"a bert router is trained for one pair ({config['strong_model']} vs "
                    f"{config['weak_model']})",
                )
        offline()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        base = _resolve_base(config.get("base_model"))
        if config.get("encoder_config"):
            fields = dict(config["encoder_config"])
            encoder_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        else:
            encoder_config = AutoConfig.from_pretrained(base, local_files_only=True)
        encoder = AutoModel.from_config(encoder_config).float()
        net = BertClassifier(encoder, config.get("pooling", "mean"), config.get("dropout", 0.1))
        net.load_state_dict(tensors)
        return cls(
            net,
            AutoTokenizer.from_pretrained(base, local_files_only=True),
            base_model=config.get("base_model"),
            max_tokens=config["max_tokens"],
            head_tokens=config["head_tokens"],
            strong_model=config["strong_model"],
            weak_model=config["weak_model"],
            hyperparameters=config.get("hyperparameters"),
            device=options.device,
            bf16=options.bf16,
            batch_tokens=options.batch_tokens,
            max_batch_size=options.max_batch_size,
        )

    @classmethod
    def from_base(
        cls,
        base_model: str | None = None,
        *,
        pooling: str = "mean",
        dropout: float = 0.1,
        max_tokens: int = 256,
        head_tokens: int = 64,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        device: str | None = None,
        label_prior: np.ndarray | None = None,
    ) -> BertRouter:
        """An untrained router over a local BERT-family model (default: the packaged MiniLM).

        The head starts at small random weights and log-prior biases: on imbalanced labels
        (strong wins dominate the real data) the first steps then refine the prior instead of
        finding it.
        """
        offline()
        from transformers import AutoModel, AutoTokenizer

        path = _resolve_base(base_model)
        # fp32 master weights whatever dtype the base was saved in.
        encoder = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        net = BertClassifier(encoder, pooling, dropout)
        with torch.no_grad():
            net.head.weight.normal_(0.0, 0.02)
            n = len(CLASS_LABELS)
            prior = np.full(n, 1.0 / n) if label_prior is None else label_prior
            net.head.bias.copy_(torch.from_numpy(np.log(np.clip(prior, 1e-3, None))))
        return cls(
            net,
            AutoTokenizer.from_pretrained(path, local_files_only=True),
            base_model=None if _is_default(base_model) else str(Path(path).resolve()),
            max_tokens=max_tokens,
            head_tokens=head_tokens,
            strong_model=strong_model,
            weak_model=weak_model,
            device=device,
        )

    # -- training -----------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        battles: pd.DataFrame,
        *,
        seed: int = 0,
        embedder: dict[str, Any] | None = None,
        base_model: str | None = None,
        epochs: int = 1,
        lr: float = 3e-5,
        batch_size: int = 32,
        max_tokens: int = 256,
        head_tokens: int = 64,
        holdout: float = 0.1,
        max_examples: int | None = None,
        weight_decay: float = 0.01,
        warmup: float = 0.1,
        pooling: str = "mean",
        n_tiers: int = 10,
        pair_battles: bool = True,
        device: str | None = None,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
    ) -> BertRouter:
        """Fine-tune encoder + head with AdamW (linear warmup then linear decay) on the
        battle-weighted 3-way cross-entropy; report validation loss/accuracy on held-out
        prompts after every epoch and keep the best epoch (the last without a holdout).

        `max_examples` caps the labelled battles (a seeded sample) before they are grouped
        by prompt; `pair_battles` adds the configured pair's own battles (see module doc).
        """
        seed_everything(seed)
        if base_model is None and embedder:
            base_model = embedder.get("model_path")
        strong, weak = normalize_model_name(strong_model), normalize_model_name(weak_model)
        labelled = classifier_labels(battles, strong, weak, n_tiers, pair_battles)
        if max_examples is not None and len(labelled) > max_examples:
            labelled = labelled.sample(n=max_examples, random_state=seed).reset_index(drop=True)
            logger.info(f"sampled {max_examples} labelled battles (max_examples)")
        prompts, targets, weights = aggregate_labels(labelled)
        shares = targets.T @ weights / weights.sum()
        logger.info(
            f"{len(labelled)} labelled battles over {len(prompts)} prompts; label shares "
            + ", ".join(f"{name} {x:.1%}" for name, x in zip(CLASS_LABELS, shares, strict=True))
        )
        if holdout > 0 and len(prompts) > 1:
            train_mask, val_mask = grouped_split(pd.Series(prompts), holdout, seed)
        else:
            train_mask, val_mask = np.ones(len(prompts), bool), np.zeros(len(prompts), bool)
        train_idx, val_idx = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
        prior = targets[train_idx].T @ weights[train_idx] / weights[train_idx].sum()

        router = cls.from_base(
            base_model,
            pooling=pooling,
            max_tokens=max_tokens,
            head_tokens=head_tokens,
            strong_model=strong,
            weak_model=weak,
            device=device,
            label_prior=prior,
        )
        router.bf16 = router.device.type == "cuda" and torch.cuda.is_bf16_supported()
        ids = router.token_ids(prompts)
        lengths = np.array([len(x) for x in ids])
        logger.info(
            f"training {router.base_model or 'default MiniLM'} on {router.device}: "
            f"{len(train_idx)} train / {len(val_idx)} validation prompts, "
            f"mean {lengths.mean():.0f} tokens (max_tokens {router.max_tokens})"
        )
        target_t = torch.from_numpy(targets.astype(np.float32))
        weight_t = torch.from_numpy(weights.astype(np.float32))

        majority = float(prior.max())
        if len(val_idx):
            val_prior = targets[val_idx].T @ weights[val_idx] / weights[val_idx].sum()
            majority = float(val_prior[int(np.argmax(prior))])
            logger.info(
                f"validation majority-class ({CLASS_LABELS[int(np.argmax(prior))]}) accuracy "
                f"{majority:.3f}"
            )

        net = router.net
        decay = [p for p in net.parameters() if p.ndim >= 2]
        no_decay = [p for p in net.parameters() if p.ndim < 2]  # biases, LayerNorm
        optimiser = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay}],
            lr=lr,
            weight_decay=0.0,
        )
        rng = np.random.default_rng(seed)
        schedule = warmup_decay_schedule(
            optimiser, _n_batches(len(train_idx), batch_size) * epochs, warmup
        )

        def epoch_batches(_: int) -> list[np.ndarray]:
            return [train_idx[b] for b in _train_batches(lengths[train_idx], batch_size, rng)]

        def batch_loss(rows: np.ndarray) -> tuple[torch.Tensor, float]:
            features = router._collate([ids[i] for i in rows])
            with router._autocast():
                logits = net(features)
            loss = _weighted_ce(
                logits.float(), target_t[rows].to(router.device), weight_t[rows].to(router.device)
            )
            return loss, float(len(rows))

        def validate() -> dict[str, float]:
            logits = router._logits([ids[i] for i in val_idx])
            loss, accuracy = _weighted_metrics(logits, target_t[val_idx], weight_t[val_idx])
            return {"val_loss": loss, "val_accuracy": accuracy}

        fit = fit_epochs(
            net,
            optimiser,
            epoch_batches,
            batch_loss,
            epochs=epochs,
            schedule=schedule,
            clip_norm=1.0,
            validate=validate if len(val_idx) else None,
            keep_best=True,
            desc="bert",
            unit="prompts",
        )
        router.bf16 = False  # inference precision is the loader's choice
        router.hyperparameters = {
            "seed": seed,
            "epochs": epochs,
            "best_epoch": fit.best_epoch,
            "lr": lr,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "holdout": holdout,
            "max_examples": max_examples,
            "n_tiers": n_tiers,
            "pair_battles": pair_battles,
            "labelled_battles": len(labelled),
            "prompts": len(prompts),
            "validation_majority_accuracy": majority if len(val_idx) else None,
            "history": fit.history,
        }
        return router


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per_prompt = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    return (per_prompt * weight).sum() / weight.sum()


def _weighted_metrics(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> tuple[float, float]:
    """Battle-weighted loss and accuracy: each battle counts, right when its label is the
    prompt's argmax."""
    loss = float(_weighted_ce(logits, target, weight))
    hit = target.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    return loss, float((hit * weight).sum() / weight.sum())


def _n_batches(n: int, batch_size: int) -> int:
    """How many batches `_train_batches` cuts `n` prompts into."""
    pool = batch_size * _POOL_BATCHES
    return (n // pool) * _POOL_BATCHES + math.ceil((n % pool) / batch_size)


def _train_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of 50 batches, cut,
    shuffle the batches. Padding falls several-fold on mixed-length data; order stays random."""
    order = rng.permutation(len(lengths))
    pool = batch_size * _POOL_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
