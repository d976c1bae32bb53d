"""Router tiers side by side: routing quality, speed and memory, all measured in one run.

For each router (a shipped name or a directory), in a fresh process each so that memory and
warm-up do not leak between them:

- APGR on MT Bench, MMLU and GSM8K (contaminated prompts dropped, as `routeray eval`), with
  the difference to the first router and its paired bootstrap spread (the same prompts are
  resampled for both routers, so the spread is that of the difference itself);
- leave-one-source-out APGR on the training sources, as recorded at training time;
- bare `score` throughput on generated prompts (one process, every core) and the peak RSS of
  that process after loading the router and scoring.

    python -m bench.router_tiers --router default --router fast [--eval-dir ../shared/data/eval]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import peak_rss_mib, timed
from routers.evaluation.benchmarks import BENCHMARKS, load_benchmark
from routers.evaluation.metrics import evaluate_scores

BOOTSTRAP = 1000


def measure(router: str, eval_dir: str, rows: int) -> dict:
    """In this process: load, score the benchmarks and the speed sample, report peak RSS."""
    from routeray.demo.prompts import generate_prompts
    from routers import load_router, read_config
    from routers.shipped import router_path

    def load() -> Any:
        model = load_router(router_path(router))
        model.score(["warm up"])
        return model

    model, load_s = timed(load)
    scores = {}
    for name in BENCHMARKS:
        df = load_benchmark(name, eval_dir)
        scores[name] = model.score(df["prompt"].tolist()).tolist()
    prompts = generate_prompts(rows, seed=0)
    _, seconds = timed(model.score, prompts)
    held_out = read_config(router_path(router))["config"].get("hyperparameters", {})
    return {
        "scores": scores,
        "load_s": load_s,
        "prompts_per_s": rows / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "held_out": held_out.get("held_out_apgr_by_source", {}),
    }


def paired_spread(
    a: np.ndarray, b: np.ndarray, weak: np.ndarray, strong: np.ndarray, seed: int = 0
) -> float:
    """Standard deviation of APGR(b) - APGR(a) over bootstrap resamples of the prompts."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, len(a), len(a))
        pa = evaluate_scores(a[idx], weak[idx], strong[idx])[1].apgr
        pb = evaluate_scores(b[idx], weak[idx], strong[idx])[1].apgr
        diffs.append(pb - pa)
    return float(np.std(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", action="append", required=True)
    parser.add_argument("--eval-dir", default="../shared/data/eval")
    parser.add_argument("--rows", type=int, default=5000, help="generated prompts for speed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.eval_dir, args.rows)))
        return

    results = {}
    for router in args.router:
        command = [sys.executable, "-m", "bench.router_tiers", "--router", router, "--child"]
        command += [router, "--eval-dir", args.eval_dir, "--rows", str(args.rows)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[router] = json.loads(out.strip().splitlines()[-1])

    base = args.router[0]
    print(f"{'router':<22} {'benchmark':<9} {'APGR':>6} {'diff':>7} {'+-':>6}")
    for name in BENCHMARKS:
        df = load_benchmark(name, args.eval_dir)
        weak, strong = df["weak_score"].to_numpy(), df["strong_score"].to_numpy()
        first = np.asarray(results[base]["scores"][name])
        for router in args.router:
            scores = np.asarray(results[router]["scores"][name])
            value = evaluate_scores(scores, weak, strong)[1].apgr
            if router == base:
                print(f"{Path(router).name:<22} {name:<9} {value:6.3f}")
                continue
            diff = value - evaluate_scores(first, weak, strong)[1].apgr
            spread = paired_spread(first, scores, weak, strong)
            print(f"{Path(router).name:<22} {name:<9} {value:6.3f} {diff:+7.3f} {spread:6.3f}")
    print()
    print(f"{'router':<22} {'prompts/s':>10} {'x first':>8} {'load s':>7} {'peak RSS MiB':>13}")
    for router in args.router:
        r = results[router]
        ratio = r["prompts_per_s"] / results[base]["prompts_per_s"]
        print(
            f"{Path(router).name:<22} {r['prompts_per_s']:10.0f} {ratio:8.1f} "
            f"{r['load_s']:7.1f} {r['peak_rss_mib']:13.0f}"
        )
    print()
    print("leave-one-source-out APGR (training sources, recorded at training time)")
    for router in args.router:
        by_source = results[router]["held_out"]
        cells = ", ".join(f"{s} {v:.3f}" for s, v in sorted(by_source.items()))
        print(f"{Path(router).name:<22} {cells or 'not recorded'}")


if __name__ == "__main__":
    main()
