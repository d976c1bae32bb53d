"""Leave one source out, for N-model routers: on each held-out outcome table, the router trained
on every other source chooses among that table's own models, priced, and its AIQ is set
against RouterBench's zero router (the best fixed mixture of the same models) and the oracle.

    python -m bench.multi_loso [--recipe mf --recipe heads --recipe irt] [--held-out NAME]
        [--labelled-share 0.2 --labelled-weight 10] [--diagnose]

With `--labelled-share S`, a seeded share S of the held-out table's prompts (with all their
labels) joins the training data, as a user's own labels of their traffic would
(`routeray batch label`), each row weighing `--labelled-weight` (as `routeray train
--extra-weight` weighs a user's labels), and the router is judged on the other prompts only.

With `--diagnose`, each table also gets the AIQ of three stand-ins for the router, to say where
its gap to the zero router lies: every prompt given the router's own mean quality per model
(`predicted_means`: no per-prompt signal), the table's true mean per model (`true_means`: what
the zero router knows), and the router's per-prompt predictions shifted per model, in logits,
until their means are the table's (`router_at_true_means`: the router's prompt structure with
the zero router's knowledge of the models).

Only models the router has labels for from the other sources can be judged (a model seen only
in the held-out table has no labels to learn from), and only models labelling >= 90 % of the
table's prompts (`routers.evaluation.multi_model.quality_matrix`). Prices: `guess_price`
below, written into docs/BENCHMARKS.md with the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from routeray.options import CACHE_DIR
from routers.data.model_names import normalize_model_name
from routers.data.model_outcomes import load_model_outcomes
from routers.data.outcome_tables import find_outcome_tables
from routers.decision.choice import prompt_costs
from routers.evaluation.multi_model import MultiModelReport, judge, judge_table, quality_matrix
from routers.kinds.multi import RECIPES, MultiModelRouter
from routers.prices import ModelPrice, Prices
from routers.text.embedders import embedding_cache

DATA = Path("../shared/data")

# USD per million tokens (input, output): list prices at each model's release.
API_PRICES = {
    r"^gpt-4-(1106|0125)-preview|^gpt-4-turbo": (10.0, 30.0),
    r"^gpt-4-(0613|0314)$|^gpt-4$": (30.0, 60.0),
    r"^gpt-4o-mini": (0.15, 0.6),
    r"^gpt-4o-2024-05-13|^gpt-4o$": (5.0, 15.0),
    r"^gpt-4o": (2.5, 10.0),
    r"^gpt-3\.5-turbo": (0.5, 1.5),
    r"^o1-preview": (15.0, 60.0),
    r"^o1-mini": (3.0, 12.0),
    r"^claude-3-opus": (15.0, 75.0),
    r"^claude-3(-5)?-sonnet": (3.0, 15.0),
    r"^claude-3-5-haiku": (0.8, 4.0),
    r"^claude-3-haiku": (0.25, 1.25),
    r"^claude-instant": (0.8, 2.4),
    r"^claude-(1|2)": (8.0, 24.0),
    r"^gemini-1\.5-pro": (3.5, 10.5),
    r"^gemini-1\.5-flash": (0.35, 1.05),
    r"^mistral-large": (8.0, 24.0),
    r"^chatgpt-4o": (5.0, 15.0),
    r"^grok-2": (2.0, 10.0),
    r"^deepseek-r1": (0.55, 2.19),
    r"^deepseek-": (0.14, 0.28),
    r"^gemini-pro": (0.5, 1.5),
    r"^mistral-medium": (2.7, 8.1),
    r"^c4ai-command-r-plus-08": (2.5, 10.0),
    r"^c4ai-command-r-plus": (3.0, 15.0),
    r"^c4ai-command-r": (0.5, 1.5),
    r"^reka-core": (3.0, 15.0),
    r"^reka-flash": (0.8, 2.0),
    r"^yi-large": (3.0, 3.0),
}
# Open-weight models whose names carry no size: the size their model cards give.
KNOWN_SIZES = {
    r"^mistral-nemo": 12,
    r"^mistralguard": 7,
    r"^athene-v2": 72,
    r"^phi-2|^phi-3(\.5)?-mini|^phixtral": 3,
    r"^phi-3-medium|^phi-4": 14,
    r"^openchat-3\.5": 7,
    r"^laserxtral": 24,
    r"^sauerkrautlm-una-solar": 10.7,
    r"^tess-xl": 120,
    r"^shiningvaliant": 70,
}
# Open-weight models served by a hosted API, by size (input = output): the tiers of the
# serverless price lists of 2024 (Together, Fireworks).
OPEN_TIERS = [(4, 0.1), (8.5, 0.2), (14, 0.3), (35, 0.8), (73, 0.9), (150, 1.2), (1e9, 3.5)]
MOE = {"8x7b": 0.6, "8x22b": 1.2}
UNKNOWN_OPEN = 0.5


def guess_price(model: str) -> ModelPrice:
    """A list price for `model`: its API's, else a hosted open model's by parameter count."""
    name = normalize_model_name(model)
    for pattern, (inp, out) in API_PRICES.items():
        if re.search(pattern, name):
            return ModelPrice(input_per_million=inp, output_per_million=out)
    for key, price in MOE.items():
        if key in name:
            return ModelPrice(input_per_million=price, output_per_million=price)
    size = re.search(r"(\d+(?:\.\d+)?)b\b", name)
    known = next((b for pattern, b in KNOWN_SIZES.items() if re.search(pattern, name)), None)
    billions = float(size.group(1)) if size else known
    price = UNKNOWN_OPEN
    if billions is not None:
        price = next(p for limit, p in OPEN_TIERS if billions <= limit)
    return ModelPrice(input_per_million=price, output_per_million=price)


def held_out_tables() -> dict[str, pd.DataFrame]:
    return {
        t.name: t.rows.assign(model=t.rows["model"].map(normalize_model_name))
        for t in find_outcome_tables(DATA / "train")
    }


def split_prompts(
    table: pd.DataFrame, share: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of a seeded `share` of the table's prompts, rows of the others)."""
    prompts = table["prompt"].drop_duplicates().sample(frac=1.0, random_state=seed)
    chosen = set(prompts.iloc[: round(share * len(prompts))])
    inside = table["prompt"].isin(chosen)
    return table[inside][["prompt", "model", "score"]], table[~inside]


