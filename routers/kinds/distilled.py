"""Distilled router: a teacher router's scores, reproduced from a static embedding.

The teacher (the shipped `minilm` router unless told otherwise) reads every prompt with a
transformer encoder. The student reads a static embedding (`routers.text.static`: a table
lookup and a mean) and one hidden layer, so it costs a small fraction of the teacher per
prompt. It learns the teacher's logit, not the labels: the labels of the training sources are
too few (a few thousand prompts) for a student to find what the teacher found, while the
teacher can label any number of prompts. So the student trains on every prompt of the
training table plus an unlabelled corpus (`routeray train --corpus`: a user's own traffic, or
a task's unlabelled questions), and what it learns is the teacher's ranking of text like that
corpus.

Held out as the teacher measured itself: for each training source, the teacher refitted
without that source's labels (the kind's `refit`, where it has one), a student distilled from
it on every prompt except that source's, and the student's APGR on that source. Those numbers
go into the router's hyperparameters next to the teacher's own, so a student is judged on text
neither it nor its teacher learned from. Nothing is chosen by them: the recipe has no grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from routers.checkpoint import load_router
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.data.tables import GOLDEN_PREFIX
from routers.decision.probability import uncalibrated
from routers.evaluation.metrics import evaluate_scores
from routers.kinds.pair import FixedPairLoadOptions, check_fixed_pair
from routers.protocol import BaseRouter, LoadOptions, Router
from routers.shipped import router_path
from routers.text.embedders import LazyEmbedder, get_embedder
from routers.text.static import is_static_model

logger = logging.getLogger(__name__)

HIDDEN = 256
# The logit of a probability the teacher would never give; keeps 0 and 1 finite.
LOGIT_CLIP = 1e-4
VALIDATION_SHARE = 0.1
BATCH = 200
MAX_EPOCHS = 200
PATIENCE = 10
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-3


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def default_embedder() -> dict[str, Any]:
    """The static table the shipped `fast` router carries."""
    return {"model_path": str(router_path("fast") / "embedder")}


def fit_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int, seed: int
) -> tuple[list[np.ndarray], tuple[float, float]]:
    """One hidden ReLU layer regressing standardised `y` on `x` (Adam, L2, early stopping on
    a held-back tenth, best epoch kept): weights [w1, b1, w2, b2] and y's (mean, std)."""
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    shift, scale = float(y.mean()), float(y.std() + 1e-9)
    xs = torch.from_numpy(np.asarray(x, np.float32))
    ys = torch.from_numpy(((y - shift) / scale).astype(np.float32))
    order = generator.permutation(len(xs))
    n_val = max(1, int(len(xs) * VALIDATION_SHARE)) if len(xs) >= 20 else 0
    val, train = order[:n_val], order[n_val:]
    net = torch.nn.Sequential(
        torch.nn.Linear(xs.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    best, best_state, stale = np.inf, None, 0
    for _ in range(MAX_EPOCHS):
        net.train()
        epoch = generator.permutation(train)
        for start in range(0, len(epoch), BATCH):
            rows = torch.from_numpy(epoch[start : start + BATCH])
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(xs[rows])[:, 0], ys[rows])
            loss.backward()
            opt.step()
        if not n_val:
            continue
        net.eval()
        with torch.no_grad():
            current = float(torch.nn.functional.mse_loss(net(xs[val])[:, 0], ys[val]))
        if current < best - 1e-4:
            best, stale = current, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    layers = [net[0].weight.T, net[0].bias, net[2].weight.T[:, 0], net[2].bias]
    return [w.detach().numpy().astype(np.float32) for w in layers], (shift, scale)


class DistilledRouter(LazyEmbedder, BaseRouter):
    kind = "distilled"
    trains_on: ClassVar[str] = "prompt_labels"
    # The teacher's scores are one pair's, and so are the student's.
    load_options: ClassVar[type[LoadOptions]] = FixedPairLoadOptions

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        target: tuple[float, float],
        *,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        embedder: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> None:
        self.w1, self.b1, self.w2, self.b2 = (np.asarray(w, np.float32) for w in weights)
        self.target = (float(target[0]), float(target[1]))
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.embedder_config = dict(embedder or default_embedder())
        self.hyperparameters = dict(hyperparameters or {})

    def logit(self, embeddings: np.ndarray) -> np.ndarray:
        """The student's estimate of the teacher's logit."""
        hidden = np.maximum(np.asarray(embeddings, np.float32) @ self.w1 + self.b1, 0.0)
        shift, scale = self.target
        return (hidden @ self.w2 + self.b2).astype(np.float64) * scale + shift

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(self.embedder.encode(list(prompts)))))

    @classmethod
    def scores_lightly(cls, config: dict[str, Any]) -> bool:
        # A static embedder is a token-table lookup and the head a small numpy product; a
        # transformer embedder (a distilled student can have one) is not light.
        return is_static_model((config.get("embedder") or default_embedder()).get("model_path"))

    def config(self) -> dict[str, Any]:
        return {
            "hidden": int(self.w1.shape[1]),
            "target": list(self.target),
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "embedder": self.embedder_config,
            "hyperparameters": self.hyperparameters,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("w1", "b1", "w2", "b2")
        return {n: torch.from_numpy(np.ascontiguousarray(getattr(self, n))) for n in names}

    @classmethod
    def from_checkpoint(
        cls,
        config: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        options: FixedPairLoadOptions,
    ) -> DistilledRouter:
        check_fixed_pair(cls, config, options)
        weights = [tensors[n].numpy() for n in ("w1", "b1", "w2", "b2")]
        return cls(
            weights,
            tuple(config["target"]),
            strong_model=config["strong_model"],
            weak_model=config["weak_model"],
            embedder=config.get("embedder"),
            hyperparameters=config.get("hyperparameters"),
        )

    @classmethod
    def _distil(
        cls,
        teacher: Router,
        prompts: Sequence[str],
        embedder: dict[str, Any],
        hidden: int,
        seed: int,
    ) -> DistilledRouter:
        prompts = list(dict.fromkeys(prompts))
        logger.info(f"teacher scores {len(prompts)} prompts")
        target = logit(teacher.score(prompts))
        vectors = get_embedder(**embedder).encode(prompts)
        weights, scale = fit_mlp(vectors, target, hidden, seed)
        pair = {
            side: getattr(teacher, side, default)
            for side, default in (("strong_model", STRONG_MODEL), ("weak_model", WEAK_MODEL))
        }
        return cls(weights, scale, embedder=embedder, **pair)

    @classmethod
    def train(
        cls,
        labels: pd.DataFrame,
        *,
        seed: int = 0,
        teacher: str = "minilm",
        corpus: Sequence[str] = (),
        embedder: dict[str, Any] | None = None,
        hidden: int = HIDDEN,
    ) -> DistilledRouter:
        """Distil `teacher` (a shipped name or a router directory) into a student that reads
        `embedder` (a static model; None: the shipped `fast` table), on the table's prompts
        and the `corpus` prompts; then measure it held out, one training source at a time."""
        embedder = dict(embedder or default_embedder())
        hidden = int(hidden)
        # The teacher's raw scores: its probability curve is refitted for the student after.
        teacher_router = uncalibrated(load_router(router_path(teacher)))
        table_prompts = labels["prompt"].astype(str).tolist()
        corpus = [str(p) for p in corpus]
        held_out = cls.held_out(teacher_router, labels, corpus, embedder, hidden, seed)
        router = cls._distil(teacher_router, table_prompts + corpus, embedder, hidden, seed)
        router.hyperparameters = {
            "seed": seed,
            "teacher": str(teacher),
            "hidden": hidden,
            "prompts": len(set(table_prompts + corpus)),
            "corpus_prompts": len(set(corpus)),
            **held_out,
        }
        return router

    @classmethod
    def held_out(
        cls,
        teacher: Router,
        labels: pd.DataFrame,
        corpus: Sequence[str],
        embedder: dict[str, Any],
        hidden: int,
        seed: int,
    ) -> dict[str, Any]:
        """Student and teacher APGR per training source, each source unseen by both."""
        refit = getattr(teacher, "refit", None)
        sources = labels["source"].astype(str).to_numpy()
        judged = [s for s in np.unique(sources) if not s.startswith(GOLDEN_PREFIX)]
        if refit is None or len(judged) < 2:
            why = "the teacher cannot be refitted" if refit is None else "fewer than two sources"
            logger.warning(f"no held-out check: {why}")
            return {"held_out": None}
        student_apgr: dict[str, float] = {}
        teacher_apgr: dict[str, float] = {}
        for source in judged:
            rows = sources == source
            seen = labels[~rows]
            held_teacher = refit(seen)
            unseen = labels[rows]
            student = cls._distil(
                held_teacher, seen["prompt"].tolist() + list(corpus), embedder, hidden, seed
            )
            weak, strong = unseen["weak_q"].to_numpy(float), unseen["strong_q"].to_numpy(float)
            prompts = unseen["prompt"].tolist()
            for into, router in ((student_apgr, student), (teacher_apgr, held_teacher)):
                apgr = evaluate_scores(router.score(prompts), weak, strong)[1].apgr
                into[source] = round(apgr, 4)
            logger.info(
                f"held out {source}: student {student_apgr[source]:.3f}, "
                f"teacher {teacher_apgr[source]:.3f}"
            )
        return {
            "held_out": "leave one training source out (teacher refitted without it)",
            "held_out_apgr": round(float(np.mean(list(student_apgr.values()))), 4),
            "held_out_apgr_by_source": student_apgr,
            "teacher_held_out_apgr_by_source": teacher_apgr,
        }
