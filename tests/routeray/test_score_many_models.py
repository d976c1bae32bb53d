"""`routeray score` with an N-model router: one `quality:<model>` column per model, named as
configured and in the router's order, narrowed and reordered by `--load-option models=[...]`;
a model the router has no labels for is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from routeray.cli import app
from routers.checkpoint import load_router
from tests.support.multi_router import topic_router

MODELS = ["model-a", "model-b", "model-c"]
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def multi_router(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return topic_router(tmp_path_factory.mktemp("routers") / "topics", MODELS)


@pytest.fixture
def prompts_file(tmp_path: Path, multi_router) -> tuple[Path, list[str | None]]:
    _, examples = multi_router
    prompts: list[str | None] = [*examples.values(), None, "  ", "What is 2 + 2?"]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": range(len(prompts)), "prompt": prompts}), source)
    return source, prompts


def _qualities(table: pa.Table, columns: list[str]) -> np.ndarray:
    return np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in columns])


def test_one_quality_column_per_model_in_the_router_order(
    tmp_path: Path, multi_router, prompts_file
):
    router_dir, examples = multi_router
    source, prompts = prompts_file
    out = tmp_path / "out.parquet"
    result = invoke("score", "--input", source, "--output", out, "--router", router_dir)
    assert result.exit_code == 0, result.output
    assert "2 rows had an unusable prompt" in result.output

    router = load_router(router_dir)
    table = pq.read_table(out)
    columns = [f"quality:{m}" for m in router.models]
    assert sorted(router.models) == MODELS
    # The input's columns, the qualities in the router's order, the error; no two-model score.
    assert table.column_names == ["id", "prompt", *columns, "error"]
    good = [0, 1, 2, 5]
    expected = router.qualities([prompts[i] for i in good])
    np.testing.assert_allclose(_qualities(table, columns)[good], expected, rtol=1e-5)
    assert table.column("error").to_pylist()[3:5] == ["prompt is null", "prompt is empty"]
    assert table.column(columns[0]).null_count == 2
    # Each topic's prompt has its own model's quality highest.
    for i, model in enumerate(examples):
        assert router.models[int(np.argmax(expected[i]))] == model


def test_load_option_models_narrows_and_reorders_keeping_the_given_spelling(
    tmp_path: Path, multi_router, prompts_file
):
    router_dir, _ = multi_router
    source, prompts = prompts_file
    out = tmp_path / "out.parquet"
    # Spelled otherwise than trained (the normaliser matches it), and in another order.
    narrowed = ["Model-C", "model-a"]
    result = invoke(
        "score", "--input", source, "--output", out, "--router", router_dir,
        "--load-option", "models=[Model-C, model-a]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "prompt", "quality:Model-C", "quality:model-a", "error"]
    full = load_router(router_dir)
    everything = full.qualities([prompts[0], prompts[5]])
    order = [full.models.index("model-c"), full.models.index("model-a")]
    got = _qualities(table, [f"quality:{m}" for m in narrowed])[[0, 5]]
    np.testing.assert_allclose(got, everything[:, order], rtol=1e-5)


def test_a_model_without_labels_is_an_error_naming_it(tmp_path: Path, multi_router, prompts_file):
    router_dir, _ = multi_router
    source, _ = prompts_file
    out = tmp_path / "out.parquet"
    result = invoke(
        "score", "--input", source, "--output", out, "--router", router_dir,
        "--load-option", "models=[model-a, model-zzz]",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "model-zzz" in result.output and "batch label" in result.output
    assert not out.exists()


def test_a_two_model_router_keeps_its_score_column(tmp_path: Path, tiny_router_dir: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["What is 17 * 23?", "hi"]}), source)
    out = tmp_path / "out.parquet"
    result = invoke("score", "--input", source, "--output", out, "--router", tiny_router_dir)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column_names == ["prompt", "strong_win_rate", "error"]
