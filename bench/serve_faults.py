"""Faults under load: the online endpoint while the strong API fails and replicas die.

    .venv/bin/python -m bench.serve_faults [--clients 10] [--seconds 75] [--kill both]
    .venv/bin/python -m bench.serve_faults --kill router --seconds 40 --fault-rate 0.5

Starts its own local Ray Serve app, as bench/serve_load.py does: the shipped router as
`router-gap`, vLLM on the tiny generated model as the weak backend, and the strong-API
stand-in (routeray.demo.strong_standin) as the strong backend, with a short upstream timeout
(`--strong-timeout`, 2 s) and one retry, so a "timeout" fault is a timeout.

`--clients` async clients (the openai SDK, max_retries=0, `--client-timeout`) send chat
requests for `--seconds` per phase, streamed or not at random. Each client keeps to one of
`router-gap-0.0` (always strong), `router-gap-1.0` (always weak), `router-gap` (the recorded
threshold) and the two backends by name, so a dead replica stalls only the clients that need
it. Meanwhile about `--fault-rate` (30 %) of the stand-in's calls fail with a 429, a 500, a
timeout or a dropped connection: the ingress sends the stand-in only the request body (no
headers reach it), so a background task keeps the stand-in's fault queue fed at that share
of the calls it has seen, one fault at a time so that faults are spread out, not bunched.
`--kill-at` (a fifth) into a phase one replica is killed: the weak model's (`--kill weak`),
the router's (`--kill router`), or each in its own phase (`--kill both`, the default). After
the load, /health is polled until it is 200 again; the next phase starts then.

Every request's outcome is counted: 200 by answering model (and whether the ingress fell
back to the weak model), each HTTP error by status and error type, a stream that ended in an
error event, and the failures of the check: a client timeout, a dropped connection, a stream
cut off without an error event. The check passes when every request was answered or got a
clean error within the client timeout and the app was healthy again after the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Ray gives its raylet 30 s to register; on cores other runs are loading that is not enough.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

# Outcomes that fail the check start with this: the request hung or was not answered cleanly.
FAIL = "FAIL "
# (kind, weight, inject() keywords). Timeouts outlast the strong backend's timeout; dropped
# connections come before the first chunk (retried, then fallback) or after it (the client
# must get an error event, as text is already out).
FAULT_MIX: list[tuple[str, float, dict[str, Any]]] = [
    ("429", 0.2, {"retry_after": 1}),
    ("500", 0.25, {}),
    ("timeout", 0.2, {"delay": 10.0}),
    ("drop_stream", 0.2, {"after_chunks": 0}),
    ("drop_stream", 0.15, {"after_chunks": 1}),
]
DEPLOYMENTS = {"weak": "WeakModel", "router": "Router"}


@dataclass
class App:
    base_url: str
    standin: Any  # StrongStandin
    strong_model: str
    weak_model: str
    prompts: list[str]


@contextlib.contextmanager
def serve_app(
    strong_timeout_s: float = 2.0, strong_retries: int = 1, request_timeout_s: float | None = None
) -> Iterator[App]:
    """The demo app (shipped router, vLLM on the tiny model, the strong stand-in) on a local
    Ray cluster of this process's own, torn down on exit."""
    import ray
    from ray import serve

    from routeray.demo.config import STRONG_MODEL, WEAK_MODEL, demo_config, free_port
    from routeray.demo.prompts import generate_prompts
    from routeray.demo.strong_standin import StrongStandin
    from routeray.demo.tiny_model import build_tiny_model
    from serve_app.app import build

    # The tiny weak model has a 1,024-token context; keep prompts that fit it.
    prompts = [p for p in generate_prompts(800, seed=11) if len(p) < 1200][:500]
    port = free_port()
    with StrongStandin() as standin:
        model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-model")
        config = demo_config(model_dir, standin.base_url, port)
        config.strong.timeout_s = strong_timeout_s
        config.strong.max_retries = strong_retries
        if request_timeout_s is not None:
            config.request_timeout_s = request_timeout_s
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build(config), name="routeray", route_prefix="/")
            yield App(f"http://127.0.0.1:{port}/v1", standin, STRONG_MODEL, WEAK_MODEL, prompts)
        finally:
            serve.shutdown()
            ray.shutdown()


