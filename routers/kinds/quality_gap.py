"""Quality-gap router: predicts how much the strong model gains over the weak one on a prompt.

Trained on per-prompt outcome labels (`routers.data.prompt_labels`) rather than single battles:
difficulty (how many models fail the prompt) and gap (how much better the best models do),
averaged over every model a source graded and standardised within each source so that
correctness and judge grades share one scale. A member of the router predicts one set of those
labels from the prompt's sentence embedding (plus surface features, `routers.text.features`)
with

- ridge: a linear map, fitted in closed form;
- knn: a similarity-weighted mean of the labels of the k most similar training prompts
  (softmax of cosine similarity / temperature), the non-parametric cousin of SW ranking;
- blend: both, averaged after standardising each.

The router averages the standardised predictions of its members, and a one-dimensional
logistic fit maps that to P(strong wins) on the routed pair's own outcomes.

Everything is chosen on the training data by one criterion, APGR (the paper's metric) of the
routed pair on held-out prompts: which text is embedded (the whole prompt, or a
multiple-choice question without its option list), which members (the best N of the grid, N
chosen by the criterion of their average) and the calibration. Held out means a whole
training source at a time for the shipped router, whose benchmarks are unlike any one source;
with a benchmark's own labels (`routeray eval --cross-fit` adds them as sources named
`golden:*`) it means K folds of those rows, the target distribution.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch

from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.data.prompt_labels import BASE_LABELS, PROMPT_LABELS
from routers.data.tables import GOLDEN_PREFIX
from routers.evaluation.metrics import apgr_spread, evaluate_scores
from routers.kinds.pair import FixedPairLoadOptions, check_fixed_pair
from routers.progress import progress
from routers.protocol import BaseRouter, LoadOptions
from routers.text.embedders import LazyEmbedder, get_embedder
from routers.text.features import prompt_features
from routers.training.splits import prompt_folds

logger = logging.getLogger(__name__)
T = TypeVar("T")

LABEL_SETS = {
    "all_fail": ("all_fail",),
    "mid_fail": ("mid_fail",),
    "difficulty": ("all_fail", "mid_fail", "top_minus_all", "top_minus_mid"),
    "all": BASE_LABELS,
    "pair": ("pair_gap",),
    # Task-aware: a prompt's own label and its task family's mean, averaged.
    "family": ("pair_gap", "family_gap"),
    "family_mid": ("mid_fail", "family_mid_fail"),
    # The classes' expected gap on the item, from every model of its table (item response).
    "irt": ("irt_gap",),
    "irt_family": ("irt_gap", "family_gap"),
}
# Label sets also learned on one scale across sources (`Variant.pooled`).
POOLED_LABEL_SETS = ("pair", "family", "mid_fail", "family_mid", "irt", "irt_family")
ENSEMBLE_SIZES = (1, 3, 5, 10)
# Surface features are on another scale than unit-norm embeddings; this keeps the ridge
# penalty from being spent on them alone.
FEATURE_SCALE = 0.1
QUERY_CHUNK = 1024
NORM_SAMPLE = 2000
_OPTION_LETTERS = "ABCDEFGHIJ"
_OPTION_LINE = re.compile(r"([A-J])[.)] ")
_ANSWER_CUE = re.compile(r"\s*Answer:\s*")


def question_stem(prompt: str) -> str:
    """A multiple-choice prompt without its option lines and trailing "Answer:" cue.

    Sources list 4 or 10 options in their own layout; the embedding of the question itself
    is what carries over from one to another. A prompt is multiple choice only when it ends in
    options lettered A, B, ... in order, at least two, each starting its own line (an option
    may run on over blank or indented lines), then optionally an "Answer:" line: how MMLU and
    MMLU-Pro lay theirs out. Any other prompt comes back unchanged: a line of running text that
    happens to start with "A." (an author's initial, a lone lettered remark) or a Roman "I."
    statement above the options is part of what is asked."""
    lines = prompt.rstrip().split("\n")
    if _ANSWER_CUE.fullmatch(lines[-1]):
        lines.pop()
    letters = []  # the options' letters, last one first
    # Line 0 is never an option: a multiple-choice prompt starts with its question.
    for i in range(len(lines) - 1, 0, -1):
        option = _OPTION_LINE.match(lines[i])
        if option:
            letters.append(option[1])
            if option[1] == "A":
                break
        elif lines[i].strip() and not lines[i][0].isspace():
            return prompt
    else:
        return prompt
    if len(letters) < 2 or "".join(reversed(letters)) != _OPTION_LETTERS[: len(letters)]:
        return prompt
    return "\n".join(lines[:i]).strip() or prompt


TEXT_MODES: dict[str, Callable[[str], str]] = {"prompt": lambda p: p, "stem": question_stem}


@dataclass(frozen=True)
class Variant:
    """One point of the model-selection grid."""

    model: str  # ridge, knn or blend
    labels: str  # a LABEL_SETS key
    features: bool = False
    alpha: float = 1.0
    k: int = 100
    temperature: float = 0.05
    other_weight: float = 1.0  # weight of non-golden rows when golden labels are present
    # Labels standardised over all sources together instead of within each: a member then
    # also learns which sources (and families) the weak model fails more, not only which of
    # a source's prompts.
    pooled: bool = False

    @property
    def ridge_share(self) -> float:
        return {"ridge": 1.0, "knn": 0.0, "blend": 0.5}[self.model]

    @property
    def columns(self) -> list[int]:
        offset = len(PROMPT_LABELS) if self.pooled else 0
        return [offset + PROMPT_LABELS.index(name) for name in LABEL_SETS[self.labels]]

    def describe(self) -> str:
        parts = [self.model, f"labels={self.labels}"]
        if self.ridge_share > 0:
            parts.append(f"alpha={self.alpha:g}")
        if self.ridge_share < 1:
            parts.append(f"k={self.k} t={self.temperature:g}")
        if self.features:
            parts.append("+features")
        if self.pooled:
            parts.append("pooled")
        if self.other_weight != 1.0:
            parts.append(f"other_weight={self.other_weight:g}")
        return " ".join(parts)


def default_grid(golden: bool) -> list[Variant]:
    """Without golden labels: every predictor x label set x features. With them (cross-fit),
    a smaller grid that also weighs the other sources against the benchmark's own labels."""
    if golden:
        grid = [
            Variant("ridge", labels, True, alpha, other_weight=other)
            for alpha, labels, other in itertools.product(
                (1.0, 10.0), ("pair", "all"), (1.0, 0.1, 0.0)
            )
        ]
        return grid + [
            Variant("knn", "pair", temperature=0.2, other_weight=o) for o in (1.0, 0.1, 0.0)
        ]
    models = [
        Variant("ridge", "", alpha=1.0),
        Variant("ridge", "", alpha=10.0),
        Variant("ridge", "", alpha=100.0),
        Variant("knn", "", temperature=0.05),
        Variant("knn", "", temperature=0.2),
        Variant("knn", "", k=300, temperature=0.2),
        Variant("knn", "", k=300, temperature=1.0),
        Variant("blend", "", alpha=1.0, temperature=0.05),
        Variant("blend", "", alpha=10.0, temperature=0.2),
    ]
    grid = []
    for base, labels, features, pooled in itertools.product(
        models, LABEL_SETS, (False, True), (False, True)
    ):
        if base.model == "knn" and features:
            continue  # surface features only enter the linear part
        if pooled and labels not in POOLED_LABEL_SETS:
            continue
        grid.append(
            Variant(
                base.model, labels, features, base.alpha, base.k, base.temperature, pooled=pooled
            )
        )
    return grid


def standardise_within_source(values: np.ndarray, sources: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values, dtype=np.float64)
    for source in np.unique(sources):
        rows = sources == source
        block = values[rows]
        std = block.std(axis=0)
        out[rows] = (block - block.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return out


def standardise(values: np.ndarray) -> np.ndarray:
    std = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(std > 0, std, 1.0)


def weighted_gram(x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean of x's rows and the weighted scatter about it (times the row count):
    what a weighted ridge fit on x needs besides its targets and penalty."""
    w = weight / weight.sum()
    x_mean = w @ x
    xc = x - x_mean
    return x_mean, (xc * w[:, None]).T @ xc * len(x)


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    alpha: float,
    gram: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ridge with an unpenalised intercept, all targets at once; `gram` is
    `weighted_gram(x, weight)` when already known."""
    x_mean, scatter = gram if gram is not None else weighted_gram(x, weight)
    w = weight / weight.sum()
    y_mean = w @ y
    xc, yc = x - x_mean, y - y_mean
    coef = np.linalg.solve(scatter + alpha * np.eye(x.shape[1]), (xc * w[:, None]).T @ yc * len(x))
    return coef, y_mean - x_mean @ coef


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch: numpy's BLAS keeps its own threads spinning after each call,
    and on a small machine they steal the cores the embedder's torch threads need next."""

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x if x.dtype == np.float32 else x.astype(np.float32))

    return tensor(a).matmul(tensor(b)).numpy()


def nearest(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's `k` most similar bank rows, in no particular order, and their similarities."""
    k = min(k, len(bank))
    top = np.empty((len(queries), k), dtype=np.int64)
    near = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        sims = matmul(queries[rows], bank.T)
        chunk = _top_k(sims, k)
        # Each row's neighbours in bank order, however they were found: the weighted means
        # over them then add up in one order.
        chunk.sort(axis=1)
        top[rows] = chunk
        near[rows] = np.take_along_axis(sims, chunk, axis=1)
    return top, near


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Each row's `k` largest columns. torch.topk is several times faster than argpartition,
    and where the k-th largest value is strictly above the next one the set is the same
    whichever picks it. Where it is tied (copies of a prompt in the bank), the two pick
    different copies, which moved the trained routers' scores: argpartition decides those
    rows, as it decided them all before."""
    if k >= sims.shape[1]:
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]
    values, index = torch.topk(torch.from_numpy(sims), k + 1, dim=1)
    top = index[:, :k].numpy().copy()
    tied = (values[:, k - 1] == values[:, k]).numpy()
    if tied.any():
        top[tied] = np.argpartition(-sims[tied], k - 1, axis=1)[:, :k]
    return top


def knn_predict(
    top: np.ndarray, near: np.ndarray, targets: np.ndarray, weight: np.ndarray, temperature: float
) -> np.ndarray:
    """The similarity-weighted mean of the neighbours' targets (`nearest`'s `top` and `near`)."""
    out = np.empty((len(top), targets.shape[1]))
    for start in range(0, len(top), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        sims = near[rows].astype(np.float64)
        mass = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature) * weight[top[rows]]
        mass /= mass.sum(axis=1, keepdims=True)
        out[rows] = np.einsum("qk,qkl->ql", mass, targets[top[rows]])
    return out


def _digest(array: np.ndarray) -> tuple[Any, ...]:
    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.blake2b(array.data, digest_size=16).digest()


@dataclass
class Bank:
    """The training rows members are fitted on and kNN members look up: embeddings and all
    labels.

    With `memo` (a dict; None: off) the bank remembers what members compute from its rows
    alone (neighbour searches, weighted grams), keyed by the content of what they were asked:
    while a router trains, members that differ only in labels, penalty or temperature ask the
    same, once."""

    embeddings: np.ndarray
    targets: np.ndarray
    memo: dict[tuple[Any, ...], Any] | None = None

    def remembered(self, key: Callable[[], tuple[Any, ...]], compute: Callable[[], T]) -> T:
        """`compute()`, or what it gave before for the same `key()`."""
        if self.memo is None:
            return compute()
        found = key()
        if found not in self.memo:
            self.memo[found] = compute()
        return self.memo[found]

    def nearest(
        self, queries: np.ndarray, rows: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`nearest` among the bank's `rows` (None: all), as indices into those rows."""
        if rows is not None and len(rows) == len(self.embeddings):
            rows = None
        return self.remembered(
            lambda: ("nearest", _digest(queries), None if rows is None else _digest(rows), k),
            lambda: nearest(queries, self.embeddings if rows is None else self.embeddings[rows], k),
        )


@dataclass
class Member:
    """A variant fitted on some rows. `norms` holds, per label, the mean and spread of the
    ridge and kNN predictions; `output` the mean and spread of the member's combined output,
    both on training rows, so that members and their parts average on one scale."""

    variant: Variant
    coef: np.ndarray | None
    intercept: np.ndarray | None
    norms: np.ndarray  # (labels, 4)
    output: np.ndarray  # (2,)
    # kNN: the bank rows this member may look up (those with positive weight), and weights.
    rows: np.ndarray | None = None
    row_weight: np.ndarray | None = None

    def ridge(self, emb: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        return matmul(_design(emb, feats, self.variant.features), self.coef) + self.intercept

    def knn(self, emb: np.ndarray, bank: Bank) -> np.ndarray:
        top, near = bank.nearest(emb, self.rows, self.variant.k)
        targets = bank.targets if self.rows is None else bank.targets[self.rows]
        return knn_predict(
            top, near, targets[:, self.variant.columns], self.row_weight, self.variant.temperature
        )

    def predict(self, emb: np.ndarray, feats: np.ndarray | None, bank: Bank | None) -> np.ndarray:
        share = self.variant.ridge_share
        total = np.zeros((len(emb), len(self.variant.columns)))
        if share > 0:
            total += share * (self.ridge(emb, feats) - self.norms[:, 0]) / self.norms[:, 1]
        if share < 1:
            total += (1 - share) * (self.knn(emb, bank) - self.norms[:, 2]) / self.norms[:, 3]
        return (total.mean(axis=1) - self.output[0]) / self.output[1]


def _design(emb: np.ndarray, feats: np.ndarray | None, use: bool) -> np.ndarray:
    if not use:
        return emb
    if feats is None:
        raise ValueError("this member reads surface features: pass prompt_features(prompts)")
    return np.hstack([emb, FEATURE_SCALE * feats])


def fit_member(variant: Variant, bank: Bank, feats: np.ndarray, weight: np.ndarray) -> Member:
    """Fit on the bank's rows with positive weight (`bank.targets` holds every label)."""
    emb = bank.embeddings
    rows = np.flatnonzero(weight > 0)
    n = len(variant.columns)
    member = Member(
        variant, None, None, np.tile([0.0, 1.0, 0.0, 1.0], (n, 1)), np.array([0.0, 1.0])
    )
    if variant.ridge_share > 0:
        x = _design(emb[rows], feats[rows], variant.features)
        gram = bank.remembered(
            lambda: (
                "gram",
                _digest(rows),
                _digest(weight[rows]),
                _digest(feats[rows]) if variant.features else None,
            ),
            lambda: weighted_gram(x, weight[rows]),
        )
        member.coef, member.intercept = fit_ridge(
            x, bank.targets[rows][:, variant.columns], weight[rows], variant.alpha, gram
        )
    if variant.ridge_share < 1:
        member.rows, member.row_weight = rows.astype(np.int64), weight[rows].astype(np.float64)
    # Scales from a fixed sample of training rows. A kNN prediction of a training row includes
    # that row, which inflates its spread a little, equally for every label.
    sample = rows[np.random.default_rng(0).permutation(len(rows))[:NORM_SAMPLE]]
    if variant.ridge_share > 0:
        ridge = member.ridge(emb[sample], feats[sample])
        member.norms[:, 0], member.norms[:, 1] = ridge.mean(0), ridge.std(0) + 1e-9
    if variant.ridge_share < 1:
        knn = member.knn(emb[sample], bank)
        member.norms[:, 2], member.norms[:, 3] = knn.mean(0), knn.std(0) + 1e-9
    out = member.predict(emb[sample], feats[sample], bank)
    member.output = np.array([out.mean(), out.std() + 1e-9])
    return member


def fit_logistic(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, weight: np.ndarray | None = None
) -> tuple[float, float]:
    """P = sigmoid(a x + b) fitted to soft labels y in [0, 1], with an intercept per group;
    rows weigh `weight` (None: equally).

    Sources differ in how often the strong model wins at all; one shared intercept would let
    those base rates, not the prompt, decide the slope. The returned intercept is the groups'
    row-weighted mean."""
    codes, names = pd.factorize(pd.Series(groups))
    params = torch.zeros(1 + len(names), dtype=torch.float64, requires_grad=True)
    xt, yt = (torch.as_tensor(a, dtype=torch.float64) for a in (x, y))
    wt = None if weight is None else torch.tensor(np.asarray(weight), dtype=torch.float64)
    ct = torch.as_tensor(codes, dtype=torch.long)
    optimiser = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = params[0] * xt + params[1:][ct]
        if wt is None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt)
        else:
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yt, reduction="none"
            )
            loss = (losses * wt).sum() / wt.sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    a = float(params[0].detach())
    intercepts = params[1:].detach()[ct]
    b = float(intercepts.mean() if wt is None else (intercepts * wt).sum() / wt.sum())
    return a, b


def held_out_splits(
    prompts: pd.Series, sources: np.ndarray, golden: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row masks: K folds of the golden rows (every other row always trains),
    or, without golden rows, one whole training source held out at a time."""
    if golden.any():
        fold = prompt_folds(prompts, folds, seed)
        return [(~(golden & (fold == f)), golden & (fold == f)) for f in range(folds)]
    return [(sources != s, sources == s) for s in np.unique(sources)]


MIN_JUDGED_ROWS = 20


def _judged_sources(sources: np.ndarray, golden: np.ndarray) -> list[str]:
    """The sources whose held-out APGR is the criterion: the golden ones if any, else every
    source large enough to draw a cost-quality curve on (all, if none is)."""
    pool = sources[golden] if golden.any() else sources
    names, counts = np.unique(pool, return_counts=True)
    large = names[counts >= MIN_JUDGED_ROWS]
    return [str(s) for s in (large if len(large) else names)]


@dataclass
class _FitInputs:
    """What fitting members reads from a labelled table: the surface features standardised
    (with the statistics that did it), the labels standardised within each source, and each
    row's weight."""

    sources: np.ndarray
    golden: np.ndarray
    feats: np.ndarray
    feature_stats: tuple[np.ndarray, np.ndarray]
    targets: np.ndarray
    row_weight: np.ndarray | float

    @classmethod
    def of(cls, labels: pd.DataFrame) -> _FitInputs:
        sources = labels["source"].to_numpy().astype(str)
        raw = labels[list(PROMPT_LABELS)].to_numpy(float)
        raw_features = prompt_features(labels["prompt"].tolist())
        mean, std = raw_features.mean(0), raw_features.std(0) + 1e-6
        return cls(
            sources=sources,
            golden=np.char.startswith(sources, GOLDEN_PREFIX),
            feats=(raw_features - mean) / std,
            feature_stats=(mean, std),
            targets=np.hstack([standardise_within_source(raw, sources), standardise(raw)]),
            # Rows may carry their own weight (a user's `--extra-weight`); the shared sources'
            # weigh 1.
            row_weight=labels["weight"].fillna(1.0).to_numpy(float) if "weight" in labels else 1.0,
        )

    def weights(self, variant: Variant) -> np.ndarray:
        return np.where(self.golden, 1.0, variant.other_weight) * self.row_weight

    def fit(
        self, variants: Sequence[Variant], embeddings: np.ndarray
    ) -> tuple[list[Member], Bank | None]:
        """Members of `variants` fitted on every row, and the bank if a kNN member needs it."""
        full = Bank(embeddings, self.targets)
        members = [fit_member(v, full, self.feats, self.weights(v)) for v in variants]
        return members, full if any(m.rows is not None for m in members) else None


@dataclass
class _Candidate:
    text: str
    variant: Variant
    held_out: np.ndarray
    criterion: float
    by_source: dict[str, float]


class QualityGapRouter(LazyEmbedder, BaseRouter):
    kind = "quality_gap"
    trains_on: ClassVar[str] = "prompt_labels"
    load_options: ClassVar[type[LoadOptions]] = FixedPairLoadOptions

    def __init__(
        self,
        members: Sequence[Member],
        bank: Bank | None,
        calibration: tuple[float, float],
        feature_stats: tuple[np.ndarray, np.ndarray],
        *,
        text: str = "prompt",
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        embedder: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> None:
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {sorted(TEXT_MODES)}, got {text!r}")
        self.members = list(members)
        self.bank = bank
        self.calibration = calibration
        self.feature_mean, self.feature_std = (np.asarray(a, np.float32) for a in feature_stats)
        self.text = text
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.embedder_config = dict(embedder or {})
        self.hyperparameters = dict(hyperparameters or {})

    @property
    def uses_features(self) -> bool:
        return any(m.variant.features and m.variant.ridge_share > 0 for m in self.members)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        to_text = TEXT_MODES[self.text]
        embeddings = self.embedder.encode([to_text(p) for p in prompts])
        # Surface features cost a regex pass per prompt: only when a member reads them.
        raw_features = prompt_features(prompts) if self.uses_features else None
        return self.score_embeddings(embeddings, raw_features)

    def gap(self, embeddings: np.ndarray, raw_features: np.ndarray | None) -> np.ndarray:
        """The standardised predicted quality gap (higher: the strong model helps more)."""
        feats = None
        if raw_features is not None:
            feats = (raw_features - self.feature_mean) / self.feature_std
        emb = np.asarray(embeddings, dtype=np.float32)
        return np.mean([m.predict(emb, feats, self.bank) for m in self.members], axis=0)

    def score_embeddings(
        self, embeddings: np.ndarray, raw_features: np.ndarray | None = None
    ) -> np.ndarray:
        a, b = self.calibration
        return 1.0 / (1.0 + np.exp(-(a * self.gap(embeddings, raw_features) + b)))

    def config(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "members": [asdict(m.variant) for m in self.members],
            "calibration": list(self.calibration),
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "embedder": self.embedder_config,
            "hyperparameters": self.hyperparameters,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "feature_mean": torch.from_numpy(self.feature_mean),
            "feature_std": torch.from_numpy(self.feature_std),
        }
        for i, m in enumerate(self.members):
            out[f"member{i}.norms"] = torch.from_numpy(m.norms.astype(np.float64))
            out[f"member{i}.output"] = torch.from_numpy(m.output.astype(np.float64))
            if m.coef is not None:
                out[f"member{i}.coef"] = torch.from_numpy(m.coef.astype(np.float32))
                out[f"member{i}.intercept"] = torch.from_numpy(m.intercept.astype(np.float32))
            if m.rows is not None:
                out[f"member{i}.rows"] = torch.from_numpy(m.rows.astype(np.int64))
                out[f"member{i}.row_weight"] = torch.from_numpy(m.row_weight.astype(np.float32))
        if self.bank is not None:
            # Half precision halves the file; cosine similarities move by < 1e-3.
            out["bank.embeddings"] = torch.from_numpy(self.bank.embeddings.astype(np.float16))
            out["bank.targets"] = torch.from_numpy(self.bank.targets.astype(np.float32))
        return out

    def refit(self, labels: pd.DataFrame) -> QualityGapRouter:
        """This router's text, members and calibration fitted on other labelled rows, nothing
        chosen again: how a distilled student's teacher is held out from a source."""
        inputs = _FitInputs.of(labels.reset_index(drop=True))
        to_text = TEXT_MODES[self.text]
        members, bank = inputs.fit(
            [m.variant for m in self.members],
            self.embedder.encode([to_text(p) for p in labels["prompt"]]),
        )
        return type(self)(
            members,
            bank,
            self.calibration,
            inputs.feature_stats,
            text=self.text,
            strong_model=self.strong_model,
            weak_model=self.weak_model,
            embedder=self.embedder_config,
        )

    @classmethod
    def from_checkpoint(
        cls,
        config: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        options: FixedPairLoadOptions,
    ) -> QualityGapRouter:
        check_fixed_pair(cls, config, options)

        def array(name: str) -> np.ndarray | None:
            return tensors[name].numpy().astype(np.float64) if name in tensors else None

        members = [
            Member(
                Variant(**variant),
                array(f"member{i}.coef"),
                array(f"member{i}.intercept"),
                array(f"member{i}.norms"),
                array(f"member{i}.output"),
                tensors[f"member{i}.rows"].numpy() if f"member{i}.rows" in tensors else None,
                array(f"member{i}.row_weight"),
            )
            for i, variant in enumerate(config["members"])
        ]
        bank = None
        if "bank.embeddings" in tensors:
            bank = Bank(
                tensors["bank.embeddings"].numpy().astype(np.float32), array("bank.targets")
            )
        return cls(
            members,
            bank,
            tuple(config["calibration"]),
            (tensors["feature_mean"].numpy(), tensors["feature_std"].numpy()),
            text=config["text"],
            strong_model=config["strong_model"],
            weak_model=config["weak_model"],
            embedder=config.get("embedder"),
            hyperparameters=config.get("hyperparameters"),
        )

    @classmethod
    def train(
        cls,
        labels: pd.DataFrame,
        *,
        seed: int = 0,
        embedder: dict[str, Any] | None = None,
        folds: int = 5,
        grid: Iterable[Variant] | None = None,
        texts: Sequence[str] | None = None,
        ensemble_sizes: Sequence[int] = ENSEMBLE_SIZES,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
    ) -> QualityGapRouter:
        """Choose text, members and calibration by held-out APGR, then refit on every row."""
        labels = labels.reset_index(drop=True)
        inputs = _FitInputs.of(labels)
        sources, golden = inputs.sources, inputs.golden
        feats, targets = inputs.feats, inputs.targets
        judged = _judged_sources(sources, golden)
        grid = list(grid or default_grid(bool(golden.any())))
        # Cross-fitting trains K routers; there the benchmark's own text is the one to learn.
        texts = list(texts or (["prompt"] if golden.any() else list(TEXT_MODES)))
        prompts = labels["prompt"].tolist()
        splits = held_out_splits(labels["prompt"], sources, golden, folds, seed)
        weak_q = labels["weak_q"].to_numpy(float)
        strong_q = labels["strong_q"].to_numpy(float)

        def judge(pred: np.ndarray) -> tuple[float, dict[str, float]]:
            by_source = {}
            for s in judged:
                rows = sources == s
                by_source[s] = evaluate_scores(pred[rows], weak_q[rows], strong_q[rows])[1].apgr
            return float(np.mean(list(by_source.values()))), by_source

        candidates: list[_Candidate] = []
        embedded: dict[str, np.ndarray] = {}
        embed = get_embedder(**(embedder or {}))
        for text in texts:
            logger.info(f"embedding {len(set(prompts))} unique prompts ({text})")
            embedded[text] = emb = embed.encode([TEXT_MODES[text](p) for p in prompts])
            held_out = np.zeros((len(grid), len(labels)))
            weights = [inputs.weights(variant) for variant in grid]
            bar = progress(splits, f"quality_gap {text} held-out splits", len(splits), "split")
            for train, test in bar:
                # One bank a split, shared by the grid, which asks it much the same.
                bank = Bank(emb[train], targets[train], memo={})
                for variant, w, pred in zip(grid, weights, held_out, strict=True):
                    member = fit_member(variant, bank, feats[train], w[train])
                    pred[test] = member.predict(emb[test], feats[test], bank)
            for variant, pred in zip(grid, held_out, strict=True):
                criterion, by_source = judge(pred)
                candidates.append(_Candidate(text, variant, pred, criterion, by_source))
                logger.info(
                    f"  {text}: {variant.describe()}: held-out APGR {criterion:.3f} ("
                    + ", ".join(f"{s} {v:.3f}" for s, v in by_source.items())
                    + ")"
                )

        # Average the best N members (a text's own ranking) and keep the N and text whose
        # average does best held out; ties go to the smaller ensemble.
        best: tuple[float, str, list[_Candidate], dict[str, float], np.ndarray] | None = None
        for text in texts:
            ranked = sorted((c for c in candidates if c.text == text), key=lambda c: -c.criterion)
            for size in ensemble_sizes:
                chosen = ranked[:size]
                pred = np.mean([c.held_out for c in chosen], axis=0)
                criterion, by_source = judge(pred)
                logger.info(f"  {text}: average of the best {size}: held-out APGR {criterion:.3f}")
                if best is None or criterion > best[0] + 1e-12:
                    best = (criterion, text, chosen, by_source, pred)
        criterion, text, chosen, by_source, pred = best
        logger.info(
            f"chosen: text={text}, {len(chosen)} member(s) (held-out APGR {criterion:.3f}): "
            + "; ".join(c.variant.describe() for c in chosen)
        )

        judged_rows = np.isin(sources, judged)
        spread = {
            s: round(
                apgr_spread(pred[sources == s], weak_q[sources == s], strong_q[sources == s]), 4
            )
            for s in judged
        }
        # Every judged source on one curve, each scored by members that did not see it: how a
        # mixed stream of traffic from sources never trained on would be routed.
        pooled = evaluate_scores(pred[judged_rows], weak_q[judged_rows], strong_q[judged_rows])
        logger.info(
            "held out, chosen: "
            + ", ".join(f"{s} {by_source[s]:.3f} (sd {spread[s]:.3f})" for s in judged)
            + f"; all sources on one curve {pooled[1].apgr:.3f}"
        )
        members, bank = inputs.fit([c.variant for c in chosen], embedded[text])
        # The logistic map is fitted on held-out predictions, so the probabilities are those of
        # prompts the predictors did not see.
        soft = np.clip((labels["pair_gap"].to_numpy(float) + 1) / 2, 0, 1)
        # Equal weights take the unweighted path: the shipped router's calibration is kept as is.
        calibration = fit_logistic(
            pred, soft, sources, None if np.ndim(inputs.row_weight) == 0 else inputs.row_weight
        )
        router = cls(
            members,
            bank,
            calibration,
            inputs.feature_stats,
            text=text,
            strong_model=strong_model,
            weak_model=weak_model,
            embedder=embedder,
            hyperparameters={
                "seed": seed,
                "held_out": "K folds of golden rows"
                if golden.any()
                else "leave one training source out",
                "criterion": "mean held-out APGR over " + ", ".join(judged),
                "held_out_apgr": criterion,
                "held_out_apgr_by_source": by_source,
                "held_out_apgr_spread_by_source": spread,
                "held_out_apgr_pooled": round(pooled[1].apgr, 4),
                "candidates": [
                    {"text": c.text, "variant": c.variant.describe(), "apgr": round(c.criterion, 4)}
                    for c in candidates
                ],
            },
        )
        # Through the saved precision (half-precision bank), so that a trained router and its
        # reloaded copy score identically.
        return cls.from_checkpoint(router.config(), router.tensors(), FixedPairLoadOptions())
