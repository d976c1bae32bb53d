"""Soak: steady moderate load on the online endpoint, no faults, and each replica's memory.

    .venv/bin/python -m bench.soak [--minutes 10] [--clients 4] [--think-ms 200]
    .venv/bin/python -m bench.soak --minutes 2 --sample-s 5 --csv /tmp/soak.csv

Starts the same local Ray Serve app as bench/serve_faults.py (the shipped router, vLLM on the
tiny generated model, the strong-API stand-in with the demo's timeout and retries), and no
faults are injected. `--clients` openai SDK clients each cycle through the five models
(`router-gap-0.0`, `router-gap-1.0`, `router-gap`, both backends by name), streamed and not in
turn, pausing `--think-ms` between requests, for `--minutes`.

With `--spend-usd-per-hour X` it soaks the share controller instead: "Spend soak" below.

Every `--sample-s` seconds the resident set (RSS) of each process of the app is read with
psutil: the Serve replicas (Ingress, Router, StrongModel, WeakModel and the vLLM engine
processes under it), Serve's proxy and controller, and this process (the load generator and
the stand-in; not part of the endpoint). Processes are found among this process's own
descendants by their title (`ray::ServeReplica:routeray:<Deployment>`), so Ray clusters that
other runs on the machine started are not counted. Per process: the RSS at the first and
last sample and the least-squares slope in MiB a minute over the samples after
`--warmup-s` (60 s): a leak shows as a clearly positive slope that does not flatten.

Spend soak (the share controller holding a spend rate):

    .venv/bin/python -m bench.soak --spend-usd-per-hour 30 [--minutes 10] [--rate 5]

A lighter app (no vLLM: both models are stand-ins, nothing is generated) serves the shipped
router in the ingress as `router-soak`, with `control: {spend_usd_per_hour: X,
rate_window_s: 60}`. Open-loop traffic of `--rate` requests a second goes to `POST /v1/route`:
the demo's everyday mix for the first half, then word problems and coding tasks (a harder mix
the router scores higher). Each decision is costed as the serve app costs it (default prices,
input tokens estimated from the text, each model's mean output): the strong model's cost for a
strong decision, the weak one's for a weak. Printed per minute: requests, strong share, spend
as USD/hour and its ratio to the target; then the spend over the minutes after the first two
(the controller's warm-up) against the target.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from bench.serve_faults import FAIL, App, chat_once, serve_app

MIB = 1024 * 1024
# Process titles Ray gives the actors that serve the app; the driver is labelled separately.
TITLES = ("ray::ServeReplica:routeray:", "ray::ProxyActor", "ray::ServeController")


def _title(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
        return cmd[0] if cmd else proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def app_processes() -> dict[str, psutil.Process]:
    """The app's processes by label, e.g. "Router" or "WeakModel > EngineCore", found among
    this process's descendants (another run's Ray cluster is not ours to measure)."""
    me = psutil.Process()
    found: dict[str, psutil.Process] = {"driver (load + stand-in)": me}
    for proc in me.children(recursive=True):
        title = _title(proc)
        if not title.startswith(TITLES):
            continue
        name = title.removeprefix("ray::").removeprefix("ServeReplica:routeray:")
        name = name.split(".")[0].split(" ")[0]  # "ServeController.listen_for_change" etc.
        found[name] = proc
        # vLLM's engine core and its worker run as children of the WeakModel replica.
        for child in proc.children(recursive=True):
            found[f"{name} > {child.name() or child.pid}"] = child
    return found


@dataclass
class Series:
    pid: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, RSS MiB)
    pids: set[int] = field(default_factory=set)


def sample(series: dict[str, Series], t: float) -> None:
    for label, proc in app_processes().items():
        try:
            rss = proc.memory_info().rss / MIB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        s = series.setdefault(label, Series(proc.pid))
        s.pids.add(proc.pid)
        s.samples.append((t, rss))


async def soak(app: App, args: argparse.Namespace) -> tuple[dict[str, Series], list, float]:
    import openai

    models = ["router-gap-0.0", "router-gap-1.0", "router-gap", app.strong_model, app.weak_model]
    series: dict[str, Series] = {}
    results: list[tuple[str, float]] = []
    start = time.perf_counter()
    deadline = start + args.minutes * 60

    async def worker(w: int, client: openai.AsyncOpenAI) -> None:
        turn = w
        while time.perf_counter() < deadline:
            # Models and streaming in turn (5 models, 2 modes: every pair every 10 turns).
            model, stream = models[turn % len(models)], (turn // len(models)) % 2 == 1
            prompt = app.prompts[turn % len(app.prompts)]
            turn += args.clients
            t0 = time.perf_counter()
            label, _ = await chat_once(client, model, prompt, stream=stream, max_tokens=8)
            results.append((label, time.perf_counter() - t0))
            await asyncio.sleep(args.think_ms / 1e3)

    async def sampler() -> None:
        next_report = 60.0
        while True:
            t = time.perf_counter() - start
            await asyncio.to_thread(sample, series, t)
            if t >= next_report:
                rss = ", ".join(
                    f"{k} {v.samples[-1][1]:.0f}"
                    for k, v in series.items()
                    if v.samples and v.samples[-1][0] == t
                )
                print(f"  {t / 60:4.1f} min: {len(results)} requests; RSS MiB: {rss}", flush=True)
                next_report += 60.0
            await asyncio.sleep(args.sample_s)

    clients = [
        openai.AsyncOpenAI(base_url=app.base_url, api_key="x", max_retries=0, timeout=60)
        for _ in range(args.clients)
    ]
    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.gather(*(worker(w, c) for w, c in enumerate(clients)))
    finally:
        elapsed = time.perf_counter() - start
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        sample(series, elapsed)  # the end point, at the same moment as the load's end
        for c in clients:
            await c.close()
    return series, results, elapsed


def slope_mib_per_min(samples: list[tuple[float, float]], warmup_s: float) -> float:
    points = np.array([(t, rss) for t, rss in samples if t >= warmup_s])
    if len(points) < 3:
        return float("nan")
    return float(np.polyfit(points[:, 0] / 60, points[:, 1], 1)[0])


def _soak_prompts(n: int, seed: int) -> list[str]:
    """The everyday demo mix for the first half, word problems and code for the second."""
    from routeray.demo import prompts as demo

    rng = np.random.default_rng(seed)
    easy = demo.generate_prompts(n // 2, seed=seed)
    # Each coding task with a detail of its own: 25 templates alone would tie in groups of 2 %
    # of the traffic, and a threshold on a tie sends the whole group one way.
    hard = [
        demo._math(rng)
        if rng.random() < 0.5
        else demo._code(rng) + f" The input may hold up to {rng.integers(10, 10**6)} items."
        for _ in range(n - n // 2)
    ]
    return easy + hard


def spend_soak(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from backends import OpenAIBackendConfig
    from routeray.demo.config import WEAK_MODEL, demo_config, free_port
    from routeray.demo.strong_standin import StrongStandin
    from routers import Prices
    from routers.decision.share_control import ShareTarget, request_costs
    from serve_app.app import build
    from serve_app.config import RouterSpec
    from serve_app.share_control import delete_controller_actor

    total = int(args.rate * args.minutes * 60)
    prompts = _soak_prompts(total, seed=3)
    costs = request_costs(Prices(), prompts)
    target = args.spend_usd_per_hour
    rate_h = args.rate * 3600
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.rate:g} requests/s for "
        f"{args.minutes:g} min; target ${target:g}/hour (at this rate all weak "
        f"${costs[:, 1].mean() * rate_h:.2f}, all strong ${costs[:, 0].mean() * rate_h:.2f})",
        flush=True,
    )
    port = free_port()
    with StrongStandin() as standin, StrongStandin(answer_prefix="weak: ") as weak:
        config = demo_config(Path("unused"), standin.base_url, port)
        config.weak = OpenAIBackendConfig(model=WEAK_MODEL, base_url=weak.base_url)
        control = ShareTarget(spend_usd_per_hour=target, rate_window_s=60)
        config.routers = [
            RouterSpec(name="soak", path="default", placement="ingress", control=control)
        ]
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build(config), name="routeray", route_prefix="/")
            decided = asyncio.run(_open_loop(f"http://127.0.0.1:{port}/v1", prompts, args.rate))
        finally:
            serve.shutdown()
            delete_controller_actor("routeray")  # detached: it outlives the app otherwise
            ray.shutdown()

    minute = np.array([t // 60 for t, _, _ in decided], dtype=int)
    index = np.array([i for _, i, _ in decided], dtype=int)
    strong = np.array([s for _, _, s in decided], dtype=bool)
    spent = np.where(strong, costs[index, 0], costs[index, 1])
    failed = total - len(decided)
    print(f"\n{len(decided)} decisions, {failed} failed\n")
    print(
        "| minute | requests | strong share | spend (USD/hour) | vs target |\n|---|---|---|---|---|"
    )
    per_minute = []
    for m in range(int(args.minutes)):
        here = minute == m
        if not here.any():
            continue
        rate = spent[here].sum() * 60
        per_minute.append(rate)
        print(
            f"| {m + 1} | {here.sum()} | {strong[here].mean():.1%} | {rate:.2f} | "
            f"{rate / target - 1:+.1%} |"
        )
    steady = minute >= 2
    if steady.any():
        hours = (minute[steady].max() - 1) / 60
        rate = spent[steady].sum() / hours
        worst = max(abs(r / target - 1) for r in per_minute[2:]) if per_minute[2:] else 0
        print(
            f"\nafter minute 2: ${rate:.2f}/hour against ${target:g} ({rate / target - 1:+.1%}); "
            f"worst minute {worst:.1%} off"
        )


async def _open_loop(base_url: str, prompts: list[str], rate: float) -> list:
    """Send prompt i at i / rate seconds, whatever came back before: [(seconds, i, strong)]."""
    import httpx

    decided: list[tuple[float, int, bool]] = []
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent = time.perf_counter() - start
            try:
                answer = await client.post(
                    f"{base_url}/route", json={"model": "router-soak", "prompts": [prompts[i]]}
                )
                answer.raise_for_status()
            except httpx.HTTPError:
                return
            decided.append((sent, i, answer.json()["data"][0]["route"] == "strong"))

        await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return decided


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--think-ms", type=float, default=200.0, help="pause between requests")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="left out of the slope")
    parser.add_argument("--csv", type=Path, default=None, help="write every sample here")
    parser.add_argument(
        "--spend-usd-per-hour",
        type=float,
        default=None,
        help="soak the share controller at this spend target instead (see 'Spend soak')",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="spend soak: requests/s")
    args = parser.parse_args()
    if args.spend_usd_per_hour is not None:
        if args.spend_usd_per_hour <= 0 or args.rate <= 0 or args.minutes <= 0:
            parser.error("--spend-usd-per-hour, --rate and --minutes must be positive")
        spend_soak(args)
        return
    if args.clients < 1 or args.minutes <= 0 or args.sample_s <= 0:
        parser.error("--clients >= 1, --minutes > 0, --sample-s > 0")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients, "
        f"think {args.think_ms:.0f} ms, {args.minutes:g} min, RSS every {args.sample_s:g} s",
        flush=True,
    )
    # The demo's own strong timeout and retries: nothing fails here.
    with serve_app(strong_timeout_s=30.0, strong_retries=2) as app:
        series, results, elapsed = asyncio.run(soak(app, args))

    counts = Counter(label for label, _ in results)
    lat = np.array([s for _, s in results])
    print(
        f"\n{len(results)} requests in {elapsed / 60:.1f} min "
        f"({len(results) / elapsed:.1f} req/s); "
        f"p50 {np.percentile(lat, 50) * 1e3:,.0f} ms, p99 {np.percentile(lat, 99) * 1e3:,.0f} ms, "
        f"max {lat.max() * 1e3:,.0f} ms"
    )
    for label, n in counts.most_common():
        print(f"  {label}: {n}")
    failures = sum(n for label, n in counts.items() if not label.startswith("200"))
    print(
        f"not 200: {failures} ({sum(n for k, n in counts.items() if k.startswith(FAIL))} hung "
        "or dropped)"
    )
    print(
        f"\n| process | pid | start RSS | end RSS | min / max | slope after {args.warmup_s:.0f} s |"
        "\n|---|---|---|---|---|---|"
    )
    for label, s in series.items():
        rss = [r for _, r in s.samples]
        pids = ", ".join(str(p) for p in sorted(s.pids))
        print(
            f"| {label} | {pids} | {rss[0]:,.0f} MiB | {rss[-1]:,.0f} MiB | "
            f"{min(rss):,.0f} / {max(rss):,.0f} MiB | "
            f"{slope_mib_per_min(s.samples, args.warmup_s):+.2f} MiB/min |"
        )
    if args.csv is not None:
        with args.csv.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["process", "seconds", "rss_mib"])
            for label, s in series.items():
                writer.writerows((label, f"{t:.1f}", f"{r:.1f}") for t, r in s.samples)
        print(f"samples written to {args.csv}")


if __name__ == "__main__":
    main()