def _error_label(exc: Any) -> str:
    kind = exc.type or (exc.body.get("type") if isinstance(exc.body, dict) else None)
    return f"{kind}/{exc.code}" if exc.code else str(kind)


async def chat_once(
    client: Any, model: str, prompt: str, *, stream: bool, max_tokens: int
) -> tuple[str, str]:
    """One request's outcome label and the server's message (for errors), never raising."""
    import openai

    messages = [{"role": "user", "content": prompt}]
    started_stream = False
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=max_tokens, stream=stream
        )
        fell_back = " (fallback)" if raw.headers.get("x-routeray-fallback") else ""
        if not stream:
            reply = raw.parse()
            return f"200 {reply.model}{fell_back}", ""
        started_stream = True
        answered, finished = "?", False
        async for chunk in raw.parse():
            answered = chunk.model or answered
            finished |= bool(chunk.choices and chunk.choices[0].finish_reason)
        if not finished:
            return f"{FAIL}stream ended without finish_reason", ""
        return f"200 stream {answered}{fell_back}", ""
    except openai.APITimeoutError:
        return f"{FAIL}client timeout", ""
    except openai.APIConnectionError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "?"
        where = "mid-stream" if started_stream else "before headers"
        return f"{FAIL}connection error {where} ({cause})", ""
    except openai.APIStatusError as exc:
        return f"{exc.status_code} {_error_label(exc)}", exc.message
    except openai.APIError as exc:  # an error event in a stream (no status: headers were 200)
        return f"stream error event {_error_label(exc)}", exc.message
    except Exception as exc:  # anything else is the SDK's or this script's: count, go on
        return f"{FAIL}unexpected {type(exc).__name__}", str(exc)


@dataclass
class Result:
    start: float  # seconds since the phase began
    latency: float
    model: str
    stream: bool
    label: str


@dataclass
class Phase:
    name: str
    results: list[Result] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)
    kill_at: float | None = None
    load_end: float = 0.0  # when the last client finished (a hung request runs past the phase)
    health: list[tuple[float, int]] = field(default_factory=list)
    strong_calls: int = 0
    faults: Counter[str] = field(default_factory=Counter)


async def feed_faults(
    standin: Any, rate: float, rng: random.Random, stop: asyncio.Event, injected: Counter[str]
) -> None:
    """Keep about `rate` of the stand-in's calls faulty, one queued fault at a time."""
    base = standin.requests
    kinds = [k for k, _, _ in FAULT_MIX]
    weights = [w for _, w, _ in FAULT_MIX]
    total = 0
    while not stop.is_set():
        calls = standin.requests - base
        # The "+ 1" keeps one fault waiting for the next call when exactly on target, so
        # the share does not lag behind.
        if len(standin.faults) == 0 and total < rate * calls + 1:
            i = rng.choices(range(len(kinds)), weights)[0]
            standin.inject(kinds[i], **FAULT_MIX[i][2])
            after = FAULT_MIX[i][2].get("after_chunks")
            injected[kinds[i] if after is None else f"{kinds[i]} after {after} chunks"] += 1
            total += 1
        await asyncio.sleep(0.01)


def kill_replica(deployment: str) -> str:
    """Kill the (one) replica of `deployment` in the routeray app; its actor name."""
    import ray

    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if f"routeray#{deployment}#" in a["name"]
    ]
    if not replicas:
        raise RuntimeError(f"no replica of {deployment} to kill")
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))
    return replicas[0]["name"]


