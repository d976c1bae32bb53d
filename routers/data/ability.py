"""A common ability scale for the models of many outcome tables.

Tables grade different prompts, and no one model answers every table, but many models answer
several (Qwen2.5-72B grades in CRUXEval, MATH and Shaberi; Gemma-2-9B in CRUXEval, MATH and
LLMRouter). An item-response fit on every (item, model, score) row links them:

    P(score) = sigmoid(exp(s_table) * ability_model - difficulty_item)

one ability per model (under its normalised name), one difficulty per item, and one
discrimination per table, since a 0/1 correctness table and a 1-10 grade spread abilities
differently. Scores in [0, 1] are soft outcomes. A small ridge penalty fixes the scale's origin
and keeps models with few rows near the middle. The scale is how a table that lacks the strong
or the weak class still gets a pair: the models nearest that class's ability.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from routers.data.model_names import normalize_model_name

STEPS = 400
LEARNING_RATE = 0.05
PENALTY = 1e-3


@dataclass(frozen=True)
class AbilityScale:
    """Fitted abilities by normalised model name, item difficulties by (table, id) and each
    table's discrimination."""

    ability: dict[str, float]
    difficulty: dict[tuple[str, str], float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)

    def expected_gap(
        self, table: str, ids: Iterable[str], strong: float, weak: float
    ) -> np.ndarray:
        """P(strong answers) - P(weak answers) on each item, for abilities `strong`, `weak`:
        the pair's gain as the whole table's models measure the item, not as one pair's noisy
        outcome. Largest on items between the two abilities; small on items everyone solves
        and on items nobody does."""
        b = np.array([self.difficulty[(table, str(i))] for i in ids])
        a = self.spread[table]

        def p(theta: float) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-(a * theta - b)))

        return p(strong) - p(weak)

    def of(self, model: str) -> float:
        return self.ability[normalize_model_name(model)]

    def class_ability(self, anchor: str, members: Iterable[str]) -> float | None:
        """Where a class stands: its routed model (`anchor`) if the scale knows it, else the
        mean of the members it knows (None: none). The routed model first, because a sibling's
        place can rest on a table that measures something else (Llama-2-70B-chat's on XSTest is
        how readily it complies)."""
        if anchor in self.ability:
            return self.ability[anchor]
        known = [self.ability[m] for m in members if m in self.ability]
        return float(np.mean(known)) if known else None


def fit_ability(tables: dict[str, pd.DataFrame], seed: int = 0) -> AbilityScale:
    """The scale fitted on long-format tables (`id`, `model`, `score`) keyed by table name."""
    rows = pd.concat(
        [t[["id", "model", "score"]].assign(table=name) for name, t in tables.items()],
        ignore_index=True,
    ).dropna(subset=["score"])
    rows["model"] = rows["model"].map(normalize_model_name)
    # Copies of one model in one table (quantisations, providers) count once per item.
    rows = rows.groupby(["table", "id", "model"], as_index=False)["score"].mean()
    model_codes, models = pd.factorize(rows["model"])
    item_codes, items = pd.factorize(pd.MultiIndex.from_frame(rows[["table", "id"]]))
    table_codes, tables_seen = pd.factorize(rows["table"])
    torch.manual_seed(seed)
    ability = torch.zeros(len(models), dtype=torch.float64, requires_grad=True)
    difficulty = torch.zeros(len(items), dtype=torch.float64, requires_grad=True)
    spread = torch.zeros(len(tables_seen), dtype=torch.float64, requires_grad=True)
    m, i, t = (torch.as_tensor(c, dtype=torch.long) for c in (model_codes, item_codes, table_codes))
    y = torch.as_tensor(rows["score"].clip(0, 1).to_numpy(copy=True), dtype=torch.float64)
    optimiser = torch.optim.Adam([ability, difficulty, spread], lr=LEARNING_RATE)
    for _ in range(STEPS):
        optimiser.zero_grad()
        logits = spread.exp()[t] * ability[m] - difficulty[i]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + PENALTY * (ability.square().mean() + difficulty.square().mean())
        loss.backward()
        optimiser.step()
    values = ability.detach().numpy()
    return AbilityScale(
        {str(name): float(v) for name, v in zip(models, values, strict=True)},
        {
            (str(t), str(i)): float(v)
            for (t, i), v in zip(items, difficulty.detach().numpy(), strict=True)
        },
        {str(t): float(v) for t, v in zip(tables_seen, spread.detach().exp().numpy(), strict=True)},
    )
