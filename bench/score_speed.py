"""Prompts/s of batched `score` against a one-prompt-at-a-time loop of the same router, and
against an MF router's batched `score`.

The loop is how the paper's server calls its router (one prompt per request). The MF router is
the speed floor the default router is held to (at least half of MF's prompts/s): embedding plus
one dot product; its weights are random, which does not change its speed. All runs use the
same generated prompts of mixed length, in one process.

    .venv/bin/python -m bench.score_speed [--router DIR] [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.pop("ROUTERAY_EMBEDDING_CACHE", None)  # measure the model, not a cache

import numpy as np
import torch

from bench.timing import timed
from routeray.demo.prompts import generate_prompts
from routers import default_router_dir, load_router
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.kinds.mf import MFNet, MFRouter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", default=str(default_router_dir()))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    router = load_router(args.router)
    prompts = generate_prompts(args.n, seed=args.seed)
    words = np.array([len(p.split()) for p in prompts])
    mf = MFRouter(MFNet(2, 384, 64), [STRONG_MODEL, WEAK_MODEL])
    router.score(prompts[:16])  # load the model and warm up before timing
    mf.score(prompts[:16])

    _, mf_s = timed(mf.score, prompts)
    batched, batched_s = timed(router.score, prompts)
    single, single_s = timed(lambda: np.concatenate([router.score([p]) for p in prompts]))

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
    print(f"MF batched score:   {args.n / mf_s:8.1f} prompts/s ({mf_s:.1f} s)")
    print(f"ratio router/MF:    {mf_s / batched_s:8.2f} (target >= 0.5)")
    print(f"max |batched - single| score difference: {np.abs(batched - single).max():.2e}")


if __name__ == "__main__":
    main()
