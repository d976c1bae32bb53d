"""Load on the online endpoint: throughput, latency added by routing, batch sizes, and
dynamic batching against a batch size of 1. Loopback only; bounded in count and time.

    .venv/bin/python -m bench.serve_load [--clients 16] [--seconds 20]

Starts its own local Ray Serve app: the shipped router, vLLM on the tiny generated model as
the weak backend, and the strong-API stand-in.
- Added latency: the same prompts sent as `router-gap-1.0` (routed, always weak) and straight
  to the weak model's name, interleaved in one run; the difference is what routing costs.
- Throughput of routing: `router-gap-0.0` (always strong: the stand-in answers at once, so the
  router is the bottleneck), with max_batch_size 32 and then 1.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    import ray
    from ray import serve

    from routeray.demo.config import WEAK_MODEL, demo_config, free_port
    from routeray.demo.prompts import generate_prompts
    from routeray.demo.strong_standin import StrongStandin
    from routeray.demo.tiny_model import build_tiny_model
    from serve_app.app import build
    from serve_app.config import BatchingConfig

    # The tiny weak model has a 1,024-token context; keep prompts that fit it.
    prompts = [p for p in generate_prompts(800, seed=11) if len(p) < 1200][:500]
    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-model")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients, "
        f"{args.seconds:.0f} s per phase"
    )
    with StrongStandin() as standin:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = demo_config(model_dir, standin.base_url, port)
        serve.run(build(config), name="routeray", route_prefix="/")

        lat = asyncio.run(
            _load(base_url, ["router-gap-1.0", WEAK_MODEL], prompts, args.clients, args.seconds, 4)
        )
        routed, direct = np.array(lat["router-gap-1.0"]), np.array(lat[WEAK_MODEL])
        print(f"weak backend, routed vs direct ({len(routed)} / {len(direct)} requests):")
        for q in (50, 99):
            r, d = np.percentile(routed, q) * 1e3, np.percentile(direct, q) * 1e3
            print(f"  p{q}: routed {r:7.1f} ms, direct {d:7.1f} ms, added {r - d:7.1f} ms")

        results = {}
        for size in (32, 1):
            config.router_deployment.batching = BatchingConfig(max_batch_size=size)
            serve.run(build(config), name="routeray", route_prefix="/")
            router = serve.get_deployment_handle("Router", app_name="routeray")
            before = Counter(router.batch_stats.remote().result())
            start = time.perf_counter()
            lat = asyncio.run(
                _load(base_url, ["router-gap-0.0"], prompts, args.clients, args.seconds, 4)
            )
            elapsed = time.perf_counter() - start
            after = Counter(router.batch_stats.remote().result())
            batches = after - before
            n = len(lat["router-gap-0.0"])
            results[size] = n / elapsed
            mean = sum(k * v for k, v in batches.items()) / max(1, sum(batches.values()))
            print(
                f"max_batch_size {size:>2}: {n / elapsed:7.1f} req/s, p50 "
                f"{np.percentile(lat['router-gap-0.0'], 50) * 1e3:6.1f} ms, mean batch "
                f"{mean:5.1f}, batch sizes {dict(sorted(batches.items()))}"
            )
        print(f"throughput ratio, dynamic batching / batch size 1: {results[32] / results[1]:.2f}x")
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
