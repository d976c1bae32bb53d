"""How a prompt's static token vectors become one vector, and what that does to routing.

The shipped `fast` router averages its static table's rows over a prompt. This trains the
default recipe (`quality_gap`, its whole grid, leave one training source out) on other
representations built from the same table and the same tokens, and prints for each the
training criterion, the held-out APGR per source and the APGR on the three benchmarks, all in
one run:

- `mean`: the shipped representation (reproduces `fast`);
- `max`: mean and the per-dimension value of largest magnitude, concatenated;
- `pmeans`: mean, max and min (concatenated power means);
- `last`, `thirds`, `halves`: the mean plus means over parts of the prompt (last third;
  first and last thirds; first and second halves): where in the prompt a token stands;
- `centred`, `pc1`, `pc2`: the mean minus the training prompts' mean vector, then also without
  their first one or two principal components (SIF's common-component removal);
- `balanced`, `sqrt-balanced`: the mean, with each training source weighing the same in total
  (or by the square root of its size) instead of each row weighing 1.

Each part is unit-normalised before concatenating, so that no part dominates by scale.

    python -m bench.static_pooling [--only mean max ...] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

import routers.kinds.quality_gap as quality_gap
from routers.data.prompt_labels import load_prompt_labels
from routers.evaluation.benchmarks import BENCHMARKS, load_benchmark
from routers.evaluation.metrics import evaluate_scores
from routers.shipped import router_path
from routers.text.features import prompt_features

Pool = Callable[[np.ndarray], list[np.ndarray]]


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def _signed_max(s: np.ndarray) -> np.ndarray:
    return s[np.abs(s).argmax(0), np.arange(s.shape[1])]


def _head(s: np.ndarray, part: int) -> np.ndarray:
    return s[: max(1, len(s) // part)].mean(0)


def _tail(s: np.ndarray, part: int) -> np.ndarray:
    return s[-max(1, len(s) // part) :].mean(0)


POOLS: dict[str, Pool] = {
    "mean": lambda s: [s.mean(0)],
    "max": lambda s: [s.mean(0), _signed_max(s)],
    "pmeans": lambda s: [s.mean(0), s.max(0), s.min(0)],
    "last": lambda s: [s.mean(0), _tail(s, 3)],
    "thirds": lambda s: [s.mean(0), _tail(s, 3), _head(s, 3)],
    "halves": lambda s: [s.mean(0), _head(s, 2), s[len(s) // 2 :].mean(0)],
}
# Representations that post-process the mean vector, or weigh the training rows.
POST = {"centred": 0, "pc1": 1, "pc2": 2}
WEIGHTED = {"balanced": 1.0, "sqrt-balanced": 0.5}


class PooledEmbedder:
    """`encode` as `routers.text.static.StaticEmbedder`, with another pooling."""

    def __init__(self, model_dir: Path, pool: Pool) -> None:
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(model_dir), force_download=False)
        self.pool = pool
        self.transform: Callable[[np.ndarray], np.ndarray] = lambda v: v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        seqs = self.model.encode_as_sequence(list(texts), max_length=None)
        rows = []
        for seq in seqs:
            s = np.asarray(seq, np.float32)
            s = s if len(s) else np.zeros((1, self.model.dim), np.float32)
            parts = [_unit(p) for p in self.pool(s)]
            rows.append(np.concatenate(parts) / np.sqrt(len(parts)))
        return self.transform(np.stack(rows).astype(np.float32))


def common_component_removal(train: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    mean = train.mean(0)
    components = np.linalg.svd(train - mean, full_matrices=False)[2][:k]

    def transform(v: np.ndarray) -> np.ndarray:
        x = v - mean
        return _unit(x - (x @ components.T) @ components).astype(np.float32)

    return transform


def run(name: str, labels: pd.DataFrame, benchmarks: dict[str, pd.DataFrame]) -> str:
    started = time.time()
    embedder = PooledEmbedder(router_path("fast") / "embedder", POOLS.get(name, POOLS["mean"]))
    if name in POST:
        train = embedder.encode(labels["prompt"].tolist())
        embedder.transform = common_component_removal(train, POST[name])
    labels = labels.copy()
    if name in WEIGHTED:
        size = labels["source"].map(labels["source"].value_counts())
        labels["weight"] = (1.0 / size) ** WEIGHTED[name]
        labels["weight"] /= labels["weight"].mean()
    # The recipe asks `get_embedder` for its embedder; this hands it the pooled one instead.
    quality_gap.get_embedder = lambda **_: embedder
    router = quality_gap.QualityGapRouter.train(labels)
    to_text = quality_gap.TEXT_MODES[router.text]
    apgr = []
    for df in benchmarks.values():
        prompts = df["prompt"].tolist()
        feats = prompt_features(prompts) if router.uses_features else None
        scores = router.score_embeddings(embedder.encode([to_text(p) for p in prompts]), feats)
        apgr.append(evaluate_scores(scores, df["weak_score"], df["strong_score"])[1].apgr)
    held = router.hyperparameters
    return (
        f"| {name} | {' / '.join(f'{a:.3f}' for a in apgr)} | "
        + " / ".join(f"{v:.3f}" for v in held["held_out_apgr_by_source"].values())
        + f" | {held['held_out_apgr']:.3f} | text={router.text}; "
        + "; ".join(m.variant.describe() for m in router.members)
        + f" | {time.time() - started:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data", help="holds train/ and eval/")
    names = [*POOLS, *POST, *WEIGHTED]
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    args = parser.parse_args()
    data = Path(args.data)
    labels = load_prompt_labels(data / "train", data / "eval")
    benchmarks = {b: load_benchmark(b, data / "eval") for b in BENCHMARKS}
    print(
        f"| representation | {' / '.join(BENCHMARKS)} | held out ("
        + ", ".join(sorted(labels["source"].unique()))
        + ") | criterion | chosen | time |"
    )
    for name in args.only:
        print(run(name, labels, benchmarks), flush=True)


if __name__ == "__main__":
    main()