def shift_to_means(predicted: np.ndarray, means: np.ndarray, steps: int = 60) -> np.ndarray:
    """`predicted` (prompts, models) with each model's logits moved by one constant so that its
    mean over the prompts is `means` (bisection on the constant: the mean rises with it)."""
    logits = np.log(np.clip(predicted, 1e-6, 1 - 1e-6) / np.clip(1 - predicted, 1e-6, 1))
    target = np.clip(means, 1e-4, 1 - 1e-4)
    lo, hi = np.full(predicted.shape[1], -40.0), np.full(predicted.shape[1], 40.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        low = (1 / (1 + np.exp(-(logits + mid)))).mean(axis=0) < target
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return 1 / (1 + np.exp(-(logits + (lo + hi) / 2)))


def diagnose(
    table: pd.DataFrame, report: MultiModelReport, router: MultiModelRouter, prices: Prices
) -> dict[str, float]:
    """AIQ minus the zero router's for the three stand-ins of `--diagnose` (module doc)."""
    matrix = quality_matrix(table)
    index = {normalize_model_name(m): i for i, m in enumerate(matrix.models)}
    true_q = matrix.quality[:, [index[normalize_model_name(m)] for m in report.models]]
    router.select(report.models)
    try:
        predicted = router.qualities(matrix.prompts)
    finally:
        router.select(None)
    costs = prompt_costs(prices.for_models(report.models), matrix.prompts)
    stand_ins = {
        "predicted_means": np.broadcast_to(predicted.mean(axis=0), predicted.shape),
        "true_means": np.broadcast_to(true_q.mean(axis=0), predicted.shape),
        "router_at_true_means": shift_to_means(predicted, true_q.mean(axis=0)),
    }
    return {
        f"{name}_minus_zero": round(
            judge(q, true_q, costs, report.models).router_aiq - report.zero_router_aiq, 4
        )
        for name, q in stand_ins.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", choices=RECIPES)
    parser.add_argument("--held-out", action="append")
    parser.add_argument("--labelled-share", type=float, default=0.0)
    parser.add_argument(
        "--labelled-weight",
        type=float,
        default=1.0,
        help="each labelled row's weight (as `routeray train --extra-weight` gives a user's)",
    )
    parser.add_argument("--diagnose", action="store_true", help="also judge the stand-ins")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args()
    recipes = args.recipe or list(RECIPES)
    outcomes = load_model_outcomes(DATA / "train", DATA / "eval")
    tables = held_out_tables()
    names = args.held_out or sorted(tables)
    results = []
    with embedding_cache(CACHE_DIR):
        for recipe in recipes:
            for name in names:
                started = time.perf_counter()
                rest = outcomes[outcomes["source"] != name]
                table = tables[name]
                if args.labelled_share > 0:
                    labelled, table = split_prompts(table, args.labelled_share)
                    own = labelled.assign(source=name, weight=args.labelled_weight)
                    rest = pd.concat([rest.assign(weight=1.0), own], ignore_index=True)
                router = MultiModelRouter.train(rest, recipe=recipe)
                prices = Prices(models={m: guess_price(m) for m in table["model"].unique()})
                row = {
                    "recipe": recipe,
                    "held_out": name,
                    "labelled_share": args.labelled_share,
                    "labelled_weight": args.labelled_weight,
                }
                try:
                    report, left_out = judge_table(table, router.models, router.qualities, prices)
                except ValueError as exc:
                    row["skipped"] = str(exc)[:200]
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                row |= {
                    "models": len(report.models),
                    "prompts": report.prompts,
                    "router_aiq": round(report.router_aiq, 4),
                    "zero_router_aiq": round(report.zero_router_aiq, 4),
                    "oracle_aiq": round(report.oracle_aiq, 4),
                    "router_minus_zero": round(report.router_aiq - report.zero_router_aiq, 4),
                    "best_model_quality": round(float(report.single["quality"].max()), 4),
                    "cheapest_model_quality": round(
                        float(report.single.sort_values("cost")["quality"].iloc[0]), 4
                    ),
                    "judged_models": report.models,
                    "table_models_router_lacks": len(left_out["table_models_router_lacks"]),
                    "seconds": round(time.perf_counter() - started, 1),
                }
                if args.diagnose:
                    row |= diagnose(table, report, router, prices)
                results.append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k != "judged_models"}), flush=True
                )
    frame = pd.DataFrame(results)
    if "router_minus_zero" in frame:
        print(frame.groupby("recipe")["router_minus_zero"].agg(["mean", "count"]))
        print(frame.groupby("recipe")["router_minus_zero"].apply(lambda s: int((s > 0).sum())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
