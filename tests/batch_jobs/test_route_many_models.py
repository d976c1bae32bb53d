"""The route job with an N-model router, on a local Ray: each row goes to the model the one
decision rule picks from the router's own qualities and the prices, with its quality and
cost; resume, job identity, narrowing, missing prices, and S3 in and out through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from batch_jobs.commit import SUMMARY_FILE, JobConflict
from batch_jobs.route import run
from batch_jobs.storage import s3_filesystem
from routeray.cli import app
from routeray.demo.prompts import generate_prompts
from routers.checkpoint import load_router
from routers.decision.choice import ChoiceRule, choose, prompt_costs
from routers.prices import ModelPrice, Prices
from tests.support.local_s3 import put_table
from tests.support.multi_router import topic_router
from tests.support.throughput import assert_throughput, without_timing

pytestmark = pytest.mark.slow

MODELS = ["model-a", "model-b", "model-c"]
# Equal prices: the default rule then sends each topic's prompt to the model the router
# predicts best for it (topic_router's promise); a cost weight then has no cost to trade.
EQUAL = Prices(
    models={m: ModelPrice(input_per_million=1.0, output_per_million=1.0) for m in MODELS}
)
# Unequal prices, for the rules that trade quality for cost.
TIERED = Prices(
    models={
        "model-a": ModelPrice(input_per_million=30.0, output_per_million=60.0),
        "model-b": ModelPrice(input_per_million=3.0, output_per_million=6.0),
        "model-c": ModelPrice(input_per_million=0.3, output_per_million=0.6),
    }
)


@pytest.fixture(scope="module")
def multi_router(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return topic_router(tmp_path_factory.mktemp("routers") / "topics", MODELS)


def _archive(directory: Path, examples: dict[str, str]) -> list[str | None]:
    """Two files of the example prompts (several copies each), generated prompts and two bad
    rows; returns the prompts by id."""
    prompts: list[str | None] = [*examples.values()] * 4 + generate_prompts(28, seed=9)
    prompts[5], prompts[30] = None, ""
    directory.mkdir()
    half = len(prompts) // 2
    for part, rows in enumerate((range(half), range(half, len(prompts)))):
        pq.write_table(
            pa.table({"id": list(rows), "prompt": [prompts[i] for i in rows]}),
            directory / f"part-{part}.parquet",
            row_group_size=7,
        )
    return prompts


def _expected(router_dir: Path, prompts: list[str], prices: Prices, rule: ChoiceRule, **options):
    router = load_router(router_dir, **options)
    qualities = router.qualities(prompts)
    costs = prompt_costs(prices.for_models(router.models), prompts)
    return router.models, qualities, costs, choose(qualities, costs, rule)


def test_every_row_goes_to_the_model_the_rule_picks(local_ray, tmp_path: Path, multi_router):
    # Other rules and tiered prices, row by row, without a job: tests/batch_jobs/
    # test_choose_table.py (the actors run the same choose_table).
    prices, rule = EQUAL, ChoiceRule()
    router_dir, examples = multi_router
    prompts = _archive(tmp_path / "in", examples)
    out = tmp_path / "out"
    summary = run(
        str(tmp_path / "in"),
        str(out),
        router=str(router_dir),
        prices=prices,
        rule=rule,
        quality_columns=True,
        batch_size=8,
    )

    table = pq.read_table(out).to_pandas().sort_values("id").set_index("id")
    assert table.index.tolist() == list(range(len(prompts)))
    bad = table.loc[[5, 30]]
    assert bad["model"].isna().all() and bad["route"].isna().all() and bad["quality"].isna().all()
    assert set(bad["error"]) == {"prompt is null", "prompt is empty"}

    good = table.drop(index=[5, 30])
    models, qualities, costs, picks = _expected(router_dir, good["prompt"].tolist(), prices, rule)
    assert good["model"].tolist() == [models[k] for k in picks]
    assert (good["route"] == good["model"]).all()
    rows = np.arange(len(good))
    np.testing.assert_allclose(good["quality"].to_numpy(), qualities[rows, picks], rtol=1e-5)
    np.testing.assert_allclose(good["estimated_cost"].to_numpy(), costs[rows, picks])
    # Every model's column, named as configured, in the router's order.
    columns = [f"quality:{m}" for m in models]
    assert [c for c in table.columns if c.startswith("quality:")] == columns
    np.testing.assert_allclose(good[columns].to_numpy(), qualities, rtol=1e-5)
    # The router's promise: each topic's prompt goes to the model best at that topic.
    for model, prompt in examples.items():
        assert set(good.loc[good["prompt"] == prompt, "model"]) == {model}
    assert len(set(good["model"])) == 3

    written = json.loads((out / SUMMARY_FILE).read_text())
    assert written == summary
    assert (summary["rows"], summary["errors"]) == (len(prompts), 2)
    assert summary["rule"] == rule.describe()
    for model in models:
        mine = good[good["model"] == model]
        assert summary["models"][model]["rows"] == len(mine)
        assert summary["models"][model]["estimated_cost_usd"] == pytest.approx(
            mine["estimated_cost"].sum()
        )
    assert summary["estimated_cost_usd"] == pytest.approx(good["estimated_cost"].sum())
    assert_throughput(summary, rows=len(prompts), files=2)

    # Run again: every file is published, nothing redone; another rule is another job.
    again = run(
        str(tmp_path / "in"),
        str(out),
        router=str(router_dir),
        prices=prices,
        rule=rule,
        quality_columns=True,
    )
    assert without_timing(again) == without_timing(summary)
    assert_throughput(again, rows=0, files=0)
    with pytest.raises(JobConflict, match="choice"):
        run(str(tmp_path / "in"), str(out), router=str(router_dir), prices=prices)


def test_narrowed_models_route_among_those_only(local_ray, tmp_path: Path, multi_router):
    router_dir, examples = multi_router
    prompts = _archive(tmp_path / "in", examples)
    narrowed = ["model-c", "model-a"]
    run(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        router=str(router_dir),
        load_options={"models": narrowed},
        prices=EQUAL,
        rule=ChoiceRule(margin=0.0),
        batch_size=16,
    )
    table = pq.read_table(tmp_path / "out").to_pandas().sort_values("id")
    good = table[table["error"].isna()]
    # No quality columns unless asked for.
    assert not [c for c in table.columns if c.startswith("quality:")]
    _, _, _, picks = _expected(
        router_dir, good["prompt"].tolist(), EQUAL, ChoiceRule(margin=0.0), models=narrowed
    )
    assert good["model"].tolist() == [narrowed[k] for k in picks]
    assert set(good["model"]) == set(narrowed)
    assert len(table) == len(prompts)


def test_a_model_without_a_price_stops_the_job_before_it_starts(
    local_ray, tmp_path: Path, multi_router
):
    router_dir, examples = multi_router
    _archive(tmp_path / "in", examples)
    prices = Prices(models={m: EQUAL.models[m] for m in ("model-a", "model-c")})
    with pytest.raises(ValueError, match=r"no price for model 'model-b'.*models:"):
        run(str(tmp_path / "in"), str(tmp_path / "out"), router=str(router_dir), prices=prices)
    assert not (tmp_path / "out").exists()


def test_threshold_options_are_refused_for_an_n_model_router_and_rules_for_a_two_model_one(
    local_ray, tmp_path: Path, multi_router, tiny_router_dir: Path
):
    router_dir, examples = multi_router
    _archive(tmp_path / "in", examples)
    with pytest.raises(ValueError, match=r"N-model router.*--cost-weight"):
        run(str(tmp_path / "in"), str(tmp_path / "o1"), router=str(router_dir), strong_pct=0.3)
    with pytest.raises(ValueError, match="two-model router"):
        run(
            str(tmp_path / "in"),
            str(tmp_path / "o2"),
            router=str(tiny_router_dir),
            rule=ChoiceRule(cost_weight=1.0),
        )


def test_cli_routes_s3_to_s3_with_an_n_model_router(
    local_ray, local_s3, tmp_path: Path, multi_router
):
    router_dir, examples = multi_router
    bucket = local_s3.bucket()
    prompts = [*examples.values(), None, *generate_prompts(20, seed=4)]
    put_table(
        local_s3, bucket, "in/a.parquet", pa.table({"id": range(len(prompts)), "prompt": prompts})
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(TIERED.model_dump()))

    result = CliRunner().invoke(
        app,
        [
            "batch", "route",
            "--input", f"s3://{bucket}/in/",
            "--output", f"s3://{bucket}/out/",
            "--s3-endpoint", local_s3.endpoint,
            "--router", str(router_dir),
            "--prices", str(prices),
            "--margin", "0.2",
            "--batch-size", "8",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "margin=0.2" in result.output and "unusable" in result.output

    fs = s3_filesystem(local_s3.endpoint)
    table = pq.read_table(f"{bucket}/out", filesystem=fs).to_pandas().sort_values("id")
    assert table["id"].tolist() == list(range(len(prompts)))
    good = table[table["error"].isna()]
    rule = ChoiceRule(margin=0.2)
    models, _, _, picks = _expected(router_dir, good["prompt"].tolist(), TIERED, rule)
    assert good["model"].tolist() == [models[k] for k in picks]
    summary = json.loads(fs.open_input_file(f"{bucket}/out/{SUMMARY_FILE}").read())
    assert sum(m["rows"] for m in summary["models"].values()) == len(good)

    # Both forms of the rule at once is a usage error, before anything runs.
    both = CliRunner().invoke(
        app,
        ["batch", "route", "--input", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/o2/",
         "--router", str(router_dir), "--cost-weight", "1", "--margin", "0.1"],
    )  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output
