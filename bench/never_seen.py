"""Routing on task families no shipped router trained on, rebuilt from ../shared/data/train.

The outcome tables there (long format: `id, prompt, task, model, score`) hold many models on the
same prompts. For each table this script takes one strong/weak pair that the table has, the
closest it has to the paper's gpt-4 vs Mixtral (PAIRS below), and turns every prompt both models
answered into one labelled row (`prompt, task, weak_score, strong_score`). Shaberi is left out:
its ELYZA rows are share-alike, and it is the project's Japanese check, not this one.

Then, for each router, APGR as `routeray eval` computes it: over all rows at once (one
cost-quality curve over every family, as a mixed stream of traffic would be routed), and per
family where the pair's gap is large enough to divide by, with the paired bootstrap spread of
the difference between the first learned router and each other. No shipped router saw any of
these prompts: the shipped ones train on AlpacaEval, Arena-Hard and MMLU-Pro only.

    python -m bench.never_seen --router default --router minilm --router random \
        [--train-dir ../shared/data/train] [--output out/never_seen.parquet]

`--output` also writes the labelled rows, for `routeray eval --data out/never_seen.parquet`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench.router_tiers import paired_spread
from routers.evaluation.metrics import evaluate_random, evaluate_scores

# table -> (strong model, weak model), as the table names them. Each is the table's GPT-4-class
# model nearest gpt-4-1106 against its Mixtral-class model; where a table lacks one, the nearest
# it has (MATH level 5 has no Mixtral; LLMRouter has no GPT-4: its strongest and weakest chat
# models; XSTest's gpt4 against Mistral-7B-Instruct).
PAIRS = {
    "eq_bench_v2": ("gpt-4-1106-preview", "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"),
    "zeroeval_crux": ("gpt-4-turbo-2024-04-09", "Mixtral-8x7B-Instruct-v0.1"),
    "zeroeval_math_l5": ("gpt-4-turbo-2024-04-09", "Meta-Llama-3-8B-Instruct"),
    "llmrouter_outcomes": ("llama-3.3-nemotron-super-49b-v1", "mistral-7b-instruct-v0.3"),
    "xstest_v2": ("gpt4", "mistralinstruct"),
}
RANDOM = "random"
COLUMNS = ["id", "prompt", "task", "model", "score"]


def labelled_rows(train_dir: Path) -> pd.DataFrame:
    """One row per prompt that both models of its table's pair answered."""
    parts = []
    for table, (strong, weak) in PAIRS.items():
        df = pd.read_parquet(train_dir / f"{table}.parquet", columns=COLUMNS)
        missing = {strong, weak} - set(df["model"])
        if missing:
            raise SystemExit(f"{table}: no outcomes for {sorted(missing)}")
        pair = df[df["model"].isin([strong, weak])]
        wide = pair.pivot_table(index=["id", "prompt", "task"], columns="model", values="score")
        wide = wide.dropna().reset_index()
        parts.append(
            pd.DataFrame(
                {
                    "id": wide["id"],
                    "prompt": wide["prompt"],
                    "task": wide["task"],
                    "source": table,
                    "weak_score": wide[weak].to_numpy(float),
                    "strong_score": wide[strong].to_numpy(float),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def families(rows: pd.DataFrame) -> pd.Series:
    """XSTest's 18 prompt types are one family; every other task is its own."""
    return rows["task"].where(rows["source"] != "xstest_v2", "xstest")


# Below this gap between the pair's mean scores a family's APGR divides by almost nothing.
MIN_GAP = 0.05


def apgr(scores: np.ndarray | None, rows: pd.DataFrame) -> float:
    weak, strong = rows["weak_score"].to_numpy(), rows["strong_score"].to_numpy()
    if scores is None:
        return evaluate_random(weak, strong)[1].apgr
    return evaluate_scores(scores, weak, strong)[1].apgr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", action="append", required=True, help="name, directory, random")
    parser.add_argument("--train-dir", type=Path, default=Path("../shared/data/train"))
    parser.add_argument("--output", type=Path, help="also write the labelled rows here")
    args = parser.parse_args()

    from routers import load_router
    from routers.shipped import router_path

    rows = labelled_rows(args.train_dir)
    family = families(rows).to_numpy()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(args.output, index=False)
    names = sorted(set(family))
    print(f"{len(rows)} labelled prompts in {len(names)} task families from {len(PAIRS)} tables")
    for table, (strong, weak) in PAIRS.items():
        part = rows[rows["source"] == table]
        print(
            f"  {table:<20} {len(part):>5} prompts  {strong} {part['strong_score'].mean():.3f} "
            f"vs {weak} {part['weak_score'].mean():.3f}"
        )

    prompts = rows["prompt"].tolist()
    scores = {
        name: None if name == RANDOM else load_router(router_path(name)).score(prompts)
        for name in args.router
    }
    width = max(len(n) for n in [*names, "family share of score variance"]) + 2
    col = max(10, *(len(Path(r).name) + 2 for r in args.router))
    print()
    print(
        f"{'APGR':<{width}}{'prompts':>8}{'gap':>7}"
        + "".join(f"{Path(r).name:>{col}}" for r in args.router)
    )
    for label, mask in [("all families", np.ones(len(rows), bool))] + [
        (n, family == n) for n in names
    ]:
        part = rows[mask]
        gap = part["strong_score"].mean() - part["weak_score"].mean()
        if abs(gap) < MIN_GAP:
            cells = f"{'(gap too small for APGR)':>{col * len(scores)}}"
        else:
            cells = "".join(
                f"{apgr(None if s is None else s[mask], part):>{col}.3f}" for s in scores.values()
            )
        print(f"{label:<{width}}{len(part):>8}{gap:>7.3f}{cells}")

    # How much of each router's ranking is which family a prompt is in (the share of its
    # scores' variance between families), and how it ranks inside the families.
    print()
    print(f"{'':<{width}}" + "".join(f"{Path(r).name:>{col}}" for r in args.router))
    between = [
        np.nan if s is None else pd.Series(s).groupby(family).transform("mean").var() / s.var()
        for s in scores.values()
    ]
    print(
        f"{'family share of score variance':<{width}}" + "".join(f"{b:>{col}.3f}" for b in between)
    )
    large = [
        n
        for n in names
        if abs(
            rows.loc[family == n, "strong_score"].mean()
            - rows.loc[family == n, "weak_score"].mean()
        )
        >= MIN_GAP
    ]
    inside = [
        np.mean([apgr(None if s is None else s[family == n], rows[family == n]) for n in large])
        for s in scores.values()
    ]
    print(f"{'mean APGR within a family':<{width}}" + "".join(f"{v:>{col}.3f}" for v in inside))

    learned = [name for name, s in scores.items() if s is not None]
    if len(learned) >= 2:
        first = learned[0]
        weak, strong = rows["weak_score"].to_numpy(), rows["strong_score"].to_numpy()
        print()
        for other in learned[1:]:
            diff = apgr(scores[other], rows) - apgr(scores[first], rows)
            spread = paired_spread(scores[first], scores[other], weak, strong)
            print(f"all families: {other} - {first} {diff:+.3f}, paired bootstrap SD {spread:.3f}")


if __name__ == "__main__":
    main()
