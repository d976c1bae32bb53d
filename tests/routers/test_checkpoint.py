"""Router directories: save/load roundtrips and every way a directory can be unloadable."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from routers.card import CARD_FILE
from routers.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointError,
    load_router,
    read_config,
    save_router,
)
from routers.kinds.mf import MFNet, MFRouter
from routers.kinds.random_router import RandomRouter
from routers.protocol import OptionError

EMBEDDING_DIM = 384
MODELS = ["model-x", "model-y", "model-z"]


@pytest.fixture(autouse=True)
def _no_embedding_cache(monkeypatch):
    monkeypatch.delenv("ROUTERAY_EMBEDDING_CACHE", raising=False)


def tiny_mf_router(strong="model-x", weak="model-z", seed=0) -> MFRouter:
    torch.manual_seed(seed)
    net = MFNet(len(MODELS), EMBEDDING_DIM, 8)
    with torch.no_grad():
        # Non-zero biases, so that a reload that lost them would change the scores.
        net.bias.weight.copy_(torch.randn(len(MODELS), 1))
        # Default init gives logits of ~0.01 on unit embeddings; scale up so scores spread.
        net.proj.weight.mul_(30.0)
    return MFRouter(
        net,
        MODELS,
        strong_model=strong,
        weak_model=weak,
        hyperparameters={"dim": 8, "note": "hand-built"},
    )


def unit_embeddings(n: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, EMBEDDING_DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def mf_dir(tmp_path) -> Path:
    return save_router(tiny_mf_router(), tmp_path / "mf", metadata={"trained_on": "nothing"})


# --- roundtrips -------------------------------------------------------------------------------


def test_mf_roundtrip_scores_and_config(mf_dir):
    original = tiny_mf_router()
    loaded = load_router(mf_dir)
    assert isinstance(loaded, MFRouter)
    assert loaded.models == MODELS
    assert loaded.pair == ("model-x", "model-z")
    assert loaded.config() == original.config()
    emb = unit_embeddings(20)
    expected = original.score_embeddings(emb)
    got = loaded.score_embeddings(emb)
    # The scores must actually vary with the prompt, or this comparison proves little.
    assert expected.std() > 0.05
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    for name, tensor in original.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name


def test_mf_roundtrip_through_the_real_embedder(mf_dir):
    prompts = ["What is 17 * 23?", "hi there", "Write a sonnet about the sea."]
    original = tiny_mf_router()
    loaded = load_router(mf_dir)
    np.testing.assert_allclose(loaded.score(prompts), original.score(prompts), atol=1e-7)


def test_saved_directory_layout(mf_dir):
    assert sorted(p.name for p in mf_dir.iterdir()) == sorted(
        [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
    )
    document = read_config(mf_dir)
    assert document["router"] == "mf"
    assert document["format_version"] == FORMAT_VERSION
    assert document["metadata"] == {"trained_on": "nothing"}
    assert document["weights"]["file"] == WEIGHTS_FILE
    assert len(document["weights"]["sha256"]) == 64


def test_model_bias_flag_survives_roundtrip(tmp_path):
    torch.manual_seed(3)
    net = MFNet(len(MODELS), EMBEDDING_DIM, 8, model_bias=False)
    router = MFRouter(net, MODELS, strong_model="model-y", weak_model="model-x")
    loaded = load_router(save_router(router, tmp_path / "nobias"))
    assert loaded.config()["model_bias"] is False
    assert loaded.net.bias.weight.requires_grad is False
    emb = unit_embeddings(5)
    np.testing.assert_allclose(loaded.score_embeddings(emb), router.score_embeddings(emb))


def test_random_router_roundtrip(tmp_path):
    directory = save_router(RandomRouter(seed=7), tmp_path / "random")
    # A random router has no weights, so no weights file and no "weights" entry.
    assert not (directory / WEIGHTS_FILE).exists()
    assert "weights" not in read_config(directory)
    loaded = load_router(directory)
    assert isinstance(loaded, RandomRouter)
    prompts = [f"prompt {i}" for i in range(50)]
    scores = loaded.score(prompts)
    np.testing.assert_array_equal(scores, RandomRouter(seed=7).score(prompts))
    assert not np.array_equal(scores, RandomRouter(seed=8).score(prompts))
    assert ((scores >= 0) & (scores <= 1)).all()


def test_random_router_seed_override(tmp_path):
    directory = save_router(RandomRouter(seed=7), tmp_path / "random")
    prompts = ["a"] * 20
    np.testing.assert_array_equal(
        load_router(directory, seed=9).score(prompts), RandomRouter(seed=9).score(prompts)
    )


# --- strong/weak override at load ----------------------------------------------------------


def test_strong_weak_override_changes_scores(mf_dir):
    emb = unit_embeddings(30)
    default = load_router(mf_dir)
    swapped = load_router(mf_dir, strong_model="model-z", weak_model="model-x")
    assert swapped.pair == ("model-z", "model-x")
    # Swapping the pair turns P(x beats z) into P(z beats x) = 1 - P(x beats z).
    np.testing.assert_allclose(
        swapped.score_embeddings(emb), 1.0 - default.score_embeddings(emb), atol=1e-6
    )
    other = load_router(mf_dir, strong_model="model-y")
    assert other.pair == ("model-y", "model-z")
    assert np.abs(other.score_embeddings(emb) - default.score_embeddings(emb)).max() > 1e-3
    # Overrides go through the model-name normaliser like everything else.
    assert load_router(mf_dir, strong_model="  Model-Y ").pair == ("model-y", "model-z")


def test_unknown_override_model_lists_the_models(mf_dir):
    with pytest.raises(OptionError) as info:
        load_router(mf_dir, strong_model="gpt-9000")
    message = str(info.value)
    assert "gpt-9000" in message
    for model in MODELS:
        assert model in message


# --- unloadable directories ----------------------------------------------------------------


def _rewrite_config(directory: Path, edit) -> None:
    path = directory / CONFIG_FILE
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_router(missing)
    assert str(missing) in str(info.value)


def test_path_is_a_file(tmp_path):
    path = tmp_path / "router.json"
    path.write_text("{}")
    with pytest.raises(CheckpointError, match="is a file") as info:
        load_router(path)
    assert str(path) in str(info.value)


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"no {CONFIG_FILE}"):
        load_router(tmp_path / "empty")


def test_truncated_config(mf_dir):
    path = mf_dir / CONFIG_FILE
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="truncated or not JSON") as info:
        load_router(mf_dir)
    assert CONFIG_FILE in str(info.value)


def test_binary_garbage_config(mf_dir):
    (mf_dir / CONFIG_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="truncated or not JSON"):
        load_router(mf_dir)


@pytest.mark.parametrize(
    "document",
    [
        {"model_type": "bert", "hidden_size": 384},  # a Hugging Face config.json
        {"format": "some-other-tool", "format_version": 1},
        [1, 2, 3],
    ],
    ids=["hf-config", "other-format", "json-list"],
)
def test_foreign_config(tmp_path, document):
    directory = tmp_path / "foreign"
    directory.mkdir()
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="not a routeray router") as info:
        load_router(directory)
    assert '"format"' in str(info.value)


def test_unknown_router_kind_lists_known_kinds(mf_dir):
    _rewrite_config(mf_dir, lambda d: d.update(router="telepathy"))
    with pytest.raises(CheckpointError) as info:
        load_router(mf_dir)
    message = str(info.value)
    assert "telepathy" in message
    assert "mf" in message and "random" in message
    assert "known kinds" in message


def test_missing_weights_file(mf_dir):
    (mf_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing") as info:
        load_router(mf_dir)
    assert WEIGHTS_FILE in str(info.value)


def test_truncated_weights_file(mf_dir):
    path = mf_dir / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_router(mf_dir)
    assert WEIGHTS_FILE in str(info.value)
    assert "truncated or modified" in str(info.value)


def test_modified_weights_same_length(mf_dir):
    path = mf_dir / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_router(mf_dir)


def test_newer_format_version(mf_dir):
    _rewrite_config(mf_dir, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer") as info:
        load_router(mf_dir)
    assert f"format_version {FORMAT_VERSION + 1}" in str(info.value)


def test_config_that_does_not_fit_the_weights(mf_dir):
    # dim 16 in config.json, dim 8 in the weights: a CheckpointError, not a bare RuntimeError.
    _rewrite_config(mf_dir, lambda d: d["config"].update(dim=16))
    with pytest.raises(CheckpointError, match="do not fit router 'mf'"):
        load_router(mf_dir)


def test_config_missing_a_key(mf_dir):
    _rewrite_config(mf_dir, lambda d: d["config"].pop("models"))
    with pytest.raises(CheckpointError, match="models"):
        load_router(mf_dir)


def test_resave_over_existing_directory_replaces_it(tmp_path):
    directory = save_router(tiny_mf_router(seed=0), tmp_path / "mf")
    save_router(tiny_mf_router(seed=5), directory)
    emb = unit_embeddings(10)
    np.testing.assert_allclose(
        load_router(directory).score_embeddings(emb),
        tiny_mf_router(seed=5).score_embeddings(emb),
        atol=1e-7,
    )
    # No temporary files left behind by the atomic config write.
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
    )
