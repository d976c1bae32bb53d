"""A load ramp against a Serve app whose router deployment and ingress autoscale, shared by
tests/serve_app/test_autoscaling.py (which asserts on it) and bench/autoscale.py (which prints
it).

The app routes with `minilm` (a transformer pass per prompt keeps requests queued on two cores;
the static-embedding `fast` router answers before a queue forms) and plays both models with
the strong-API stand-in, so no vLLM engine competes for the cores: the load is `POST /v1/route`,
where nothing is generated. Replica counts are Serve's own (`serve.status()`), sampled while the
load runs. The ramp's phases:

- before: one sequential client (below the target: one replica);
- scale-up: many clients on top of it, until Serve has reported a second RUNNING replica of
  every watched deployment (the router, and the ingress when it autoscales);
- scaled: the same load for a while on the scaled deployments;
- scale-down: the many clients stop, the one client goes on, until each watched deployment is
  down to one replica;
- after: the one client for a while longer.

Every request's outcome is kept with the phase in which it started, so that an error during a
replica's start or stop is counted where it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from backends import OpenAIBackendConfig
from routeray.demo.config import STRONG_MODEL, WEAK_MODEL, free_port
from serve_app.config import RouterDeploymentConfig, RouterSpec, ServeConfig

PHASES = ("before", "scale-up", "scaled", "scale-down", "after")
ROUTER = "Router"
INGRESS = "Ingress"
ROUTER_NAME = "minilm"
# Scaling within seconds rather than Serve's minutes-long defaults (upscale 30 s, downscale
# 600 s, a 30 s look-back, metrics every 10 s): a queue of two requests per replica asks for
# another one. metrics_interval_s is deprecated in Ray 2.60 but is still the per-deployment
# push interval of the handles' and replicas' queue lengths (the environment variables that
# will replace it are read when a process starts, too late for a cluster that is running).
ROUTER_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2.0,
    "downscale_delay_s": 5.0,
    "look_back_period_s": 2.0,
    "metrics_interval_s": 0.5,
}
# The ingress only waits on other replicas (minilm is scored on the router deployment), so a
# request costs it little; a small target makes this machine's ramp visible to it too.
INGRESS_AUTOSCALING: dict[str, Any] = {**ROUTER_AUTOSCALING, "target_ongoing_requests": 4}


def ramp_prompts() -> list[str]:
    """1,000 generated prompts of over 30 words: long enough that each costs a MiniLM replica
    real work, and varied enough for a share target. The long-context prompts alone will not
    do: MiniLM sees the same first and last tokens of many of them, and ties in their scores
    made 36 % the nearest share to 30 % that a threshold could give."""
    from routeray.demo.prompts import generate_prompts

    return [p for p in generate_prompts(3000, seed=5) if len(p.split()) > 30][:1000]


def autoscaling_config(
    strong_url: str,
    weak_url: str,
    *,
    num_cpus: float,
    autoscaling: dict[str, Any] | None = None,
    ingress_autoscaling: dict[str, Any] | None = None,
    max_batch_size: int = 8,
    control: dict[str, Any] | None = None,
) -> ServeConfig:
    """The app under the ramp: `minilm` as router-minilm on an autoscaled router deployment,
    the ingress autoscaled as `ingress_autoscaling` says (None: one replica), stand-ins for both
    models. A small max_batch_size keeps a replica's batches short, so that queued requests
    count as queued instead of riding in one long batch. `control`: a share controller's target
    (`routers.decision.share_control.ShareTarget` fields) for router-minilm."""
    config = ServeConfig(
        # Scored on the router deployment, whatever the default placement of its kind.
        routers=[
            RouterSpec(name=ROUTER_NAME, path="minilm", placement="deployment", control=control)
        ],
        strong=OpenAIBackendConfig(model=STRONG_MODEL, base_url=strong_url),
        weak=OpenAIBackendConfig(model=WEAK_MODEL, base_url=weak_url),
        router_deployment=RouterDeploymentConfig(
            num_cpus=num_cpus, autoscaling=autoscaling or dict(ROUTER_AUTOSCALING)
        ),
    )
    config.router_deployment.batching.max_batch_size = max_batch_size
    config.ingress.autoscaling = ingress_autoscaling
    return config


@contextlib.contextmanager
def serving(app: Any, name: str) -> Iterator[str]:
    """`app` deployed as `name` under /<name> on this Ray's Serve: its base URL, ending in /v1.
    Serve is started on a free port when it is not running (and shut down after); a running
    Serve (another test's app) keeps its port and its apps."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    started = client is None
    if started:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    else:
        port = client.http_config.port
    try:
        serve.run(app, name=name, route_prefix=f"/{name}")
        yield f"http://127.0.0.1:{port}/{name}/v1"
    finally:
        from serve_app.share_control import delete_controller_actor

        with contextlib.suppress(Exception):
            serve.delete(name)
        # A share controller's actor outlives the app on purpose: gone with the app here.
        delete_controller_actor(name)
        if started:
            serve.shutdown()


def replica_states(app: str) -> dict[str, dict[str, int]]:
    """Serve's replica counts by state (RUNNING, STARTING, STOPPING...) per deployment."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {
        name: {str(getattr(state, "value", state)): n for state, n in d.replica_states.items()}
        for name, d in status.deployments.items()
    }


@dataclass(frozen=True)
class Outcome:
    phase: str  # the phase in which the request started
    t: float  # seconds from the ramp's start to the answer
    latency_s: float
    route: str | None  # "strong" / "weak"; None when the request failed
    threshold: float | None = None  # the threshold the decision was made at
    error: str | None = None


@dataclass(frozen=True)
class Sample:
    t: float
    phase: str
    states: dict[str, dict[str, int]]

    def running(self, deployment: str = ROUTER) -> int:
        return self.states.get(deployment, {}).get("RUNNING", 0)

    def total(self, deployment: str = ROUTER) -> int:
        return sum(self.states.get(deployment, {}).values())


@dataclass
class Ramp:
    """What one ramp saw; `scaled_up`/`scaled_down` say whether each wait ended in time."""

    watch: tuple[str, ...] = (ROUTER,)
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    phase_started: dict[str, float] = field(default_factory=dict)
    scaled_up: bool = False
    scaled_down: bool = False

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def in_phase(self, phase: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.phase == phase]

    def strong_share(self, phases: tuple[str, ...]) -> float:
        """Share of the answered requests started in `phases` that were routed strong."""
        routes = [o.route for o in self.outcomes if o.phase in phases and o.error is None]
        return sum(r == "strong" for r in routes) / len(routes) if routes else float("nan")

    def peak(self, deployment: str = ROUTER) -> int:
        return max((s.running(deployment) for s in self.samples), default=0)

    def last_states(self) -> dict[str, dict[str, int]]:
        return self.samples[-1].states if self.samples else {}

    def timeline(self) -> list[Sample]:
        """The samples at which any watched deployment's replica states changed."""
        changes: list[Sample] = []
        for s in self.samples:
            key = [s.states.get(d, {}) for d in self.watch]
            if not changes or key != [changes[-1].states.get(d, {}) for d in self.watch]:
                changes.append(s)
        return changes

    def phase_summary(self, phase: str) -> dict[str, float]:
        """Requests, errors, latency p50/p99 (ms) and strong share of the phase's requests."""
        rows = self.in_phase(phase)
        ok = [o for o in rows if o.error is None]
        lat = np.array([o.latency_s for o in ok]) * 1e3
        start = self.phase_started.get(phase, 0.0)
        later = [t for p, t in self.phase_started.items() if t > start]
        end = min(later) if later else (self.samples[-1].t if self.samples else start)
        return {
            "seconds": end - start,
            "requests": len(rows),
            "errors": len(rows) - len(ok),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "strong_share": (
                sum(o.route == "strong" for o in ok) / len(ok) if ok else float("nan")
            ),
        }


async def run_ramp(
    base_url: str,
    app: str,
    prompts: list[str],
    *,
    clients: int = 16,
    before_s: float = 5.0,
    scaled_s: float = 10.0,
    after_s: float = 5.0,
    up_deadline_s: float = 180.0,
    down_deadline_s: float = 180.0,
    sample_s: float = 0.5,
    watch: tuple[str, ...] = (ROUTER,),
    timeout_s: float = 120.0,
    model: str = f"router-{ROUTER_NAME}",
) -> Ramp:
    """Drive the ramp (module doc) against `base_url` (ending in /v1) of Serve app `app`,
    asking for routing decisions of `model` (a router-minilm name: a threshold or share suffix).
    The scale-up wait ends once every deployment in `watch` has shown at least 2 RUNNING
    replicas (not necessarily in the same sample: one may start sooner than the other), the
    scale-down wait once a sample shows each of them at exactly one replica, RUNNING, none
    starting or stopping. A wait that passes its deadline ends the ramp early with its flag
    False; the samples up to then say what Serve showed."""

    def scaled(samples: list[Sample]) -> bool:
        return all(any(s.running(d) >= 2 for s in samples) for d in watch)

    def settled(samples: list[Sample]) -> bool:
        return bool(samples) and all(
            samples[-1].running(d) == 1 and samples[-1].total(d) == 1 for d in watch
        )

    ramp = Ramp(watch=watch)
    start = time.monotonic()
    phase = "before"
    ramp.phase_started[phase] = 0.0
    heavy_stop, trickle_stop = asyncio.Event(), asyncio.Event()

    def now() -> float:
        return time.monotonic() - start

    def enter(name: str) -> None:
        nonlocal phase
        phase = name
        ramp.phase_started[name] = now()

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        started_in, t0 = phase, time.monotonic()
        route, threshold, error = None, None, None
        try:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            response = await client.post("/route", json=body)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {response.text[:300]}"
            else:
                data = response.json().get("data") or []
                if len(data) == 1 and data[0].get("route") in ("strong", "weak"):
                    route, threshold = data[0]["route"], data[0].get("threshold")
                else:
                    error = f"malformed answer: {response.text[:300]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        latency = time.monotonic() - t0
        ramp.outcomes.append(Outcome(started_in, now(), latency, route, threshold, error))

    async def client_loop(client: httpx.AsyncClient, first: int, step: int, stop: asyncio.Event):
        i = first
        while not stop.is_set():
            await one(client, prompts[i % len(prompts)])
            i += step

    async def sampler() -> None:
        while True:
            states = await asyncio.to_thread(replica_states, app)
            ramp.samples.append(Sample(now(), phase, states))
            await asyncio.sleep(sample_s)

    async def wait_for(condition: Callable[[list[Sample]], bool], deadline_s: float) -> bool:
        deadline = time.monotonic() + deadline_s
        seen = len(ramp.samples)
        while time.monotonic() < deadline:
            # Only samples taken in this wait count: an earlier one may predate the change.
            if condition(ramp.samples[seen:]):
                return True
            await asyncio.sleep(sample_s / 2)
        return False

    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        sampling = asyncio.create_task(sampler())
        trickle = asyncio.create_task(client_loop(client, 0, 1, trickle_stop))
        heavy: list[asyncio.Task] = []
        try:
            await asyncio.sleep(before_s)  # the before phase's load runs meanwhile
            enter("scale-up")
            heavy = [
                asyncio.create_task(client_loop(client, 1 + w, clients, heavy_stop))
                for w in range(clients)
            ]
            ramp.scaled_up = await wait_for(scaled, up_deadline_s)
            if ramp.scaled_up:
                enter("scaled")
                await asyncio.sleep(scaled_s)
                enter("scale-down")
                heavy_stop.set()
                await asyncio.gather(*heavy)
                ramp.scaled_down = await wait_for(settled, down_deadline_s)
                if ramp.scaled_down:
                    enter("after")
                    await asyncio.sleep(after_s)
        finally:
            heavy_stop.set()
            trickle_stop.set()
            await asyncio.gather(trickle, *heavy)
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            ramp.samples.append(Sample(now(), phase, await asyncio.to_thread(replica_states, app)))
    return ramp


def format_ramp(ramp: Ramp) -> str:
    """The replica timeline and a per-phase table, as the bench prints them."""
    lines = ["replicas over time (s: deployment states, at each change):"]
    for s in ramp.timeline():
        states = "; ".join(
            f"{d} " + ", ".join(f"{k} {v}" for k, v in sorted(s.states.get(d, {}).items()))
            for d in ramp.watch
        )
        lines.append(f"  {s.t:6.1f} [{s.phase}] {states}")
    lines.append(
        f"{'phase':<11} {'seconds':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'strong':>7}"
    )
    for phase in PHASES:
        if phase not in ramp.phase_started:
            continue
        row = ramp.phase_summary(phase)
        lines.append(
            f"{phase:<11} {row['seconds']:7.1f} {row['requests']:8d} {row['errors']:6d} "
            f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['strong_share']:7.1%}"
        )
    return "\n".join(lines)