async def run_phase(
    app: App, phase: Phase, args: argparse.Namespace, kill: str | None, seed: int
) -> None:
    import httpx
    import openai

    models = ["router-gap-0.0", "router-gap-1.0", "router-gap", app.strong_model, app.weak_model]
    load_over = asyncio.Event()
    phase_start = time.perf_counter()
    deadline = phase_start + args.seconds
    base_calls = app.standin.requests

    async def worker(w: int, client: Any) -> None:
        # Each client keeps to one model, so that a replica that is down stalls only the
        # clients that need it, and the others show what still works meanwhile.
        model = models[w % len(models)]
        rng = random.Random(seed * 1000 + w)
        i = w
        while time.perf_counter() < deadline:
            stream = rng.random() < 0.5
            prompt = app.prompts[i % len(app.prompts)]
            i += args.clients
            start = time.perf_counter()
            try:
                # A hard cap over the whole request: the SDK's timeout bounds each read, not a
                # stream as a whole.
                label, message = await asyncio.wait_for(
                    chat_once(client, model, prompt, stream=stream, max_tokens=args.max_tokens),
                    args.client_timeout + 5,
                )
            except asyncio.TimeoutError:
                label, message = f"{FAIL}client timeout (whole request)", ""
            latency = time.perf_counter() - start
            if latency > args.client_timeout and not label.startswith(FAIL):
                label = f"{FAIL}slower than the client timeout: {label}"
            phase.results.append(Result(start - phase_start, latency, model, stream, label))
            if message:
                phase.messages.setdefault(label, message.splitlines()[0][:160])

    async def killer() -> None:
        await asyncio.sleep(args.seconds * args.kill_at)
        phase.kill_at = time.perf_counter() - phase_start
        name = await asyncio.to_thread(kill_replica, DEPLOYMENTS[kill])
        print(f"  {phase.kill_at:5.1f} s: killed {name}", flush=True)

    async def watch_health() -> None:
        # Polls through the load and after it, until the app is healthy again (or 300 s
        # past the load), so the outage's end is measured even when it outlasts the phase.
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                t = time.perf_counter() - phase_start
                try:
                    url = app.base_url.removesuffix("/v1") + "/health"
                    code = (await http.get(url)).status_code
                except httpx.HTTPError:
                    code = 0
                phase.health.append((t, code))
                if load_over.is_set() and (code == 200 or t > phase.load_end + 300):
                    return
                await asyncio.sleep(1.0)

    # A client (and connection pool) each, as separate callers would have.
    clients = [
        openai.AsyncOpenAI(
            base_url=app.base_url, api_key="x", max_retries=0, timeout=args.client_timeout
        )
        for _ in range(args.clients)
    ]
    fault_rng = random.Random(seed)
    side = [
        asyncio.create_task(
            feed_faults(app.standin, args.fault_rate, fault_rng, load_over, phase.faults)
        )
    ]
    if kill is not None:
        side.append(asyncio.create_task(killer()))
    health = asyncio.create_task(watch_health())
    try:
        await asyncio.gather(*(worker(w, c) for w, c in enumerate(clients)))
    finally:
        phase.load_end = time.perf_counter() - phase_start
        load_over.set()
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        # A fault left in the queue would hit the next phase's first call unaccounted for.
        app.standin.faults.clear()
        phase.strong_calls = app.standin.requests - base_calls
        for c in clients:
            await c.close()
        await health


def _ms(x: float) -> str:
    return f"{x * 1e3:,.0f} ms"


def _kind(label: str) -> str:
    if label.startswith(FAIL):
        return "fail"
    if label.startswith("200"):
        return "fallback" if "(fallback)" in label else "ok"
    return "event" if label.startswith("stream error") else "http"


