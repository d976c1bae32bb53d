"""Prompts/s of batched `score` against a one-prompt-at-a-time loop of the same router.

The loop is how the paper's server calls its router (one prompt per request). Both runs use
the same generated prompts of mixed length and the same loaded router, in one process.

    .venv/bin/python bench/score_speed.py [--router DIR] [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.pop("ROUTERAY_EMBEDDING_CACHE", None)  # measure the model, not a cache

import numpy as np
import torch

from routers.checkpoint import default_router_dir, load_router
from routers.sample_prompts import generate_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", default=str(default_router_dir()))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    router = load_router(args.router)
    prompts = generate_prompts(args.n, seed=args.seed)
    words = np.array([len(p.split()) for p in prompts])
    router.score(prompts[:16])  # load the model and warm up before timing

    start = time.perf_counter()
    batched = router.score(prompts)
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    single = np.concatenate([router.score([p]) for p in prompts])
    single_s = time.perf_counter() - start

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"router: {args.router}")
    print(
        f"prompts: {args.n} generated (seed {args.seed}), words min/median/max "
        f"{words.min()}/{int(np.median(words))}/{words.max()}"
    )
    print(f"batched score:      {args.n / batched_s:8.1f} prompts/s ({batched_s:.1f} s)")
    print(f"one at a time:      {args.n / single_s:8.1f} prompts/s ({single_s:.1f} s)")
    print(f"ratio batched/loop: {single_s / batched_s:8.2f}x")
    print(f"max |batched - single| score difference: {np.abs(batched - single).max():.2e}")


if __name__ == "__main__":
    main()
