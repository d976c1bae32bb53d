"""SWRankingRouter: pair statistics, the batched Newton fit against the paper's per-query refit,
topic sensitivity with the real embedding model, and checkpoints."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from routers.checkpoint import load_router, save_router
from routers.kinds.sw_ranking import (
    SWRankingRouter,
    SWSettings,
    build_pair_stats,
    fit_ratings,
)
from routers.protocol import OptionError
from tests.support.sw_reference import score_one_by_one
from tests.support.synthetic_prompts import CHAT, arithmetic_prompts

ARITH = arithmetic_prompts(25, np.random.default_rng(42))
TRAIN_ARITH, HELD_ARITH = ARITH[:20], ARITH[20:]
TRAIN_CHAT, HELD_CHAT = CHAT[:20], CHAT[30:35]
MODELS = ["mid", "other", "strong", "weak"]


def synthetic_battles() -> pd.DataFrame:
    """Arithmetic: strong > mid > weak. Chit-chat: weak beats strong, mid ties. `other` only
    meets mid, so the fit has to be joint to place it."""
    rows = []
    for p in TRAIN_ARITH:
        rows += [(p, "strong", "weak", "a"), (p, "weak", "strong", "b"), (p, "mid", "weak", "a")]
        rows += [(p, "strong", "mid", "a"), (p, "other", "mid", "b")]
    for p in TRAIN_CHAT:
        rows += [
            (p, "strong", "weak", "b"),
            (p, "weak", "strong", "tie"),
            (p, "mid", "weak", "tie"),
        ]
        rows += [(p, "strong", "mid", "tie"), (p, "other", "mid", "a")]
    df = pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner"])
    df["source"], df["weight"] = "synthetic", 1.0
    return df


QUIET = dict(strong_model="strong", weak_model="weak")


@pytest.fixture(scope="module")
def battles() -> pd.DataFrame:
    return synthetic_battles()


@pytest.fixture(scope="module")
def router(battles) -> SWRankingRouter:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)
        return SWRankingRouter.train(battles, seed=0, embedder=None, **QUIET)


@pytest.fixture(scope="module")
def held_out(router) -> tuple[np.ndarray, np.ndarray]:
    return router.embedder.encode(HELD_ARITH), router.embedder.encode(HELD_CHAT)


def test_pair_stats_orient_pairs_count_ties_half_and_use_weights():
    df = pd.DataFrame(
        {
            "prompt": ["p", "p", "p", "q", "q"],
            "model_a": ["y", "x", "y", "x", "x"],
            "model_b": ["x", "y", "x", "y", "x"],
            "winner": ["a", "tie", "b", "b", "a"],
            "source": "s",
            "weight": [1.0, 1.0, 2.0, 3.0, 1.0],
        }
    )
    prompts, stats = build_pair_stats(df, ["x", "y"])
    assert prompts == ["p", "q"]
    assert stats.pair_a.tolist() == [0] and stats.pair_b.tolist() == [1]
    # p: y beat x (x 0 of 1), a tie (x 0.5 of 1), x beat y with weight 2 (x 2 of 2).
    # q: y beat x with weight 3; x against itself is no evidence and is dropped.
    assert stats.prompt_idx.tolist() == [0, 1]
    assert stats.wins.tolist() == [2.5, 0.0]
    assert stats.games.tolist() == [4.0, 3.0]


def test_reference_ignores_self_battles_like_the_stats(router, battles, held_out):
    # A battle of a model against itself is no evidence; with it the batched and reference
    # paths would normalise by different totals.
    extra = battles.iloc[:5].assign(model_b=battles["model_a"].iloc[:5], winner="a")
    emb = held_out[0][:2]
    with_self = score_one_by_one(router, pd.concat([battles, extra]), emb)
    np.testing.assert_allclose(with_self, score_one_by_one(router, battles, emb), atol=1e-9)


def test_pair_stats_reject_unknown_winners(battles):
    bad = battles.assign(winner=battles["winner"].replace("tie", "draw"))
    with pytest.raises(ValueError, match="draw"):
        build_pair_stats(bad, MODELS)


def test_newton_fit_is_finite_on_a_separable_problem():
    # x always beats y: without the ridge the rating gap would be infinite.
    wins = torch.tensor([[5.0], [0.0]], dtype=torch.float64)
    games = torch.tensor([[5.0], [5.0]], dtype=torch.float64)
    pair = torch.tensor([0]), torch.tensor([1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not converging is a RuntimeWarning
        beta = fit_ratings(wins, games, *pair, n_models=3, l2=1e-4)
    assert torch.isfinite(beta).all()
    assert beta[0, 0] > 3 > -3 > beta[0, 1]
    torch.testing.assert_close(beta[1], -beta[0])
    # The unused third model gets only the ridge: rating 0.
    assert beta[:, 2].abs().max() < 1e-12


def test_trained_router_shape(router):
    assert router.models == MODELS
    assert router.pair == ("strong", "weak")
    assert router.prompt_embeddings.shape == (40, 384)
    assert router.prompt_embeddings.dtype == torch.float16
    assert router.settings == SWSettings()
    assert router.training == {"seed": 0, "battles": 200, "prompts": 40}


def test_scores_are_probabilities(router):
    prompts = HELD_ARITH + HELD_CHAT
    scores = router.score(prompts)
    assert scores.dtype == np.float64
    assert scores.shape == (len(prompts),)
    assert ((scores >= 0.0) & (scores <= 1.0)).all()
    assert router.score([]).shape == (0,)


def test_scores_follow_the_topic(router, held_out):
    arith_emb, chat_emb = held_out
    arith, chat = router.score_embeddings(arith_emb), router.score_embeddings(chat_emb)
    assert arith.min() > chat.max()
    np.testing.assert_allclose(router.score(HELD_ARITH), arith, atol=1e-9)
    # A sharper weighting (an inference choice) leans further towards the query's topic.
    sharp = load_router_like(router, weight_base=1e4)
    assert sharp.score_embeddings(arith_emb).mean() > arith.mean() + 0.05
    assert sharp.score_embeddings(chat_emb).mean() < chat.mean() - 0.05


def load_router_like(router: SWRankingRouter, **overrides) -> SWRankingRouter:
    options = SWRankingRouter.parse_load_options(overrides)
    return SWRankingRouter.from_checkpoint(router.config(), router.tensors(), options)


@pytest.mark.parametrize("base", [10.0, 1e4])
def test_batched_equals_per_query_refit(router, battles, held_out, base):
    emb = np.concatenate([held_out[0][:3], held_out[1][:3]])
    candidate = load_router_like(router, weight_base=base)
    reference = score_one_by_one(candidate, battles, emb)
    np.testing.assert_allclose(candidate.score_embeddings(emb), reference, atol=1e-6)


def test_chunking_does_not_change_scores(router, held_out):
    emb = np.concatenate(held_out)
    small_chunks = load_router_like(router, chunk_size=3)
    np.testing.assert_allclose(
        small_chunks.score_embeddings(emb), router.score_embeddings(emb), atol=1e-9
    )


def test_roundtrip_gives_identical_scores(router, held_out, tmp_path):
    loaded = load_router(save_router(router, tmp_path / "sw"))
    assert isinstance(loaded, SWRankingRouter)
    emb = np.concatenate(held_out)
    np.testing.assert_array_equal(loaded.score_embeddings(emb), router.score_embeddings(emb))
    assert loaded.config() == router.config()


def test_pair_override_and_unknown_models(router, held_out, tmp_path):
    directory = save_router(router, tmp_path / "sw")
    emb = np.concatenate(held_out)
    swapped = load_router(directory, strong_model="weak", weak_model="strong")
    np.testing.assert_allclose(
        swapped.score_embeddings(emb), 1.0 - router.score_embeddings(emb), atol=1e-12
    )
    with pytest.raises(OptionError, match="not in this router's training data"):
        load_router(directory, strong_model="gpt-5-never-seen")
    with pytest.raises(ValueError, match="not in this router's training data"):
        SWRankingRouter.train(synthetic_battles(), **{**QUIET, "weak_model": "mixtral"})
    with pytest.raises(OptionError, match="has no load option 'dims'"):
        load_router(directory, dims=8)
    with pytest.raises(OptionError, match="l2 must be > 0"):
        load_router(directory, l2=0.0)
