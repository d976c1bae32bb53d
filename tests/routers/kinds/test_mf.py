"""MFRouter.train on a small synthetic battle table with the real embedding model."""

import numpy as np
import pandas as pd
import pytest
import torch

from routers.checkpoint import load_router, save_router
from routers.kinds.mf import MFRouter
from routers.training.encoding import encode_battles
from tests.support.synthetic_prompts import CHAT, arithmetic_prompts

ARITH = arithmetic_prompts(36, np.random.default_rng(1234))
TRAIN_ARITH, HELD_ARITH = ARITH[:30], ARITH[30:]
TRAIN_CHAT, HELD_CHAT = CHAT[:30], CHAT[30:]


def synthetic_battles() -> pd.DataFrame:
    rows = []
    for p in TRAIN_ARITH:
        # Arithmetic: strong > mid > weak.
        rows += [(p, "strong", "weak", "a"), (p, "weak", "strong", "b"), (p, "mid", "weak", "a")]
        rows += [(p, "strong", "mid", "a")]
    for p in TRAIN_CHAT:
        # Chit-chat: the weak model wins or ties against the strong one; mid ties everyone.
        rows += [
            (p, "strong", "weak", "b"),
            (p, "weak", "strong", "tie"),
            (p, "mid", "weak", "tie"),
        ]
        rows += [(p, "strong", "mid", "tie")]
    df = pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner"])
    df["source"], df["weight"] = "synthetic", 1.0
    return df


TRAIN_KW = dict(
    dims=(8,),
    weight_decays=(0.0,),
    lr=0.01,
    batch_size=64,  # several mini-batches per epoch: ~190 training battles
    max_epochs=30,
    patience=5,
    strong_model="strong",
    weak_model="weak",
)


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)
        yield


@pytest.fixture(scope="module")
def router(env) -> MFRouter:
    return MFRouter.train(synthetic_battles(), seed=0, **TRAIN_KW)


@pytest.fixture(scope="module")
def held_out_embeddings(router) -> tuple[np.ndarray, np.ndarray]:
    return router.embedder.encode(HELD_ARITH), router.embedder.encode(HELD_CHAT)


def test_trained_router_shape(router):
    assert router.models == ["mid", "strong", "weak"]
    assert router.pair == ("strong", "weak")
    hp = router.hyperparameters
    assert hp["dim"] == 8 and hp["weight_decay"] == 0.0 and hp["seed"] == 0
    assert 1 <= hp["epochs"] <= TRAIN_KW["max_epochs"]
    assert np.isfinite(hp["validation_loss"])
    assert router.net.proj.out_features == 8


def test_learned_scores_separate_the_families(router, held_out_embeddings):
    arith_emb, chat_emb = held_out_embeddings
    arith, chat = router.score_embeddings(arith_emb), router.score_embeddings(chat_emb)
    # Held-out prompts: the strong model should be preferred for arithmetic, not for chit-chat.
    assert arith.mean() > 0.5 > chat.mean()
    assert arith.mean() - chat.mean() > 0.3
    assert arith.min() > chat.max()
    # score() (which embeds) agrees with score_embeddings().
    np.testing.assert_allclose(router.score(HELD_ARITH), arith, atol=1e-6)


def test_scores_are_probabilities(router, held_out_embeddings):
    prompts = HELD_ARITH + HELD_CHAT
    scores = router.score(prompts)
    assert scores.dtype == np.float64
    assert scores.shape == (len(prompts),)
    assert ((scores >= 0.0) & (scores <= 1.0)).all()


def test_route_is_score_at_or_above_threshold(router):
    prompts = HELD_ARITH + HELD_CHAT
    scores = router.score(prompts)
    assert len(np.unique(scores)) == len(prompts)
    for threshold in [float(np.median(scores)), float(scores[3]), 1.01]:
        routed = router.route(prompts, threshold)
        assert routed.dtype == bool
        np.testing.assert_array_equal(routed, scores >= threshold)
        if threshold == float(scores[3]):
            assert routed[3]  # a prompt whose score equals the threshold goes strong
    assert not router.route(prompts, 1.01).any()


def test_battle_row_order_does_not_matter(env, held_out_embeddings):
    # Every battle must take part in training, whatever its row: with the chit-chat battles
    # first instead of last the router must still prefer the strong model for arithmetic.
    battles = synthetic_battles()
    chat_first = battles.iloc[::-1].copy().reset_index(drop=True)
    assert chat_first["prompt"].iloc[0] in TRAIN_CHAT
    router = MFRouter.train(chat_first, seed=0, **TRAIN_KW)
    arith_emb, chat_emb = held_out_embeddings
    arith, chat = router.score_embeddings(arith_emb), router.score_embeddings(chat_emb)
    assert arith.mean() > 0.5 > chat.mean()
    assert arith.min() > chat.max()


def test_encode_battles_accepts_a_reversed_view():
    # df.iloc[::-1] gives columns with negative strides; encoding must not care.
    battles = synthetic_battles()
    models = ["mid", "strong", "weak"]
    prompts, encoded = encode_battles(battles, models)
    rev_prompts, rev = encode_battles(battles.iloc[::-1], models)
    assert rev_prompts == prompts[::-1]
    assert torch.equal(rev.target, encoded.target.flip(0))
    assert torch.equal(rev.weight, encoded.weight.flip(0))
    assert torch.equal(rev.model_a, encoded.model_a.flip(0))


def test_same_seed_same_router(router, held_out_embeddings):
    again = MFRouter.train(synthetic_battles(), seed=0, **TRAIN_KW)
    emb = np.concatenate(held_out_embeddings)
    np.testing.assert_array_equal(again.score_embeddings(emb), router.score_embeddings(emb))
    assert again.hyperparameters == router.hyperparameters


def test_trained_router_roundtrip(router, held_out_embeddings, tmp_path):
    loaded = load_router(save_router(router, tmp_path / "mf"))
    emb = np.concatenate(held_out_embeddings)
    np.testing.assert_allclose(loaded.score_embeddings(emb), router.score_embeddings(emb))
    assert loaded.hyperparameters == router.hyperparameters
