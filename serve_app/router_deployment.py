"""The router as a Serve deployment: loads router directories, scores with dynamic batching."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from ray import serve
from ray.serve import metrics

from routers import cap_threads
from routers.checkpoint import load_router
from routers.protocol import is_multi
from routers.shipped import router_path
from routers.thresholds import recorded_share_thresholds, resolve_threshold
from serve_app.config import BatchingConfig


class RouterDeployment:
    """Scores prompts for every configured router; concurrent requests are batched.

    Only the router protocols (`score`; an N-model router's `qualities`, one row of its models'
    predicted qualities per prompt) and checkpoint loading are used here.
    """

    def __init__(
        self, routers: list[dict[str, Any]], batching: dict[str, Any], threads: int | None = None
    ) -> None:
        if threads:
            cap_threads(threads)
        self._routers: dict[str, Any] = {}
        self._thresholds: dict[str, float] = {}
        self._share_tables: dict[str, dict[float, float]] = {}
        self._models: dict[str, list[str]] = {}
        for spec in routers:
            path = router_path(spec.get("path"))
            router = load_router(path, **spec.get("options", {}))
            names = [spec["name"], *spec.get("aliases", [])]
            for name in names:
                self._routers[name] = router
            if is_multi(router):
                self._models |= {name: list(router.models) for name in names}
                continue
            threshold = resolve_threshold(path, threshold=spec.get("threshold"))
            table = recorded_share_thresholds(path)
            for name in names:
                self._thresholds[name] = threshold
                self._share_tables[name] = table
        # Load embedders now: the replica reports ready only once it can answer at full speed.
        for router in {id(r): r for r in self._routers.values()}.values():
            router.score(["warm up"])
        self.reconfigure(batching)
        self._batch_counts: Counter[int] = Counter()
        self._batch_sizes = metrics.Histogram(
            "routeray_router_batch_size",
            description="Prompts scored per batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        )
        self._latency = metrics.Histogram(
            "routeray_router_batch_latency_seconds",
            description="Seconds to score one batch.",
            boundaries=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
        )

    def reconfigure(self, batching: dict[str, Any]) -> None:
        settings = BatchingConfig.model_validate(batching)
        self.score.set_max_batch_size(settings.max_batch_size)
        self.score.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def batch_stats(self) -> dict[int, int]:
        """How many batches of each size this replica has scored (for benchmarks)."""
        return dict(self._batch_counts)

    def describe(self) -> dict[str, float]:
        """Two-model router names (aliases included) and their default thresholds."""
        return dict(self._thresholds)

    def multi_models(self) -> dict[str, list[str]]:
        """N-model router names (aliases included) and the models each chooses among, in the
        order of the quality rows `score` returns for them."""
        return {name: list(models) for name, models in self._models.items()}

    def share_tables(self) -> dict[str, dict[float, float]]:
        """Router names (aliases included) and the thresholds their directories record for
        each strong share (`router-<name>-<N>pct`); {} for a router that records none."""
        return dict(self._share_tables)

    async def score_many(self, items: list[tuple[str, str]]) -> list[float | list[float]]:
        """Several (router name, prompt) items in one call (POST /v1/route): each joins the
        batching queue as a call of its own would, so they are scored in batches of up to
        max_batch_size, mixed with other requests' prompts."""
        return list(await asyncio.gather(*(self.score(item) for item in items)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def score(self, items: list[tuple[str, str]]) -> list[float | list[float]]:
        """Each item is (router name, prompt); one batch may mix routers. A two-model router's
        answer is its score, an N-model router's the prompt's row of qualities."""
        start = time.perf_counter()
        out: list[float | list[float]] = [0.0] * len(items)
        by_router: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            by_router.setdefault(name, []).append(i)
        for name, rows in by_router.items():
            router = self._routers[name]
            texts = [items[i][1] for i in rows]
            # Scoring is CPU/GPU-bound; off the event loop so the replica keeps accepting work.
            if name in self._models:
                qualities = await asyncio.to_thread(router.qualities, texts)
                for i, row in zip(rows, qualities, strict=True):
                    out[i] = [float(q) for q in row]
                continue
            scores = await asyncio.to_thread(router.score, texts)
            for i, s in zip(rows, scores, strict=True):
                out[i] = float(s)
        self._batch_sizes.observe(len(items))
        self._batch_counts[len(items)] += 1
        self._latency.observe(time.perf_counter() - start)
        return out
