"""The N-model router kind (`multi`): trained for real on a small topic table, saved, loaded,
narrowed; and the per-model outcomes it trains on, from the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers import OptionError, load_router, read_config
from routers.data.model_names import normalize_model_name
from routers.protocol import is_multi
from tests.support.multi_router import topic_router

MODELS = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "claude-v2"]


@pytest.fixture(scope="module")
def topic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return topic_router(tmp_path_factory.mktemp("multi") / "router", MODELS)


def test_a_saved_router_predicts_each_model_best_on_its_topic(topic):
    path, sent = topic
    router = load_router(path)
    assert is_multi(router)
    # Trained names are normal forms; best first.
    assert sorted(router.models) == sorted(normalize_model_name(m) for m in MODELS)
    assert read_config(path)["router"] == "multi"
    narrowed = load_router(path, models=MODELS)
    q = narrowed.qualities(list(sent.values()))
    assert q.shape == (3, 3)
    assert (q.argmax(axis=1) == np.arange(3)).all()
    assert ((q >= 0) & (q <= 1)).all()
    # Reloading gives the same numbers: config plus safetensors are the whole router.
    again = load_router(path, models=MODELS).qualities(list(sent.values()))
    assert again == pytest.approx(q)


def test_narrowing_keeps_the_callers_spelling_and_order(topic):
    path, sent = topic
    router = load_router(path, models=["claude-v2", "gpt-4-1106-preview"])
    assert router.models == ["claude-v2", "gpt-4-1106-preview"]
    full = load_router(path, models=MODELS).qualities([sent["claude-v2"]])
    assert router.qualities([sent["claude-v2"]]) == pytest.approx(full[:, [2, 0]])
    # The two-model view: first against last.
    score = router.score([sent["claude-v2"], sent["gpt-4-1106-preview"]])
    assert score[0] > 0.5 > score[1]


def test_a_model_without_labels_is_an_error_that_says_how_to_label_it(topic):
    path, _ = topic
    with pytest.raises(OptionError) as error:
        load_router(path, models=["meta/code-llama-instruct-34b-chat", "claude-v2"])
    message = str(error.value)
    assert "meta/code-llama-instruct-34b-chat" in message
    assert "codellama-34b-instruct" in message
    assert "routeray batch label" in message
    with pytest.raises(OptionError, match="at least two"):
        load_router(path, models=["claude-v2"])


ROUTERBENCH = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "claude-v1": "claude-1",
    "claude-v2": "claude-2",
    "claude-instant-v1": "claude-instant-1",
    "meta/llama-2-70b-chat": "llama-2-70b-chat",
    "mistralai/mixtral-8x7b-chat": "mixtral-8x7b-instruct-v0.1",
    "mistralai/mistral-7b-chat": "mistral-7b-instruct-v0.1",
    "zero-one-ai/Yi-34B-Chat": "yi-34b-chat",
    "WizardLM/WizardLM-13B-V1.2": "wizardlm-13b-v1.2",
    "meta/code-llama-instruct-34b-chat": "codellama-34b-instruct",
}


@pytest.mark.parametrize(("routerbench", "normal"), ROUTERBENCH.items())
def test_routerbench_names_meet_the_sources_names(routerbench, normal):
    assert normalize_model_name(routerbench) == normal


def test_the_shared_sources_label_ten_of_routerbenchs_eleven(shared_data_dir):
    from routers.data.model_outcomes import label_counts, load_model_outcomes

    outcomes = load_model_outcomes(shared_data_dir / "train", shared_data_dir / "eval")
    counts = label_counts(outcomes)
    labelled = {n for n in ROUTERBENCH.values() if counts.get(n, 0) > 0}
    assert labelled == set(ROUTERBENCH.values()) - {"codellama-34b-instruct"}
    # Spellings of one model meet: Mixtral from five sources, GGUF copies included.
    mixtral = outcomes[outcomes["model"] == "mixtral-8x7b-instruct-v0.1"]
    assert mixtral["source"].nunique() >= 5
    assert outcomes["score"].between(0, 1).all()
    assert "example" not in set(outcomes["model"])


def test_the_shipped_router_knows_ten_of_routerbenchs_eleven_models():
    from routers import router_path

    names = [n for n in ROUTERBENCH if n != "meta/code-llama-instruct-34b-chat"]
    router = load_router(router_path("multi"), models=names)
    assert router.models == names
    q = router.qualities(["Prove that there are infinitely many primes."])
    assert q.shape == (1, 10)
    assert ((q > 0) & (q < 1)).all()
    with pytest.raises(OptionError, match="code-llama-instruct-34b-chat"):
        load_router(router_path("multi"), models=[*names, "meta/code-llama-instruct-34b-chat"])


def test_train_on_your_own_labels_of_many_models_from_the_command_line(tmp_path):
    """`batch label` with backends writes long per-model labels; `routeray train --kind multi
    --extra-data` learns from them alone."""
    import pandas as pd
    from typer.testing import CliRunner

    from routeray.cli import app
    from tests.support.multi_router import TOPICS, topic_prompts

    models = ["model-a", "model-b"]
    topics = list(TOPICS)[:2]
    rows = [
        {"id": f"{t}-{i}", "prompt": p, "model": m, "score": float(j == k)}
        for j, t in enumerate(topics)
        for i, p in enumerate(topic_prompts(t, 24))
        for k, m in enumerate(models)
    ]
    labels = tmp_path / "labels.parquet"
    pd.DataFrame(rows).to_parquet(labels)
    out = tmp_path / "mine"
    result = CliRunner().invoke(
        app,
        [
            "train", "--kind", "multi", "--no-shared-data", "--extra-data", str(labels),
            "--eval-dir", str(tmp_path / "none"), "--output", str(out),
            "--param", "min_labels=10", "--param", "learning_rate=0.02", "--param", "recipe=mf",
            "--no-embedding-cache",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 models with labels" in result.output
    router = load_router(out, models=models)
    held_out = [topic_prompts(t, 1, offset=40)[0] for t in topics]
    assert (router.qualities(held_out).argmax(axis=1) == [0, 1]).all()
    pairs = len({(r["prompt"], r["model"]) for r in rows})  # a repeated pair is one row
    assert read_config(out)["metadata"]["training"]["sources"] == {"golden:labels": pairs}
