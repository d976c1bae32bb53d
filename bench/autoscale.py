"""Autoscaling under a load ramp: the router deployment's and the ingress's replica counts
over time, and the latency, errors and strong share of the requests in each phase. Loopback
only; bounded in time.

    .venv/bin/python -m bench.autoscale [--clients 16] [--max-replicas 2] [--scaled-seconds 20]

Starts its own local Ray Serve app (tests/support/autoscaling.py, the same app and ramp as
tests/serve_app/test_autoscaling.py): `minilm` as router-minilm on a router deployment of
fractional-CPU replicas (`--router-cpus`, default 0.25) that Serve autoscales from 1 to
`--max-replicas`, the ingress (no CPU of its own) autoscaled from 1 to
`--ingress-max-replicas` (1: not autoscaled), stand-ins for both models, load on
`POST /v1/route`. Phases: before (one sequential client), scale-up (`--clients` more, until
Serve has shown a second RUNNING replica of each autoscaled deployment), scaled
(`--scaled-seconds` more of that load), scale-down (back to the one client, until one replica
of each is left), after. Prints each change of the replica states (Serve's
`serve.status()`, sampled every `--sample-seconds`) and per phase: seconds, requests, errors,
latency p50/p99 and the share of decisions that went strong. `--control-share 0.3` puts a
share controller (`control: {strong_share: 0.3}`) on router-minilm: the strong column then shows
whether it holds its target while the replicas change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform

from tests.support.autoscaling import (
    INGRESS,
    INGRESS_AUTOSCALING,
    ROUTER,
    ROUTER_AUTOSCALING,
    autoscaling_config,
    format_ramp,
    ramp_prompts,
    run_ramp,
    serving,
)

APP = "autoscale"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16, help="clients during scale-up")
    parser.add_argument("--router-cpus", type=float, default=0.25, help="CPUs per router replica")
    parser.add_argument("--max-replicas", type=int, default=ROUTER_AUTOSCALING["max_replicas"])
    parser.add_argument(
        "--target", type=float, default=ROUTER_AUTOSCALING["target_ongoing_requests"]
    )
    parser.add_argument(
        "--upscale-delay", type=float, default=ROUTER_AUTOSCALING["upscale_delay_s"]
    )
    parser.add_argument(
        "--downscale-delay", type=float, default=ROUTER_AUTOSCALING["downscale_delay_s"]
    )
    parser.add_argument(
        "--ingress-max-replicas",
        type=int,
        default=INGRESS_AUTOSCALING["max_replicas"],
        help="1: the ingress does not autoscale",
    )
    parser.add_argument(
        "--ingress-target", type=float, default=INGRESS_AUTOSCALING["target_ongoing_requests"]
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument(
        "--control-share",
        type=float,
        default=None,
        help="hold this strong share with a share controller on router-minilm (e.g. 0.3)",
    )
    parser.add_argument(
        "--model",
        default="router-minilm",
        help="the routing model asked for, e.g. router-minilm-0.5 or router-minilm-30pct",
    )
    parser.add_argument("--before-seconds", type=float, default=10.0)
    parser.add_argument("--scaled-seconds", type=float, default=20.0)
    parser.add_argument("--after-seconds", type=float, default=10.0)
    parser.add_argument("--deadline-seconds", type=float, default=180.0, help="per wait")
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    args = parser.parse_args()
    if args.clients < 1 or args.max_replicas < 2 or args.ingress_max_replicas < 1:
        parser.error(
            "--clients and --ingress-max-replicas must be at least 1, --max-replicas at least 2"
        )

    import ray

    from routeray.demo.strong_standin import StrongStandin
    from serve_app.app import build

    autoscaling = {
        **ROUTER_AUTOSCALING,
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target,
        "upscale_delay_s": args.upscale_delay,
        "downscale_delay_s": args.downscale_delay,
    }
    ingress = (
        {
            **autoscaling,
            "max_replicas": args.ingress_max_replicas,
            "target_ongoing_requests": args.ingress_target,
        }
        if args.ingress_max_replicas > 1
        else None
    )
    watch = (ROUTER, INGRESS) if ingress else (ROUTER,)
    prompts = ramp_prompts()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients in "
        f"scale-up; {args.model}, {args.router_cpus:g} CPU per router replica, batches of "
        f"up to {args.max_batch_size}\nrouter autoscaling_config {json.dumps(autoscaling)}\n"
        f"ingress autoscaling_config {json.dumps(ingress)}\n"
        f"share controller: {'none' if args.control_share is None else args.control_share}"
    )
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    try:
        with StrongStandin() as strong, StrongStandin(answer_prefix="weak answer: ") as weak:
            config = autoscaling_config(
                strong.base_url,
                weak.base_url,
                num_cpus=args.router_cpus,
                autoscaling=autoscaling,
                ingress_autoscaling=ingress,
                max_batch_size=args.max_batch_size,
                control=(
                    None if args.control_share is None else {"strong_share": args.control_share}
                ),
            )
            with serving(build(config), APP) as base_url:
                ramp = asyncio.run(
                    run_ramp(
                        base_url,
                        APP,
                        prompts,
                        clients=args.clients,
                        before_s=args.before_seconds,
                        scaled_s=args.scaled_seconds,
                        after_s=args.after_seconds,
                        up_deadline_s=args.deadline_seconds,
                        down_deadline_s=args.deadline_seconds,
                        sample_s=args.sample_seconds,
                        model=args.model,
                        watch=watch,
                    )
                )
    finally:
        ray.shutdown()
    print(format_ramp(ramp))
    peaks = ", ".join(f"{d} {ramp.peak(d)}" for d in watch)
    print(
        f"scaled up: {ramp.scaled_up}; scaled down: {ramp.scaled_down}; peak RUNNING replicas: "
        f"{peaks}; errors {len(ramp.errors())} of {len(ramp.outcomes)} requests"
    )
    for outcome in ramp.errors()[:5]:
        print(f"  error in {outcome.phase} at {outcome.t:.1f} s: {outcome.error}")


if __name__ == "__main__":
    main()
