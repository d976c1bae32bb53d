"""What routing costs inside an application: `routeray.Controller` calls, routed and direct,
interleaved in one run against local stand-ins for both models (no Ray, no model), so the
difference is the routing alone: validation, scoring, the decision.

    .venv/bin/python -m bench.controller [--router fast] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", default="fast", help="a shipped router's name or a directory")
    parser.add_argument("--requests", type=int, default=300, help="measured calls per model")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--route-prompts", type=int, default=1000, help="prompts for route() (at most 1,024)"
    )
    args = parser.parse_args()

    from routeray import Controller
    from routeray.demo.prompts import generate_prompts
    from routeray.demo.strong_standin import StrongStandin

    prompts = generate_prompts(max(args.requests, args.route_prompts), seed=5)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; router {args.router}; "
        f"{args.requests} calls per model, interleaved"
    )
    with StrongStandin() as strong, StrongStandin(answer_prefix="weak: ") as weak:
        controller = Controller(
            router=args.router,
            strong={"kind": "openai", "model": "big", "base_url": strong.base_url},
            weak={"kind": "openai", "model": "small", "base_url": weak.base_url},
        )
        routed_model = "router-default-1.0"  # routed, and always to the weak stand-in
        with controller:

            def call(model: str, prompt: str) -> float:
                messages = [{"role": "user", "content": prompt}]
                start = time.perf_counter()
                controller.chat.completions.create(model=model, messages=messages)
                return time.perf_counter() - start

            for i in range(args.warmup):
                call("small", prompts[i])
                call(routed_model, prompts[i])
            direct, routed = [], []
            for i in range(args.requests):
                direct.append(call("small", prompts[i]))
                routed.append(call(routed_model, prompts[i]))
            for q in (50, 99):
                r, d = np.percentile(routed, q) * 1e3, np.percentile(direct, q) * 1e3
                print(f"  p{q}: routed {r:6.2f} ms, direct {d:6.2f} ms, added {r - d:6.2f} ms")
            batch = prompts[: args.route_prompts]
            start = time.perf_counter()
            decisions = controller.route(batch, model="router-default")
            elapsed = time.perf_counter() - start
            strong_share = np.mean([d.route == "strong" for d in decisions])
            print(
                f"route(): {len(batch)} prompts in {elapsed * 1e3:.0f} ms "
                f"({len(batch) / elapsed:,.0f} prompts/s), {strong_share:.1%} strong at the "
                "recorded default"
            )


if __name__ == "__main__":
    main()
