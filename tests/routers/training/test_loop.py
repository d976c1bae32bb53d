"""The shared training recipe: the learning-rate schedule and the epoch loop."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from routers.training.loop import (
    fit_epochs,
    warmup_decay,
    warmup_decay_schedule,
    warmup_steps,
)


def test_warmup_steps_are_a_fraction_and_at_least_one():
    assert warmup_steps(100, 0.1) == 10
    assert warmup_steps(100, 0.03) == 3
    assert warmup_steps(5, 0.1) == 1
    assert warmup_steps(1, 0.0) == 1


def test_linear_warmup_then_linear_decay_to_zero():
    total, warm = 100, 10
    factors = [warmup_decay(step, total, warm) for step in range(total + 1)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == factors[10] == 1.0
    assert all(a < b for a, b in itertools.pairwise(factors[:10]))
    assert all(a > b for a, b in itertools.pairwise(factors[10:]))
    assert factors[55] == pytest.approx(0.5)
    assert factors[total] == 0.0
    # A run that is all warm-up (one step) ends at zero instead of dividing by it.
    assert warmup_decay(1, 1, 1) == 0.0


def test_the_scheduler_follows_the_factor():
    param = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.SGD([param], lr=1.0)
    schedule = warmup_decay_schedule(optimiser, 20, 0.1)
    rates = []
    for _ in range(20):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        schedule.step()
    warm = warmup_steps(20, 0.1)
    assert rates == pytest.approx([warmup_decay(step, 20, warm) for step in range(20)])


class _Scripted:
    """A one-weight model whose validation losses are scripted, remembering each epoch's
    weight so that the restored one can be named."""

    def __init__(self, losses: list[float]) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.losses = list(losses)
        self.weights: list[float] = []
        self.optimiser = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def batches(self, epoch: int) -> list[list[float]]:
        return [[1.0, 2.0], [3.0]]

    def loss(self, batch: list[float]) -> tuple[torch.Tensor, float]:
        x = torch.tensor(batch).unsqueeze(1)
        return (self.model(x) - 1.0).pow(2).mean(), float(len(batch))

    def validate(self) -> dict[str, float]:
        assert not self.model.training and not torch.is_grad_enabled()
        self.weights.append(float(self.model.weight))
        return {"val_loss": self.losses[len(self.weights) - 1], "val_accuracy": 0.5}


def test_keep_best_restores_the_best_epoch(caplog):
    caplog.set_level(logging.INFO, logger="routers")
    run = _Scripted([3.0, 1.0, 2.0, 2.5])
    result = fit_epochs(
        run.model,
        run.optimiser,
        run.batches,
        run.loss,
        epochs=4,
        validate=run.validate,
        keep_best=True,
        desc="toy",
    )
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.validation_losses == [3.0, 1.0, 2.0, 2.5]
    assert (result.best_epoch, result.best_loss) == (2, 1.0)
    assert float(run.model.weight.detach()) == run.weights[1] != run.weights[-1]
    assert not run.model.training
    assert "toy epoch 1: train loss" in caplog.text
    assert "validation loss 3.0000, accuracy 0.5000" in caplog.text
    assert "toy: kept epoch 2" in caplog.text


def test_patience_stops_early_and_without_keep_best_the_last_weights_stay():
    run = _Scripted([3.0, 1.0, 2.0, 2.5, 0.5, 0.1])
    result = fit_epochs(
        run.model,
        run.optimiser,
        run.batches,
        run.loss,
        epochs=6,
        validate=run.validate,
        patience=2,
    )
    assert len(result.history) == 4
    assert result.best_epoch == 2
    assert float(run.model.weight.detach()) == run.weights[-1]


def test_without_validation_the_last_epoch_is_kept_and_the_gradient_is_clipped():
    run = _Scripted([])
    seen: list[float] = []
    original = run.optimiser.step

    def step(*args, **kwargs):
        seen.append(float(run.model.weight.grad.norm()))
        return original(*args, **kwargs)

    run.optimiser.step = step
    result = fit_epochs(run.model, run.optimiser, run.batches, run.loss, epochs=2, clip_norm=1e-3)
    assert result.best_epoch == 2 and result.validation_losses == []
    assert len(seen) == 4 and max(seen) <= 1e-3 + 1e-9
    assert all(r["train_loss"] > 0 for r in result.history)
