"""`batch generate` with N backends: an N-model router picks each row's model and that
model's backend (here three OpenAI-compatible stand-ins) answers it, at that model's price;
the config's two forms, and routed input naming a model no backend serves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from batch_jobs.commit import SUMMARY_FILE
from batch_jobs.generate import GenerateConfig, run
from routeray.demo.prompts import generate_prompts
from routeray.demo.strong_standin import StrongStandin
from routers.checkpoint import load_router
from routers.decision.choice import ChoiceRule, choose, prompt_costs
from routers.prices import ModelPrice
from tests.support.multi_router import topic_router

MODELS = ["model-a", "model-b", "model-c"]
PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}


@pytest.fixture(scope="module")
def standins() -> Iterator[dict[str, StrongStandin]]:
    servers = {m: StrongStandin(model_name=m, answer_prefix=f"{m} says: ") for m in MODELS}
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def multi_router(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return topic_router(tmp_path_factory.mktemp("routers") / "topics", MODELS)


def config_for(standins: dict[str, StrongStandin], serve_style: bool = False) -> GenerateConfig:
    """Every stand-in under `backends`; or, as a serve config has it, the first as `strong`,
    the second as `weak` (priced by `prices.strong` / `prices.weak`) and the rest listed."""
    backends = [
        {"kind": "openai", "model": m, "base_url": s.base_url, "max_retries": 0}
        for m, s in standins.items()
    ]
    document: dict[str, Any] = {
        "backends": backends,
        "prices": {"models": {m: PRICE for m in standins}},
        "max_tokens": 8,
        "api_stage": {"batch_size": 8},
    }
    if serve_style:
        document["strong"], document["weak"], *document["backends"] = backends
        document["prices"] = {"strong": PRICE, "weak": PRICE, "models": {MODELS[2]: PRICE}}
    return GenerateConfig.model_validate(document)


def test_config_takes_strong_and_weak_or_a_list_of_backends():
    api = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}
    two = GenerateConfig.model_validate(
        {"strong": {**api, "model": "s"}, "weak": {**api, "model": "w"}}
    )
    assert two.models == [] and two.strong is not None
    many = GenerateConfig.model_validate(
        {
            "backends": [{**api, "model": m} for m in MODELS],
            "prices": {"models": {m: PRICE for m in MODELS}},
        }
    )
    assert many.models == MODELS
    with pytest.raises(ValidationError, match="no price for model 'model-c'"):
        GenerateConfig.model_validate(
            {
                "backends": [{**api, "model": m} for m in MODELS],
                "prices": {"models": {m: PRICE for m in MODELS[:2]}},
            }
        )
    with pytest.raises(ValidationError, match=r"`strong` and `weak`.*or `backends`"):
        GenerateConfig.model_validate({"strong": {**api, "model": "s"}})
    # A serve config's form: strong and weak are two of the N models, priced by `prices.strong`
    # and `prices.weak` unless `prices.models` names them.
    serve = GenerateConfig.model_validate(
        {
            "strong": {**api, "model": "s"},
            "weak": {**api, "model": "w"},
            "backends": [{**api, "model": "m"}],
            "prices": {"models": {"m": PRICE, "w": {**PRICE, "input_per_million": 5.0}}},
        }
    )
    assert serve.models == ["s", "w", "m"]
    priced = serve.model_prices()
    assert priced.for_model("s") == serve.prices.strong
    assert priced.for_model("w").input_per_million == 5.0
    with pytest.raises(ValidationError, match="one model twice"):
        GenerateConfig.model_validate(
            {
                "strong": {**api, "model": "Model-M"},
                "weak": {**api, "model": "w"},
                "backends": [{**api, "model": "model-m"}],
                "prices": {"models": {"m": PRICE}},
            }
        )


@pytest.mark.slow
def test_each_row_is_answered_by_its_chosen_models_backend(
    local_ray, tmp_path: Path, standins: dict[str, StrongStandin], multi_router
):
    router_dir, examples = multi_router
    prompts: list[str | None] = [*examples.values()] * 3 + generate_prompts(12, seed=2)
    prompts[4] = None
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": range(len(prompts)), "prompt": prompts}), source)
    for server in standins.values():
        server.stats.reset()
    rule = ChoiceRule(margin=0.0)
    config = config_for(standins, serve_style=True)
    summary = run(str(source), str(tmp_path / "out"), config, router=str(router_dir), rule=rule)

    table = pq.read_table(tmp_path / "out").to_pandas().sort_values("id").set_index("id")
    assert table.index.tolist() == list(range(len(prompts)))
    assert table.loc[4, "error"] == "prompt is null" and pd.isna(table.loc[4, "response"])
    good = table.drop(index=4)
    # The router's models default to the backends', and the rule picks as `choose` does.
    router = load_router(router_dir, models=MODELS)
    texts = good["prompt"].tolist()
    price = ModelPrice.model_validate(PRICE)
    picks = choose(router.qualities(texts), prompt_costs([price] * 3, texts), rule)
    assert good["model"].tolist() == [MODELS[k] for k in picks]
    assert len(set(good["model"])) == 3
    # Each row answered by its chosen model's backend, and only there.
    assert (good["answered_by"] == good["model"]).all() and good["error"].isna().all()
    for model, server in standins.items():
        mine = good[good["model"] == model]
        assert mine["response"].str.startswith(f"{model} says: ").all()
        assert server.stats.requests == len(mine)
    np.testing.assert_allclose(
        good["cost_usd"], price.cost(good["input_tokens"], good["output_tokens"])
    )

    assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text()) == summary
    assert (summary["rows"], summary["errors"]) == (len(prompts), 1)
    for model in MODELS:
        mine = good[good["model"] == model]
        assert summary["models"][model]["answered"] == len(mine)
        assert summary["models"][model]["cost_usd"] == pytest.approx(mine["cost_usd"].sum())


@pytest.mark.slow
def test_routed_input_naming_an_unserved_model_gets_a_row_error(
    local_ray, tmp_path: Path, standins: dict[str, StrongStandin]
):
    source = tmp_path / "routed.parquet"
    routes = ["model-a", "MODEL-B", "model-z", "model-c", None]
    prompts = ["one", "two", "three", "four", "five"]
    pq.write_table(pa.table({"id": range(5), "prompt": prompts, "route": routes}), source)
    run(str(source), str(tmp_path / "out"), config_for(standins))
    table = pq.read_table(tmp_path / "out").to_pandas().sort_values("id")
    # A route is matched under any spelling of the model's name.
    assert table["answered_by"].fillna("-").tolist()[:4] == ["model-a", "model-b", "-", "model-c"]
    assert "no backend serves" in table["error"].iloc[2]
    assert pd.isna(table["response"].iloc[4])


def test_the_many_model_serve_config_works_as_a_generate_config():
    config = GenerateConfig.from_yaml(Path(__file__).parents[2] / "serve_config.multi.yaml")
    assert len(config.models) >= 3
    # Every model priced, the strong and weak ones included.
    assert set(config.model_prices().models) >= set(config.models)
