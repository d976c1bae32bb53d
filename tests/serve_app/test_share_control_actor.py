"""The ingress side of the share controller without Serve: two `ControlClient`s (as two
ingress replicas) on the run's local Ray share one `ShareControlActor`; decisions never wait
on it; a new client joins the running state; a changed target starts afresh; a controlled
router spec refuses a fixed threshold too."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pydantic import ValidationError

from routers import Prices
from routers.decision.share_control import ShareTarget
from serve_app.config import RouterSpec
from serve_app.share_control import (
    NAMESPACE,
    ControlClient,
    controller_actor_name,
    delete_controller_actor,
)

APP = "actor-test"
TARGET = ShareTarget(strong_share=0.25, window=40, min_scores=10)


def client(target: ShareTarget = TARGET, exported: dict | None = None) -> ControlClient:
    def export(name: str, figures: dict) -> None:
        if exported is not None:
            exported[name] = figures

    return ControlClient(
        APP, {"c": ("c", target, 0.9), "alias": ("c", target, 0.9)}, Prices(), export
    )


async def until(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_replicas_share_one_controller_and_a_new_one_joins_its_state(local_ray):
    delete_controller_actor(APP)

    async def scenario() -> None:
        exported: dict = {}
        first, second = client(exported=exported), client()
        assert await first.threshold("c") == 0.9  # the start, until min_scores are in
        assert await second.threshold("alias") == 0.9
        scores = list(np.linspace(0.0, 1.0, 40))
        # Each replica reports half; neither awaits anything to record.
        first.record("c", scores[::2], [s >= 0.9 for s in scores[::2]], ["hi"] * 20)
        second.record("alias", scores[1::2], [s >= 0.9 for s in scores[1::2]], ["hi"] * 20)
        await until(
            lambda: exported.get("c", {}).get("requests") == 40, "the reports never arrived"
        )
        # Both replicas' copies move to the window's 75th percentile.
        await until(lambda: first.thresholds["c"] < 0.9, "first never took the new threshold")
        await until(lambda: second.thresholds["c"] < 0.9, "second never took it")
        assert first.thresholds["c"] == pytest.approx(0.75, abs=0.03)
        assert exported["c"]["observed_share"] == pytest.approx(4 / 40)

        joined = client()
        assert await joined.threshold("c") == pytest.approx(first.thresholds["c"])
        changed = client(ShareTarget(strong_share=0.5, window=40, min_scores=10))
        assert await changed.threshold("c") == 0.9  # a new target starts from its own start

    try:
        asyncio.run(scenario())
        actor = local_ray.get_actor(controller_actor_name(APP), namespace=NAMESPACE)
        assert local_ray.get(actor.snapshot.remote())["c"]["requests"] == 0
    finally:
        delete_controller_actor(APP)


def test_a_controlled_router_takes_no_fixed_threshold():
    with pytest.raises(ValidationError, match="not both"):
        RouterSpec(name="x", threshold=0.5, control={"strong_share": 0.3})
    spec = RouterSpec.model_validate({"name": "x", "control": {"spend_usd_per_hour": 2}})
    assert spec.control is not None and spec.control.spend_usd_per_hour == 2
