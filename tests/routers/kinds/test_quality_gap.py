"""The quality-gap router, its labels and cross-fitting, on generated data (no ../shared)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from routers.checkpoint import load_router, save_router
from routers.data.prompt_labels import LABEL_COLUMNS, golden_labels, labels_from_quality
from routers.data.tables import golden_table
from routers.kinds import quality_gap
from routers.kinds.mf import MFRouter
from routers.kinds.quality_gap import (
    Bank,
    QualityGapRouter,
    Variant,
    default_grid,
    fit_member,
    question_stem,
)
from routers.protocol import OptionError
from routers.training.splits import prompt_folds

HARD = [
    "Prove that the sum of the first {n} odd numbers is a perfect square.",
    "Compute the integral of x^{n} times log(x) from 1 to {n}.",
    "Write a recursive Python function that counts the {n}-queens solutions.",
    "Solve the system 3x + {n}y = 7 and 2x - y = {n} and explain each step.",
]
EASY = [
    "Say hello to my friend {n} in a cheerful way.",
    "What colour is the sky on a sunny day number {n}?",
    "Give me a nice name for my cat, she is {n} years old.",
    "Tell me a short greeting for a birthday card for {n}.",
]


def generated_labels(n: int = 30, sources=("quiz", "chat")) -> pd.DataFrame:
    """Hard prompts: the weak model fails and the strong one succeeds; easy: both succeed."""
    rng = np.random.default_rng(0)
    frames = []
    for s, source in enumerate(sources):
        prompts, weak, strong = [], [], []
        for i in range(n):
            for template in HARD:
                prompts.append(template.format(n=i + 100 * s))
                weak.append(float(rng.uniform() < 0.2))
                strong.append(float(rng.uniform() < 0.9))
            for template in EASY:
                prompts.append(template.format(n=i + 100 * s))
                weak.append(float(rng.uniform() < 0.9))
                strong.append(float(rng.uniform() < 0.9))
        frames.append(golden_labels(pd.Series(prompts), np.array(weak), np.array(strong), source))
    return pd.concat(frames, ignore_index=True)


SMALL_GRID = [Variant("ridge", "all_fail", alpha=1.0), Variant("knn", "pair", k=10)]


def test_labels_from_quality_matrix():
    quality = pd.DataFrame(
        {
            "gpt-4-1106-preview": [1.0, 1.0],
            "mixtral-8x7b-instruct-v0.1": [0.0, 1.0],
            "other": [0.0, 1.0],
            "another": [1.0, np.nan],
        }
    )
    frame = labels_from_quality(pd.Series(["p1", "p2"]), quality, "src")
    assert list(frame.columns) == LABEL_COLUMNS
    assert frame["pair_gap"].tolist() == [1.0, 0.0]
    # p1: models score 1, 0, 0, 1 -> half fail; p2: the model without an answer is skipped.
    assert frame["all_fail"].tolist() == [0.5, 0.0]


def test_router_learns_the_gap_and_round_trips(tmp_path):
    labels = generated_labels()
    router = QualityGapRouter.train(labels, grid=SMALL_GRID)
    hard = [t.format(n=999) for t in HARD]
    easy = [t.format(n=999) for t in EASY]
    scores = router.score(hard + easy)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[:4].min() > scores[4:].max()
    # Leave-one-source-out: the criterion is judged on each source by a router without it.
    by_source = router.hyperparameters["held_out_apgr_by_source"]
    assert set(by_source) == {"quiz", "chat"}
    # Every variant is judged on both texts (whole prompt, multiple-choice stem).
    assert len(router.hyperparameters["candidates"]) == 2 * len(SMALL_GRID)
    loaded = load_router(save_router(router, tmp_path / "qg"))
    np.testing.assert_array_equal(loaded.score(hard + easy), scores)


def test_a_remembering_bank_asks_once_and_fits_the_same_members(monkeypatch):
    """Training shares one bank a split across the grid: members that differ only in labels,
    penalty, weights of other rows or temperature search and sum their rows once, and get
    what a bank of their own would give them."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    targets = rng.standard_normal((300, len(quality_gap.PROMPT_LABELS)))
    feats = rng.standard_normal((300, 4))
    golden = np.arange(300) % 3 == 0
    grid = [
        Variant(model, labels, True, alpha, k=20, temperature=t, other_weight=other)
        for model, labels, alpha, t, other in (
            ("ridge", "pair", 1.0, 0.2, 1.0),
            ("ridge", "all", 10.0, 0.2, 1.0),
            ("ridge", "all", 1.0, 0.2, 0.0),
            ("ridge", "pair", 1.0, 0.2, 0.1),
            ("knn", "pair", 1.0, 0.2, 1.0),
            ("knn", "all", 1.0, 1.0, 0.1),
            ("knn", "pair", 1.0, 0.2, 0.0),
            ("blend", "pair", 10.0, 0.05, 1.0),
        )
    ]
    calls = {"nearest": 0, "weighted_gram": 0}
    for name in calls:
        real = getattr(quality_gap, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(quality_gap, name, counted)

    def weights(v: Variant) -> np.ndarray:
        return np.where(golden, 1.0, v.other_weight)

    shared = Bank(emb, targets, memo={})
    queries = emb[:50]
    together = [fit_member(v, shared, feats, weights(v)) for v in grid]
    predicted = [m.predict(queries, feats[:50], shared) for m in together]
    # Searches: every row (other_weight 1 and 0.1) and the golden ones, each for its fitting
    # sample and for the queries. Sums: every row weighed 1, or the others 0.1, and golden.
    assert calls == {"nearest": 4, "weighted_gram": 3}
    for variant, member, prediction in zip(grid, together, predicted, strict=True):
        alone = Bank(emb, targets)
        own = fit_member(variant, alone, feats, weights(variant))
        np.testing.assert_array_equal(prediction, own.predict(queries, feats[:50], alone))
        for name in ("coef", "intercept", "norms", "output"):
            np.testing.assert_array_equal(getattr(member, name), getattr(own, name))


def test_pair_overrides_are_refused(tmp_path):
    router = QualityGapRouter.train(generated_labels(10), grid=SMALL_GRID[:1])
    save_router(router, tmp_path / "qg")
    with pytest.raises(OptionError, match="trained for one pair"):
        load_router(tmp_path / "qg", strong_model="claude-3-opus")


def test_golden_rows_are_judged_by_k_folds():
    labels = generated_labels(10, sources=("quiz", "golden:bench"))
    router = QualityGapRouter.train(
        labels, grid=[Variant("ridge", "pair", other_weight=0.0)], folds=3
    )
    assert set(router.hyperparameters["held_out_apgr_by_source"]) == {"golden:bench"}
    assert any(v.other_weight == 0.0 for v in default_grid(golden=True))
    assert all(v.other_weight == 1.0 for v in default_grid(golden=False))


def test_prompt_folds_keep_copies_together():
    prompts = pd.Series(["a", "b", "a", "c", "d", "b", "e"])
    fold = prompt_folds(prompts, 2, seed=0)
    assert fold[0] == fold[2] and fold[1] == fold[5]
    with pytest.raises(ValueError, match="at least 2 folds"):
        prompt_folds(prompts, 1, seed=0)


def test_golden_battles_orient_the_pair():
    benchmark = pd.DataFrame(
        {"prompt": ["p", "q", "r"], "weak_score": [0.0, 1.0, 1.0], "strong_score": [1.0, 0.0, 1.0]}
    )
    battles = golden_table(MFRouter, benchmark, "mmlu")
    assert battles["winner"].tolist() == ["a", "b", "tie"]
    labels = golden_table(
        QualityGapRouter, benchmark.assign(weak_score=[2.0, 10.0, 10.0]), "mt-bench"
    )
    assert labels["weak_q"].tolist() == [0.2, 1.0, 1.0]


MULTIPLE_CHOICE = {
    # MMLU's layout: four options and an "Answer:" cue.
    "Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Neon\nAnswer:": (
        "Which gas do plants absorb?"
    ),
    # MMLU-Pro's: up to ten options (so "I." is an option here), no cue.
    "Pick the prime.\n" + "\n".join(f"{c}. {20 + i}" for i, c in enumerate("ABCDEFGHIJ")): (
        "Pick the prime."
    ),
    # Roman statements above the options belong to the question, all three of them.
    "Which are true?\nI. 2 is prime\nII. 9 is prime\nIII. 7 is prime\nA. I only\nB. I and III": (
        "Which are true?\nI. 2 is prime\nII. 9 is prime\nIII. 7 is prime"
    ),
    # An author line above the question starts like an option but is part of the passage.
    "Passage.\nA. J. P. Taylor, 1945\nTaylor argues\nA. yes\nB. no\nAnswer:": (
        "Passage.\nA. J. P. Taylor, 1945\nTaylor argues"
    ),
    # Options with ")" and blank lines between them, and one running on over indented lines.
    "Which code sorts?\nA) sort(x)\n\nB) for i in x:\n    swap(i)\n": "Which code sorts?",
}

NOT_MULTIPLE_CHOICE = [
    "Write a poem about the sea.",
    "Write a poem.\nA. It should rhyme.",  # one lettered line is a remark, not a list
    "Grade these answers (a) and (b): A. is wrong, B. is right.",  # letters in running text
    "Plan:\nA. Buy milk\nB. Call Mum\nThanks!",  # text after the list: not an option list
    "Rank them:\nB. second\nA. first",  # not lettered in order
    "Agenda:\nA. Welcome\nC. Budget",  # a letter missing
    "I. Introduction\nII. Methods\nIII. Results",  # a Roman outline
    "Answer: A. yes, B. no",
    "Explain this.\nAnswer:",  # a cue without options is left alone too
    "  Keep my spacing.\n\n",  # whitespace included: nothing is cut, so nothing is trimmed
    "A. B.",  # nothing would be left
    "A. Oxygen\nB. Neon",  # options without a question: nothing would be left either
]


@pytest.mark.parametrize("prompt", list(MULTIPLE_CHOICE))
def test_question_stem_cuts_the_options_of_multiple_choice_prompts(prompt: str):
    assert question_stem(prompt) == MULTIPLE_CHOICE[prompt]


@pytest.mark.parametrize("prompt", NOT_MULTIPLE_CHOICE)
def test_question_stem_leaves_every_other_prompt_unchanged(prompt: str):
    assert question_stem(prompt) == prompt


def test_nearest_finds_the_neighbours_argpartition_finds_even_among_copies():
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((400, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    # Seven copies of one prompt, the first query's seven nearest: a tie at its 4th and 5th.
    bank[10:16] = bank[5]
    queries = rng.standard_normal((50, 8)).astype(np.float32)
    queries[0] = bank[5]
    k = 4
    top, near = quality_gap.nearest(queries, bank, k)
    sims = queries @ bank.T
    expected = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    assert (top == np.sort(expected, axis=1)).all()
    np.testing.assert_allclose(near, np.take_along_axis(sims, top, axis=1), rtol=1e-5)
    copies = set(range(10, 16)) | {5}
    assert set(top[0]) < copies
