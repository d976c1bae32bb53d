"""Static embeddings: distilled from the shipped MiniLM by `routeray distill`, used as a
router's embedder, carried inside the router directory, and the shipped `fast` router."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from routeray.cli import app
from routers import CheckpointError, load_router, read_config, router_path, save_router
from routers.kinds.quality_gap import QualityGapRouter
from routers.text.embedders import get_embedder
from routers.text.static import StaticEmbedder, is_static_model
from tests.routers.kinds.test_quality_gap import EASY, HARD, SMALL_GRID, generated_labels

DIMS = 32


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small static model distilled from the real encoder through the CLI (about 30 s)."""
    out = tmp_path_factory.mktemp("static") / "minilm-static"
    result = CliRunner().invoke(app, ["distill", "--output", str(out), "--dims", str(DIMS)])
    assert result.exit_code == 0, result.output
    return out


def test_distilled_model_is_int8_local_and_readable_by_all(static_dir: Path):
    assert is_static_model(static_dir)
    config = json.loads((static_dir / "config.json").read_text())
    assert config["embedding_dtype"] == "int8"
    assert config["hidden_dim"] == DIMS
    # No path of the machine that distilled it, no generated model card.
    assert config["tokenizer_name"] == "all-MiniLM-L6-v2"
    assert not (static_dir / "README.md").exists()
    for path in static_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_static_vectors_are_unit_norm_and_mean_something(static_dir: Path):
    embedder = get_embedder(str(static_dir))
    assert isinstance(embedder, StaticEmbedder)
    texts = [
        "Solve the equation 3x + 5 = 20 for x.",
        "Find x when 2x - 7 = 9.",
        "Write a haiku about autumn leaves.",
    ]
    out = embedder.encode(texts)
    assert out.dtype == np.float32 and out.shape == (3, DIMS)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Two equations are closer to each other than either is to the poem.
    assert out[0] @ out[1] > max(out[0] @ out[2], out[1] @ out[2])
    assert embedder.encode([]).shape == (0, DIMS)


def test_static_embedding_has_no_window(static_dir: Path):
    """Every token counts: a question after 3,000 words of filler still moves the vector."""
    embedder = get_embedder(str(static_dir))
    filler = "The weather report for the coastal region follows. " * 400
    a, b = embedder.encode([filler + "Prove the theorem.", filler + "Bake a cake."])
    assert not np.allclose(a, b)


def test_router_carries_its_static_embedder(static_dir: Path, tmp_path: Path):
    router = QualityGapRouter.train(
        generated_labels(), grid=SMALL_GRID, embedder={"model_path": str(static_dir)}
    )
    prompts = [t.format(n=999) for t in HARD + EASY]
    scores = router.score(prompts)
    assert scores[:4].min() > scores[4:].max()

    saved = save_router(router, tmp_path / "qg")
    assert is_static_model(saved / "embedder")
    assert read_config(saved)["config"]["embedder"]["model_path"] == "embedder"
    # Moved elsewhere, without the directory it was trained from: still the same router.
    moved = Path(shutil.move(str(saved), tmp_path / "elsewhere"))
    np.testing.assert_array_equal(load_router(moved).score(prompts), scores)
    # Saving a loaded router again keeps the bundle whole.
    again = save_router(load_router(moved), tmp_path / "again")
    np.testing.assert_array_equal(load_router(again).score(prompts), scores)

    weights = moved / "embedder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="embedder weights"):
        load_router(moved)


def test_shipped_fast_router_loads_by_name_with_its_embedder():
    """Its routing quality is checked on the benchmarks (tests/routers/evaluation)."""
    from routeray.demo.prompts import generate_prompts

    fast = load_router(router_path("fast"))
    assert isinstance(fast.embedder, StaticEmbedder)
    scores = fast.score(generate_prompts(200, seed=3))
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores.std() > 0.005
    document = read_config(router_path("fast"))
    assert document["embedder"]["dir"] == "embedder"
    assert 0 < document["metadata"]["default_threshold"] < 1


def test_cached_vectors_belong_to_their_own_table(static_dir: Path, tmp_path: Path, monkeypatch):
    """Every router's table sits in a directory named `embedder/`: two tables of one size must
    not share a cache file."""
    from model2vec import StaticModel

    first, second = tmp_path / "a" / "embedder", tmp_path / "b" / "embedder"
    shutil.copytree(static_dir, first)
    other = StaticModel.from_pretrained(str(static_dir), force_download=False)
    other.embedding = np.roll(other.embedding, 1, axis=1)  # another table of the same size
    other.save_pretrained(str(second))
    monkeypatch.setenv("ROUTERAY_EMBEDDING_CACHE", str(tmp_path / "cache"))
    texts = ["Solve 3x + 5 = 20 for x.", "Write a haiku about autumn leaves."]
    cached_first = get_embedder(str(first)).encode(texts)
    cached_second = get_embedder(str(second)).encode(texts)
    np.testing.assert_array_equal(cached_second, StaticEmbedder(second).encode(texts))
    assert not np.allclose(cached_first, cached_second)
