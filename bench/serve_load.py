"""Load on the online endpoint: throughput, latency added by routing, batch sizes, and
dynamic batching against a batch size of 1. Loopback only; bounded in count and time.

    .venv/bin/python -m bench.serve_load [--clients 16] [--seconds 20]
    .venv/bin/python -m bench.serve_load --router fast --clients 2,8 --no-throughput
    .venv/bin/python -m bench.serve_load --endpoint route [--prompts-per-request 8]

Starts its own local Ray Serve app: a router (`--router`: a shipped name or a router
directory; the shipped default when not given), the strong-API stand-in, and as the weak
backend vLLM on the tiny generated model (`--endpoint chat`) or, for `--endpoint route`, where
nothing is generated, a second stand-in (no vLLM engine competing for the cores).
- `--endpoint chat` (the default), added latency: the same prompts sent as
  `router-<name>-1.0` (routed, always weak) and straight to the weak model's name,
  interleaved in one run; the difference is what routing costs. `--clients 2,8` measures the
  pair at each client count in turn, on the same app. `--placement` puts the router in the
  ingress or on its deployment (default: by its kind; the static `fast` scores in the ingress).
- `--endpoint chat`, throughput of routing: `router-<name>-0.0` (always strong: the stand-in
  answers at once, so the router is the bottleneck).
- `--endpoint route`: throughput of `POST /v1/route` with `router-<name>` (the decision alone),
  a chat body per request, or `--prompts-per-request K` prompts in the prompts form.
Each throughput phase runs with the router's max_batch_size (`--max-batch-size`, default the
config's 32) and, when comparing (`--compare-batching`, the default unless `--max-batch-size`
is given), again with 1, and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


async def _load(
    base_url: str,
    models: list[str],
    prompts: list[str],
    clients: int,
    seconds: float,
    max_tokens: int,
) -> dict[str, list[float]]:
    import openai

    latencies: dict[str, list[float]] = {m: [] for m in models}
    deadline = time.perf_counter() + seconds
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="x", max_retries=0, timeout=120
    ) as client:

        async def worker(w: int) -> None:
            i, turn = w, w
            while time.perf_counter() < deadline:
                # Every client alternates between the models, so both see the same load.
                model = models[turn % len(models)]
                turn += 1
                start = time.perf_counter()
                await client.chat.completions.create(
                    model=model,
                    max_tokens=max_tokens,
                    messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                )
                latencies[model].append(time.perf_counter() - start)
                i += clients

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return latencies


async def _load_route(
    base_url: str,
    model: str,
    prompts: list[str],
    clients: int,
    seconds: float,
    per_request: int,
) -> list[float]:
    """Latencies of `POST /v1/route`: a chat body when per_request is 1, else the prompts form."""
    import httpx

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def worker(w: int) -> None:
            i = w * per_request
            while time.perf_counter() < deadline:
                texts = [prompts[(i + k) % len(prompts)] for k in range(per_request)]
                if per_request == 1:
                    body = {"model": model, "messages": [{"role": "user", "content": texts[0]}]}
                else:
                    body = {"model": model, "prompts": texts}
                start = time.perf_counter()
                response = await client.post("/route", json=body)
                response.raise_for_status()
                assert len(response.json()["data"]) == per_request
                latencies.append(time.perf_counter() - start)
                i += clients * per_request

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clients",
        default="16",
        help="concurrent clients; a comma list (2,8) measures added latency at each in turn",
    )
    parser.add_argument(
        "--placement",
        choices=["auto", "ingress", "deployment"],
        default="auto",
        help="where the router scores (serve config `placement`; auto: by the router's kind)",
    )
    parser.add_argument(
        "--throughput",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the throughput phase after the added-latency one (needs the router on its "
        "deployment, whose batches it counts)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per phase")
    parser.add_argument(
        "--endpoint",
        choices=["chat", "route"],
        default="chat",
        help="chat: /v1/chat/completions (added latency, then throughput); route: /v1/route",
    )
    parser.add_argument(
        "--router",
        default=None,
        help="a shipped router's name or a router directory (default: the shipped default)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="the router deployment's max_batch_size (default: the config's, 32)",
    )
    parser.add_argument(
        "--compare-batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the throughput phase at the max batch size and at 1 and print the ratio "
        "(default: on unless --max-batch-size is given)",
    )
    parser.add_argument(
        "--prompts-per-request",
        type=int,
        default=1,
        help="--endpoint route: prompts per request (1: a chat body; more: the prompts form)",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=1.0,
        help="unmeasured load on each freshly deployed router before a throughput phase",
    )
    parser.add_argument(
        "--router-gpus",
        type=float,
        default=0.0,
        help="GPUs for the router deployment (a GPU host: 1 puts the router's encoder on it)",
    )
    parser.add_argument(
        "--router-cpus",
        type=float,
        default=None,
        help="CPUs (and torch threads) for the router deployment (default: the config's, 1)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="the router's batch_wait_timeout_s in ms (default: the config's, 0)",
    )
    args = parser.parse_args()
    client_counts = [int(c) for c in str(args.clients).split(",")]
    args.clients = max(client_counts)

    from serve_app.config import BatchingConfig, RouterSpec

    size = args.max_batch_size or BatchingConfig().max_batch_size
    wait = {} if args.batch_wait_ms is None else {"batch_wait_timeout_s": args.batch_wait_ms / 1e3}
    compare = (
        args.max_batch_size is None if args.compare_batching is None else args.compare_batching
    )
    if size < 1 or min(client_counts) < 1 or args.prompts_per_request < 1:
        parser.error("--max-batch-size, --clients and --prompts-per-request must be at least 1")
    if compare and size == 1:
        parser.error("--compare-batching compares a max batch size above 1 against 1")
    if args.prompts_per_request > 1 and args.endpoint != "route":
        parser.error("--prompts-per-request is for --endpoint route")
    sizes = [size, 1] if compare else [size]

    import ray
    from ray import serve

    from backends import OpenAIBackendConfig
    from routeray.demo.config import WEAK_MODEL, demo_config, free_port
    from routeray.demo.prompts import generate_prompts
    from routeray.demo.strong_standin import StrongStandin
    from serve_app.app import build

    # The tiny weak model has a 1,024-token context; keep prompts that fit it.
    prompts = [p for p in generate_prompts(800, seed=11) if len(p) < 1200][:500]
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    name = "gap" if args.router is None else "bench"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients, "
        f"placement {args.placement}, "
        f"{args.seconds:.0f} s per phase; endpoint {args.endpoint}; router "
        f"{args.router or 'default (shipped)'} as router-{name}"
    )
    with StrongStandin() as standin, StrongStandin(answer_prefix="weak answer: ") as weak:
        if args.endpoint == "chat":
            from routeray.demo.tiny_model import build_tiny_model

            model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-model")
            config = demo_config(model_dir, standin.base_url, port)
        else:
            # Nothing is generated on /v1/route: a stand-in plays the weak model, so no vLLM
            # engine takes cores from the router.
            config = demo_config(Path("unused"), standin.base_url, port)
            config.weak = OpenAIBackendConfig(model=WEAK_MODEL, base_url=weak.base_url)
        if args.router is not None:
            config.routers = [RouterSpec(name=name, path=args.router)]
        for spec in config.routers:
            spec.placement = args.placement
        config.router_deployment.num_gpus = args.router_gpus
        if args.router_cpus is not None:
            config.router_deployment.num_cpus = args.router_cpus
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        if args.endpoint == "chat":
            config.router_deployment.batching = BatchingConfig(max_batch_size=size, **wait)
            serve.run(build(config), name="routeray", route_prefix="/")
            placed = config.with_absolute_paths().with_placements().routers
            print("router placement: " + ", ".join(f"{r.name} {r.placement}" for r in placed))
            routed_model = f"router-{name}-1.0"
            if args.warmup_seconds > 0:
                asyncio.run(
                    _load(base_url, [routed_model, WEAK_MODEL], prompts, 2, args.warmup_seconds, 4)
                )
            for clients in client_counts:
                lat = asyncio.run(
                    _load(base_url, [routed_model, WEAK_MODEL], prompts, clients, args.seconds, 4)
                )
                routed, direct = np.array(lat[routed_model]), np.array(lat[WEAK_MODEL])
                print(
                    f"weak backend, {clients} clients, routed vs direct "
                    f"({len(routed)} / {len(direct)} requests):"
                )
                for q in (50, 99):
                    r, d = np.percentile(routed, q) * 1e3, np.percentile(direct, q) * 1e3
                    print(f"  p{q}: routed {r:7.1f} ms, direct {d:7.1f} ms, added {r - d:7.1f} ms")
            if not args.throughput:
                serve.shutdown()
                ray.shutdown()
                return

        def throughput_load(seconds: float) -> list[float]:
            if args.endpoint == "chat":
                model = f"router-{name}-0.0"
                return asyncio.run(_load(base_url, [model], prompts, args.clients, seconds, 4))[
                    model
                ]
            return asyncio.run(
                _load_route(
                    base_url,
                    f"router-{name}",
                    prompts,
                    args.clients,
                    seconds,
                    args.prompts_per_request,
                )
            )

        results = {}
        for batch_size in sizes:
            config.router_deployment.batching = BatchingConfig(max_batch_size=batch_size, **wait)
            serve.run(build(config), name="routeray", route_prefix="/")
            router = serve.get_deployment_handle("Router", app_name="routeray")
            if args.warmup_seconds > 0:
                # A fresh replica: its first batches (threads starting, caches) are not measured.
                throughput_load(args.warmup_seconds)
            before = Counter(router.batch_stats.remote().result())
            start = time.perf_counter()
            lat = throughput_load(args.seconds)
            elapsed = time.perf_counter() - start
            after = Counter(router.batch_stats.remote().result())
            batches = after - before
            n = len(lat)
            results[batch_size] = n / elapsed
            mean = sum(k * v for k, v in batches.items()) / max(1, sum(batches.values()))
            per_prompt = (
                f" ({n * args.prompts_per_request / elapsed:.1f} prompts/s)"
                if args.prompts_per_request > 1
                else ""
            )
            p50, p99 = (np.percentile(lat, q) * 1e3 for q in (50, 99)) if n else (np.nan,) * 2
            print(
                f"max_batch_size {batch_size:>2}: {n / elapsed:7.1f} req/s{per_prompt}, "
                f"p50 {p50:6.1f} ms, p99 {p99:6.1f} ms, mean batch {mean:5.1f}, "
                f"batch sizes {dict(sorted(batches.items()))}"
            )
        if compare and results[1] > 0:
            print(
                f"throughput ratio, dynamic batching (max_batch_size {size}) / batch size 1: "
                f"{results[size] / results[1]:.2f}x"
            )
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
