"""The share controllers of one Serve app, held once for all its ingress replicas.

A router spec with `control:` routes `router-<name>` at the threshold of a
`routers.decision.share_control.ShareController`. Its state lives in one named, detached Ray
actor per app (`ShareControlActor`, created with get_if_exists by whichever ingress replica comes
first):

- not a Serve deployment, because Serve replaces a failed or rescaled replica with a fresh one
  (its state gone) and may run several; one actor, detached, outlives every ingress replica
  (killing or autoscaling them keeps the controller) and ends with `serve shutdown` only when
  deleted (`delete_controller_actor`);
- the ingress never waits on it per request: each replica decides at its own copy of the
  threshold, queues its scores and decisions, and a background task sends them every
  `REPORT_INTERVAL_S`; the answer to each report carries the new thresholds back.

Nothing about a prompt but its score and estimated cost leaves the ingress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from routers.decision.share_control import ShareController, ShareTarget, request_costs
from routers.prices import Prices

logger = logging.getLogger("ray.serve")
REPORT_INTERVAL_S = 0.25
# The first request of a new ingress replica waits this long, once, for the controller's
# current threshold (a replaced replica must not route at a stale one); past it, it routes at
# the configured initial threshold and picks the controller's up with its next report.
REGISTER_TIMEOUT_S = 5.0
NAMESPACE = "serve"


def controller_actor_name(app_name: str) -> str:
    return f"routeray-share-control:{app_name}"


@ray.remote(num_cpus=0, max_restarts=0)
class ShareControlActor:
    """One ShareController per controlled router name."""

    def __init__(self) -> None:
        self.controllers: dict[str, ShareController] = {}

    def register(self, name: str, target: dict[str, Any], initial: float | None) -> dict:
        """Start a controller for `name`, or keep the running one when its target is the
        same (a new ingress replica joining); a changed target starts afresh."""
        wanted = ShareTarget.model_validate(target)
        held = self.controllers.get(name)
        if held is None or held.target != wanted:
            self.controllers[name] = ShareController(wanted, initial_threshold=initial)
        return self.snapshot()

    def report(self, batches: dict[str, dict[str, Any]], now: float) -> dict:
        """Scores, decisions and costs from one ingress replica since its last report."""
        for name, batch in batches.items():
            controller = self.controllers.get(name)
            if controller is None:
                continue
            controller.observe(
                np.asarray(batch["scores"], dtype=np.float64),
                now,
                costs=np.asarray(batch["costs"], dtype=np.float64).reshape(-1, 2),
                strong=np.asarray(batch["strong"], dtype=bool),
            )
        return self.snapshot()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: c.snapshot() for name, c in self.controllers.items()}

    def state(self, name: str) -> dict[str, Any]:
        return self.controllers[name].state()


def delete_controller_actor(app_name: str) -> None:
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(controller_actor_name(app_name), namespace=NAMESPACE))


@dataclass
class _Pending:
    scores: list[float] = field(default_factory=list)
    strong: list[bool] = field(default_factory=list)
    costs: list[list[float]] = field(default_factory=list)


class ControlClient:
    """An ingress replica's side: the local thresholds, the queued reports and the task that
    sends them. `targets`: {router name or alias: (controller name, target, initial)}."""

    def __init__(
        self,
        app_name: str,
        targets: dict[str, tuple[str, ShareTarget, float | None]],
        prices: Prices,
        on_snapshot: Any = None,
    ) -> None:
        self.app_name = app_name
        self.names = {alias: name for alias, (name, _, _) in targets.items()}
        self.targets = {name: (target, initial) for name, target, initial in targets.values()}
        self.thresholds: dict[str, float | None] = {
            name: initial for name, (_, initial) in self.targets.items()
        }
        self.prices = prices
        self.on_snapshot = on_snapshot
        self._pending: dict[str, _Pending] = {}
        self._actor: Any = None
        self._registered: asyncio.Task | None = None
        self._loop: asyncio.Task | None = None

    def controls(self, router: str) -> bool:
        return router in self.names

    async def threshold(self, router: str) -> float | None:
        """The threshold to route `router` at now (waits only for a new replica's first
        registration, at most REGISTER_TIMEOUT_S)."""
        self._start()
        if self._registered is not None and not self._registered.done():
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._registered), REGISTER_TIMEOUT_S)
        return self.thresholds[self.names[router]]

    def record(self, router: str, scores: list[float], strong: list[bool], texts: list[str]):
        """Queue decisions just taken; sent with the next report, never awaited here."""
        pending = self._pending.setdefault(self.names[router], _Pending())
        pending.scores += scores
        pending.strong += strong
        pending.costs += request_costs(self.prices, texts).tolist()

    def _start(self) -> None:
        if self._loop is None:
            self._registered = asyncio.ensure_future(self._register())
            self._loop = asyncio.ensure_future(self._run())

    async def _register(self) -> None:
        self._actor = ShareControlActor.options(
            name=controller_actor_name(self.app_name),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
        ).remote()
        snapshot = {}
        for name, (target, initial) in self.targets.items():
            snapshot = await self._actor.register.remote(name, target.model_dump(), initial)
        self._apply(snapshot)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            try:
                if self._registered is not None and not self._registered.done():
                    continue
                if self._actor is None or (
                    self._registered is not None and self._registered.exception() is not None
                ):
                    self._registered = asyncio.ensure_future(self._register())
                    continue
                batches, self._pending = self._pending, {}
                payload = {
                    name: {"scores": p.scores, "strong": p.strong, "costs": p.costs}
                    for name, p in batches.items()
                }
                self._apply(await self._actor.report.remote(payload, time.time()))
            except Exception as exc:  # the controller gone: keep routing, register again
                logger.warning("share controller unreachable (%s); routing on", exc)
                self._actor = None

    def _apply(self, snapshot: dict[str, dict[str, Any]]) -> None:
        for name, figures in snapshot.items():
            if name in self.thresholds and figures.get("threshold") is not None:
                self.thresholds[name] = figures["threshold"]
            if self.on_snapshot is not None:
                self.on_snapshot(name, figures)