def report(phase: Phase, client_timeout: float) -> bool:
    """Print the phase's tables; whether it passed the check."""
    results = phase.results
    kill_at = phase.kill_at if phase.kill_at is not None else float("inf")
    counts: Counter[str] = Counter(r.label for r in results)
    after: Counter[str] = Counter(r.label for r in results if r.start >= kill_at)
    worst: dict[str, float] = defaultdict(float)
    for r in results:
        worst[r.label] = max(worst[r.label], r.latency)
    injected = sum(phase.faults.values())
    print(
        f"\nphase {phase.name}: {len(results)} requests, load ended at {phase.load_end:.1f} s; "
        f"strong stand-in calls {phase.strong_calls}, faults injected {injected} "
        f"({injected / max(1, phase.strong_calls):.0%} of calls): {dict(phase.faults)}"
    )
    print("| outcome | requests | sent after the kill | max latency |\n|---|---|---|---|")
    for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"| {label} | {n} | {after[label]} | {_ms(worst[label])} |")
    for label, message in sorted(phase.messages.items()):
        print(f"  {label}: {message!r}")
    lat = np.array([r.latency for r in results])
    if len(lat):
        print(
            f"latency, all requests: p50 {_ms(np.percentile(lat, 50))}, "
            f"p99 {_ms(np.percentile(lat, 99))}, max {_ms(lat.max())}"
        )
    print(
        "| requested model | requests | 200 | 200 by fallback | HTTP errors | stream error events "
        "| failures | p50 | p99 | max |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    by_model: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_model[r.model].append(r)
    for model, rs in by_model.items():
        c = Counter(_kind(r.label) for r in rs)
        ms = np.array([r.latency for r in rs])
        print(
            f"| {model} | {len(rs)} | {c['ok']} | {c['fallback']} | {c['http']} | {c['event']} "
            f"| {c['fail']} | {_ms(np.percentile(ms, 50))} | {_ms(np.percentile(ms, 99))} "
            f"| {_ms(ms.max())} |"
        )
    # When the replica was gone and back, as /health saw it (1 s polls).
    down = [t for t, code in phase.health if t >= kill_at and code != 200]
    if down:
        back = [t for t, code in phase.health if t > down[0] and code == 200]
        ok_again = (
            f"200 again at {back[0]:.1f} s ({back[0] - kill_at:.0f} s after the kill)"
            if back
            else "not 200 again within 300 s of the load's end"
        )
        print(f"/health: killed at {kill_at:.1f} s, first non-200 at {down[0]:.1f} s, {ok_again}")
    # Ten-second buckets of outcomes, by start time, to show the outage window.
    print(
        "| sent at (s) | sent | 200 | 200 by fallback | HTTP errors | stream error events "
        "| failures |\n|---|---|---|---|---|---|---|"
    )
    buckets: dict[int, Counter[str]] = defaultdict(Counter)
    for r in results:
        buckets[int(r.start // 10)][_kind(r.label)] += 1
    for b in sorted(buckets):
        c = buckets[b]
        print(
            f"| {b * 10}-{b * 10 + 10} | {sum(c.values())} | {c['ok']} | {c['fallback']} "
            f"| {c['http']} | {c['event']} | {c['fail']} |"
        )
    failures = sum(n for label, n in counts.items() if label.startswith(FAIL))
    recovered = not down or any(t > down[0] and code == 200 for t, code in phase.health)
    passed = failures == 0 and recovered
    print(
        f"check: {'PASS' if passed else 'FAIL'} ({failures} requests not answered cleanly "
        f"within the {client_timeout:.0f} s client timeout; "
        f"{'recovered' if recovered else 'NOT recovered'})",
        flush=True,
    )
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10, help="each keeps to one of the 5 models")
    parser.add_argument("--seconds", type=float, default=75.0, help="seconds of load per phase")
    parser.add_argument(
        "--kill",
        choices=["both", "weak", "router", "none"],
        default="both",
        help="which replica to kill mid-phase; both: the weak one, then the router in a second "
        "phase",
    )
    parser.add_argument(
        "--kill-at", type=float, default=0.2, help="when to kill, as a share of the phase"
    )
    parser.add_argument("--fault-rate", type=float, default=0.3, help="share of strong calls")
    parser.add_argument("--client-timeout", type=float, default=60.0)
    parser.add_argument("--strong-timeout", type=float, default=2.0)
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="the endpoint's request_timeout_s: longest wait for a deployment (under the client "
        "timeout, so a replica being replaced gives a 504, not a client timeout)",
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.clients < 1 or not 0 <= args.fault_rate <= 1 or not 0 < args.kill_at < 1:
        parser.error("--clients >= 1, 0 <= --fault-rate <= 1, 0 < --kill-at < 1")
    kills: list[str | None] = (
        ["weak", "router"] if args.kill == "both" else [None if args.kill == "none" else args.kill]
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients, "
        f"{args.seconds:.0f} s a phase, kills {kills}, fault rate {args.fault_rate:.0%}, "
        f"client timeout {args.client_timeout:.0f} s, strong timeout {args.strong_timeout:g} s "
        "with 1 retry",
        flush=True,
    )
    started = time.perf_counter()
    passed = True
    with serve_app(args.strong_timeout, request_timeout_s=args.request_timeout) as app:
        print(f"app up in {time.perf_counter() - started:.0f} s", flush=True)
        for n, kill in enumerate(kills):
            phase = Phase(f"{n + 1} (kill {kill or 'nothing'})")
            print(f"phase {phase.name}: {args.seconds:.0f} s of load", flush=True)
            asyncio.run(run_phase(app, phase, args, kill, args.seed + n))
            passed &= report(phase, args.client_timeout)
    print(
        f"\noverall: {'PASS' if passed else 'FAIL'}; {time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
