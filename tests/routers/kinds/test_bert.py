"""BertRouter on a tiny random-weight BERT (with the packaged MiniLM tokenizer): labels,
training, scoring, head+tail truncation and the checkpoint round trip. Nothing is downloaded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from routers.checkpoint import load_router, read_config, save_router
from routers.data.ratings import CLASS_LABELS, aggregate_labels, classifier_labels
from routers.kinds.bert import TIE, WEAK, BertLoadOptions, BertRouter
from routers.protocol import OptionError
from routers.text.embedders import default_model_path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

_rng = np.random.default_rng(7)
_MATH = [
    "What is {a} plus {b}?",
    "Compute {a} times {b}.",
    "Solve for x: {a}x + {b} = {c}.",
    "What is {a} divided by {b}, rounded to two decimals?",
    "Calculate {a} squared minus {b}.",
    "Find the remainder of {a} divided by {b}.",
]
_GREETINGS = ["Hi", "Hello", "Hey there", "Good morning", "Hiya", "Good evening"]
_CHATS = [
    "how was your weekend",
    "tell me something fun about cats",
    "what is your favourite colour",
    "can you recommend a cosy movie for tonight",
    "any name ideas for my new puppy",
    "say something nice to cheer me up",
    "what should I have for breakfast",
    "do you like the rain",
    "tell me a joke about penguins",
    "what is a fun thing to do on a sunny day",
    "which season do you like best",
    "any tips for a relaxing sunday",
]


def _math(n: int) -> list[str]:
    out = []
    for i in range(n):
        a, b, c = (int(x) for x in _rng.integers(3, 999, size=3))
        out.append(_MATH[i % len(_MATH)].format(a=a, b=b, c=c))
    return out


def _chat(n: int) -> list[str]:
    pairs = [(g, c) for c in _CHATS for g in _GREETINGS]
    picks = _rng.permutation(len(pairs))[:n]
    return [f"{pairs[i][0]}! {pairs[i][1].capitalize()}?" for i in picks]


MATH, CHAT = _math(70), _chat(70)
TRAIN_MATH, HELD_MATH = MATH[:60], MATH[60:]
TRAIN_CHAT, HELD_CHAT = CHAT[:60], CHAT[60:]


def synthetic_battles() -> pd.DataFrame:
    """Four models. Math: the strong model beats everyone. Chit-chat: the weak model beats
    the strong one, the strong one ties `mid`. The strong model still rates highest, so it is
    tier 1 and every battle it plays is a labelled example."""
    rows = []
    for p in TRAIN_MATH:
        rows += [(p, "strong", "weak", "a"), (p, "weak", "strong", "b")]
        rows += [(p, "strong", "mid", "a"), (p, "low", "strong", "b"), (p, "mid", "low", "a")]
    for p in TRAIN_CHAT:
        rows += [(p, "strong", "weak", "b"), (p, "weak", "strong", "a")]
        rows += [(p, "strong", "mid", "tie"), (p, "low", "strong", "b"), (p, "weak", "low", "a")]
    df = pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner"])
    df["source"], df["weight"] = "synthetic", 1.0
    return df


TRAIN_KW = dict(
    epochs=3,
    lr=5e-3,
    batch_size=8,
    holdout=0.25,
    device="cpu",
    strong_model="strong",
    weak_model="weak",
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 2-layer BERT (hidden 32) with the MiniLM tokenizer beside it."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    directory = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(default_model_path()) / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def trained(tiny_bert: Path) -> BertRouter:
    # The CLI passes the base model as embedder={"model_path": ...}.
    return BertRouter.train(
        synthetic_battles(), seed=0, embedder={"model_path": str(tiny_bert)}, **TRAIN_KW
    )


def test_aggregate_labels_is_the_weighted_label_distribution():
    labelled = pd.DataFrame(
        {
            "prompt": ["p", "p", "p", "q"],
            "label": ["strong", "weak", "strong", "tie"],
            "source": "s",
            "weight": [1.0, 2.0, 1.0, 0.5],
        }
    )
    prompts, targets, weights = aggregate_labels(labelled)
    assert prompts == ["p", "q"]
    np.testing.assert_allclose(targets, [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(weights, [4.0, 0.5])


def test_pair_battles_are_labelled_even_when_tiering_drops_them():
    battles = synthetic_battles()
    # One tier: every model is tier 1, so the paper's rule labels nothing...
    with pytest.raises(ValueError, match="no strong/weak labelled battles"):
        classifier_labels(battles, "strong", "weak", n_tiers=1, pair_battles=False)
    # ...but the configured pair's own battles are still evidence, oriented by name.
    direct = classifier_labels(battles, "strong", "weak", n_tiers=1)
    assert len(direct) == 2 * (len(TRAIN_MATH) + len(TRAIN_CHAT))
    counts = direct.groupby("prompt")["label"].agg(lambda s: "".join(sorted(s)))
    assert (counts[TRAIN_MATH] == "strongstrong").all()
    assert (counts[TRAIN_CHAT] == "weakweak").all()
    # With real tiers the pair battles are counted once, not once per route in.
    tiered = classifier_labels(battles, "strong", "weak")
    strong_battles = (battles["model_a"] == "strong") | (battles["model_b"] == "strong")
    assert len(tiered) == int(strong_battles.sum())


def test_training_beats_the_majority_class(trained):
    router = trained
    hp = router.hyperparameters
    assert len(hp["history"]) == TRAIN_KW["epochs"]
    best = hp["history"][hp["best_epoch"] - 1]
    # Majority (strong) is 5/8 of battles; telling math from chat is worth 6/8.
    assert best["val_accuracy"] > hp["validation_majority_accuracy"] + 0.05
    assert hp["labelled_battles"] == 4 * (len(TRAIN_MATH) + len(TRAIN_CHAT))
    assert hp["prompts"] == len(TRAIN_MATH) + len(TRAIN_CHAT)


def test_training_reports_every_epoch_to_the_log(tiny_bert, caplog):
    caplog.set_level(logging.INFO, logger="routers")
    kw = {**TRAIN_KW, "epochs": 1}
    BertRouter.train(synthetic_battles(), seed=0, base_model=str(tiny_bert), **kw)
    epoch = [m for m in caplog.messages if m.startswith("bert epoch 1:")]
    assert len(epoch) == 1
    assert "prompts/s" in epoch[0] and "validation loss" in epoch[0]
    assert any("labelled battles over" in m for m in caplog.messages)


def test_held_out_math_scores_above_chit_chat(trained):
    router = trained
    math, chat = router.score(HELD_MATH), router.score(HELD_CHAT)
    assert math.mean() > chat.mean() + 0.2
    assert np.median(math) > chat.max() or math.min() > np.median(chat)


def test_scores_are_one_minus_tie_and_weak(trained):
    router = trained
    prompts = HELD_MATH + HELD_CHAT + [""]
    p = router.probabilities(prompts)
    scores = router.score(prompts)
    assert scores.dtype == np.float64 and scores.shape == (len(prompts),)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(scores, 1.0 - (p[:, TIE] + p[:, WEAK]), atol=1e-12)
    assert router.score([]).shape == (0,)


def test_score_does_not_depend_on_batch_company(trained):
    router = trained
    prompts = HELD_MATH + HELD_CHAT
    together = router.score(prompts)
    alone = np.concatenate([router.score([p]) for p in prompts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_roundtrip_gives_identical_scores(trained, tiny_bert, tmp_path):
    router = trained
    directory = save_router(router, tmp_path / "bert", {"default_threshold": 0.5})
    document = read_config(directory)
    config = document["config"]
    assert document["router"] == "bert"
    assert config["labels"] == list(CLASS_LABELS)
    assert config["base_model"] == str(tiny_bert.resolve())
    assert config["encoder_config"]["hidden_size"] == 32
    assert (config["strong_model"], config["weak_model"]) == ("strong", "weak")
    assert config["max_tokens"] == 256 and config["head_tokens"] == 64
    assert config["hyperparameters"]["lr"] == TRAIN_KW["lr"]
    loaded = load_router(directory, device="cpu")
    assert isinstance(loaded, BertRouter)
    prompts = HELD_MATH + HELD_CHAT
    np.testing.assert_array_equal(loaded.score(prompts), router.score(prompts))
    with pytest.raises(OptionError, match="trained for one pair"):
        load_router(directory, strong_model="gpt-9000")


def _long_prompt(question: str, middle: str = "meanwhile") -> str:
    words = ("the quiet river flows past old stone walls and green fields " * 200).split()
    words[1000] = middle
    return " ".join(words) + " " + question


def test_truncation_keeps_head_and_tail(trained):
    router = trained
    question = "Finally, what is 17 times 23?"
    ids = router.token_ids([_long_prompt(question)])[0]
    assert len(ids) == router.max_tokens
    tail = router.tokenizer(question, add_special_tokens=False)["input_ids"]
    head = router.tokenizer("the quiet river", add_special_tokens=False)["input_ids"]
    assert ids[-1 - len(tail) : -1] == tail  # the question, right before [SEP]
    assert ids[1 : 1 + len(head)] == head  # the start, right after [CLS]


def test_the_end_of_a_long_prompt_is_read(trained):
    router = trained
    math = _long_prompt("Finally, what is 17 times 23?")
    chat = _long_prompt("Finally, tell me a joke about cats!")
    assert len(math.split()) > 2000
    scores = router.score([math, chat])
    assert abs(scores[0] - scores[1]) > 1e-6
    # A word in the middle is cut away: proof that truncation, not luck, is at work.
    middle = router.score([_long_prompt("Finally, what is 17 times 23?", middle="dragons")])
    np.testing.assert_allclose(middle, scores[:1], atol=1e-7)


def test_default_minilm_loads_and_scores_fast():
    router = BertRouter.from_base(device="cpu")
    assert router.config()["base_model"] is None  # portable: resolved at load time
    assert router.max_tokens == 256
    scores = router.score(["What is 2 + 2?", "Hello there!"])
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    options = BertLoadOptions(device="cpu")
    rebuilt = BertRouter.from_checkpoint(router.config(), router.tensors(), options)
    # One prompt alone pads differently from a batch of two: equal up to float rounding.
    np.testing.assert_allclose(rebuilt.score(["What is 2 + 2?"]), scores[:1], atol=1e-6)
