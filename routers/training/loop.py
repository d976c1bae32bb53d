"""The training recipe every gradient-trained router shares: seeding, the learning-rate schedule
and the epoch loop (AdamW steps, optional gradient clipping, validation after every epoch,
early stopping and keeping the best epoch's weights)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from routers.progress import progress

logger = logging.getLogger(__name__)

Batch = TypeVar("Batch", bound=Sized)
# The validation metric that picks the best epoch and drives early stopping.
VAL_LOSS = "val_loss"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_steps(total_steps: int, warmup: float) -> int:
    """Steps of linear warm-up: a `warmup` fraction of all steps, at least one."""
    return max(1, int(warmup * total_steps))


def warmup_decay(step: int, total_steps: int, warm: int) -> float:
    """The learning-rate factor at `step` (0-based): linear warm-up to 1 over the first `warm`
    steps, then linear decay to 0 at `total_steps`."""
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warm))


def warmup_decay_schedule(
    optimiser: torch.optim.Optimizer, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_decay` as a scheduler stepped once per optimiser step."""
    total = max(1, total_steps)
    warm = warmup_steps(total, warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: warmup_decay(step, total, warm)
    )


@dataclass
class FitResult:
    """What `fit_epochs` did: one record per epoch run (epoch, train_loss, examples_per_s and
    the validation metrics) and the epoch whose weights the model holds at the end."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf

    @property
    def validation_losses(self) -> list[float]:
        return [record[VAL_LOSS] for record in self.history if VAL_LOSS in record]


def fit_epochs(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    epoch_batches: Callable[[int], Sequence[Batch]],
    batch_loss: Callable[[Batch], tuple[torch.Tensor, float]],
    *,
    epochs: int,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip_norm: float | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    patience: int | None = None,
    keep_best: bool = False,
    desc: str = "training",
    unit: str = "examples",
) -> FitResult:
    """Train `model` for up to `epochs` epochs and return the per-epoch history.

    `epoch_batches(epoch)` gives the epoch's batches (epoch counts from 1), each a sequence of
    examples; `batch_loss(batch)` gives the batch's mean loss and its weight in the epoch's
    mean training loss. Every batch is one optimiser step (then one `schedule` step), with the
    gradient norm clipped to `clip_norm` if given.

    With `validate` (run in eval mode without gradients after every epoch; its "val_loss" is
    the criterion) training stops once `patience` epochs have passed without a lower
    validation loss, and with `keep_best` the trainable weights of the best epoch are restored
    at the end (copied to the host, so a large model does not need twice its GPU memory).
    Without `validate` the best epoch is the last.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    result: FitResult = FitResult(best_epoch=epochs)
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        loss_sum, weight_sum, examples = 0.0, 0.0, 0
        batches = epoch_batches(epoch)
        for batch in progress(batches, f"{desc} epoch {epoch}", len(batches), unit="batch"):
            optimiser.zero_grad(set_to_none=True)
            loss, weight = batch_loss(batch)
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], clip_norm)
            optimiser.step()
            if schedule is not None:
                schedule.step()
            loss_sum += float(loss.detach()) * weight
            weight_sum += weight
            examples += len(batch)
        elapsed = time.perf_counter() - started
        record: dict[str, float] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(weight_sum, 1e-12),
            "examples_per_s": examples / elapsed if elapsed else math.nan,
        }
        message = (
            f"{desc} epoch {epoch}: train loss {record['train_loss']:.4f}, "
            f"{record['examples_per_s']:.1f} {unit}/s"
        )
        if validate is not None:
            model.eval()
            with torch.no_grad():
                record.update(validate())
            message += "; validation " + ", ".join(
                f"{name.removeprefix('val_')} {value:.4f}"
                for name, value in record.items()
                if name.startswith("val_")
            )
            if record[VAL_LOSS] < result.best_loss:
                result.best_loss, result.best_epoch, since_best = record[VAL_LOSS], epoch, 0
                # Only worth a copy if a later epoch may be worse.
                if keep_best and epoch < epochs:
                    best_state = {n: p.detach().to("cpu", copy=True) for n, p in trainable}
                else:
                    best_state = None
            else:
                since_best += 1
        result.history.append(record)
        logger.info(message)
        if validate is not None and patience is not None and since_best >= patience:
            break
    if validate is None:
        result.best_epoch = len(result.history)
    if best_state is not None and result.best_epoch != len(result.history):
        with torch.no_grad():
            for name, param in trainable:
                param.copy_(best_state[name])
        logger.info(
            f"{desc}: kept epoch {result.best_epoch} "
            f"(lowest validation loss {result.best_loss:.4f})"
        )
    model.eval()
    return result
