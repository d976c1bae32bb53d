"""`batch label` for an N-model router: three stand-ins of the strong API play three models
(each answers with its own prefix), a fourth plays the judge with scripted grades (malformed
ones included), on a local Ray, local files and loopback S3; the long (prompt, model, score)
rows checked against hand computations, and a killed run resumed exactly once."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from batch_jobs.commit import JOB_FILE, SUMMARY_FILE
from batch_jobs.inputs import inspect_inputs
from batch_jobs.judge import SINGLE_SYSTEM, SINGLE_USER, VerdictError, single_score
from batch_jobs.label import run
from batch_jobs.label_config import LabelConfig
from batch_jobs.label_cost import estimate_model_rows
from batch_jobs.label_models import PAIRS_DIR, expand
from batch_jobs.sample import plan_sample
from batch_jobs.storage import locate, s3_filesystem
from routeray.cli import app
from routeray.demo.strong_standin import StrongStandin, answer_for
from routers.data.user_labels import read_user_outcomes
from tests.support.jobs import kill_midway, published, wait_server_done
from tests.support.local_s3 import put_table
from tests.support.throughput import assert_throughput

MODELS = ["alpha", "beta", "gamma"]
JUDGE = "grader"
PRICES = {
    "models": {
        "alpha": {"input_per_million": 10.0, "output_per_million": 30.0, "mean_output_tokens": 50},
        "beta": {"input_per_million": 2.0, "output_per_million": 6.0, "mean_output_tokens": 40},
        "gamma": {"input_per_million": 0.5, "output_per_million": 1.0, "mean_output_tokens": 30},
    },
    "judge": {"input_per_million": 5.0, "output_per_million": 15.0, "mean_output_tokens": 20},
}
FAST = {"max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture(scope="module")
def models():
    servers = [StrongStandin(model_name=m, answer_prefix=f"{m} answer: ") for m in MODELS]
    for server in servers:
        server.__enter__()
    try:
        yield dict(zip(MODELS, servers, strict=True))
    finally:
        for server in servers:
            server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def judge():
    with StrongStandin(model_name=JUDGE) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_standins(request: pytest.FixtureRequest):
    yield
    if "models" in request.fixturenames:
        for server in request.getfixturevalue("models").values():
            server.reset()
    if "judge" in request.fixturenames:
        request.getfixturevalue("judge").reset()


def config_doc(models: dict[str, StrongStandin], judge: StrongStandin, **extra: Any) -> dict:
    return {
        "backends": [{"model": m, "base_url": s.base_url, **FAST} for m, s in models.items()],
        "judge": {"model": JUDGE, "base_url": judge.base_url, **FAST},
        "prices": PRICES,
        "max_tokens": 64,
        "api_stage": {"batch_size": 4},
        "judge_stage": {"batch_size": 4, "requests_per_s": 200, "concurrency": 8},
        **extra,
    }


def case(i: int) -> str:
    return f"case {i:02d}: explain topic number {i} to a curious student"


def words(text: str) -> int:
    return len(text.split())


def usd(price: dict, tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * price["input_per_million"] + tokens_out * price["output_per_million"]) / 1e6


def answer(model: str, prompt: str) -> str:
    return answer_for([{"role": "user", "content": prompt}], f"{model} answer: ")


def graded(body: dict) -> tuple[int, str]:
    """The (case, model) a judge request grades."""
    text = body["messages"][-1]["content"]
    found = re.search(r"case (\d+):.*<answer>\n(\w+) answer: ", text, re.DOTALL)
    assert found, text
    return int(found.group(1)), found.group(2)


# -- the config, the grade and the estimate, without Ray ---------------------------------------


def test_a_backends_config_checks_names_prices_and_the_judge():
    base = {"model": "alpha", "base_url": "http://x/v1", "timeout_s": 7.0}
    gamma = {"kind": "vllm", "model": "gamma", "model_path": "/m/gamma"}
    doc = {
        "backends": [base, {**base, "model": "beta"}, gamma],
        "judge": {"model": "alpha"},
        "prices": PRICES,
        "engine_stage": {"num_actors": 2},
    }
    config = LabelConfig.model_validate(doc)
    assert config.models == MODELS and config.judge_mode == "single"
    # The judge takes the listed API model's settings, key by key.
    assert (config.judge_backend.base_url, config.judge_backend.timeout_s) == ("http://x/v1", 7.0)
    assert config.backends_judge_price.input_per_million == 5.0
    assert [config.stage_for(b).num_actors for b in config.backends] == [1, 1, 2]
    # One model is enough (labels for a model a router lacks).
    assert LabelConfig.model_validate({**doc, "backends": [base]}).models == ["alpha"]
    # Without prices.judge the judge's model is priced under prices.models.
    no_judge_price = {**doc, "prices": {"models": PRICES["models"]}}
    assert LabelConfig.model_validate(no_judge_price).backends_judge_price.input_per_million == 10
    priced = {k: PRICES["models"][k] for k in ("alpha", "beta")}
    refused = {
        "names one model twice": {**doc, "backends": [base, {**base, "model": "Alpha"}]},
        "no price for model 'gamma'": {**doc, "prices": {"models": priced}},
        "the judge has no price": {
            **doc,
            "judge": {"model": "delta"},
            "prices": {"models": PRICES["models"]},
        },
        "not both": {**doc, "strong": base},
        "needs a `judge` section": {k: v for k, v in doc.items() if k != "judge"},
        "grades each answer alone": {**doc, "judge_mode": "pairwise"},
    }
    for message, bad in refused.items():
        with pytest.raises(ValidationError, match=message):
            LabelConfig.model_validate(bad)


def test_a_grade_is_a_score_over_ten_or_an_error_quoting_the_reply():
    assert single_score("Clear and right.\nRating: [[7]]") == 0.7
    assert single_score("Rating: [[10]]") == 1.0 and single_score("Rating: [[1]]") == 0.1
    for text, why in (("Good answer.", "no grade"), ("Rating: [[0]]", "outside 1-10"),
                      ("[[3]] or [[4]]", "more than one")):  # fmt: skip
        with pytest.raises(VerdictError, match=rf"{why}.*{re.escape(repr(text))}"):
            single_score(text)


def test_each_row_becomes_one_pair_per_model_in_order():
    table = pa.table({"prompt": ["p0", "p1"], "model": ["old", "old"], "note": [1, 2]})
    pairs = expand(table, np.array([4, 9]), "day=1/a.parquet", MODELS).to_pydict()
    assert pairs["prompt"] == ["p0"] * 3 + ["p1"] * 3
    assert pairs["model"] == MODELS * 2  # an input `model` column is replaced
    assert pairs["note"] == [1, 1, 1, 2, 2, 2]
    assert pairs["id"] == ["day=1/a.parquet:4"] * 3 + ["day=1/a.parquet:9"] * 3
    assert pairs["task"] == ["user"] * 6
    given = pa.table({"id": [7], "prompt": ["p"], "task": ["mine"]})
    assert expand(given, np.array([0]), "f", MODELS).to_pydict()["id"] == [7, 7, 7]


def test_estimate_is_a_hand_computation():
    config = LabelConfig.model_validate(
        {
            "backends": [{"model": m, "base_url": "http://x/v1"} for m in MODELS],
            "judge": {"model": JUDGE},
            "prices": PRICES,
        }
    )
    prompt = "p" * 40  # 10 tokens at four characters a token
    overhead = len(SINGLE_SYSTEM + SINGLE_USER.format(question="", answer="")) // 4
    estimate = estimate_model_rows(config, [prompt, None, prompt, "  "])
    assert (estimate.rows, estimate.answers, estimate.judge_calls) == (2, 6, 6)
    answers = sum(2 * usd(p, 10, p["mean_output_tokens"]) for p in PRICES["models"].values())
    judge = sum(
        2 * usd(PRICES["judge"], overhead + 10 + p["mean_output_tokens"], 20)
        for p in PRICES["models"].values()
    )
    assert estimate.answers_usd == pytest.approx(answers)
    assert estimate.judge_usd == pytest.approx(judge)
    assert estimate.as_dict()["total_usd"] == pytest.approx(answers + judge)


def test_dry_run_calls_no_model(models: dict, judge: StrongStandin, tmp_path: Path):
    pq.write_table(pa.table({"prompt": [case(i) for i in range(10)]}), tmp_path / "in.parquet")
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump(config_doc(models, judge)))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["batch", "label", "--input", str(tmp_path / "in.parquet"), "--output", str(out),
         "--config", str(config), "--sample", "4", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sum(s.requests for s in models.values()) == 0 and judge.requests == 0
    assert not out.exists()
    assert "(4 rows, 12 judge calls, 12 answers to write); no model was called" in result.output
    pairwise = CliRunner().invoke(
        app,
        ["batch", "label", "--input", str(tmp_path / "in.parquet"), "--output", str(out),
         "--config", str(config), "--judge-mode", "pairwise", "--dry-run"],
    )  # fmt: skip
    assert pairwise.exit_code == 2 and "grades each answer alone" in pairwise.output


# -- the job on Ray ----------------------------------------------------------------------------


# case: the judge's reply to each model's answer (None: the model itself fails, below).
GRADES = {
    0: {"alpha": "Right.\nRating: [[9]]", "beta": "Rating: [[6]]", "gamma": "Rating: [[2]]"},
    1: {"alpha": "Rating: [[3]]", "beta": "Rating: [[8]]", "gamma": "Rating: [[5]]"},
    2: {"alpha": "Rating: [[7.5]]", "beta": "Rating: [[7]]", "gamma": "Rating: [[10]]"},
    3: {"alpha": "Rating: [[11]]", "beta": "Rating: [[1]]", "gamma": "I will not grade this."},
    5: {"alpha": "Rating: [[4]]", "beta": "Rating: [[4]]", "gamma": "Rating: [[6]]"},
}


@pytest.mark.slow
def test_every_model_answers_and_each_answer_is_graded_alone(
    local_ray, models: dict[str, StrongStandin], judge: StrongStandin, tmp_path: Path
):
    prompts: list[str | None] = [case(i) for i in range(6)]
    prompts[4] = None  # an error row for every model, no call
    (tmp_path / "in").mkdir()
    for f, ids in enumerate(([0, 1, 2], [3, 4, 5])):
        table = pa.table({"prompt": [prompts[i] for i in ids], "topic": [f"t{i}" for i in ids]})
        pq.write_table(table, tmp_path / "in" / f"part-{f}.parquet", row_group_size=2)
    for i, replies in GRADES.items():
        for model, reply in replies.items():
            judge.reply(reply, when=rf"case {i:02d}:.*<answer>\n{model} answer: ")
    # One of beta's calls is refused (which prompt's is up to the order calls go out in).
    models["beta"].inject("400")

    out = tmp_path / "out"
    config = LabelConfig.model_validate(config_doc(models, judge))
    summary = run(str(tmp_path / "in"), str(out), config)

    table = pq.read_table(out)
    assert {"id", "prompt", "task", "model", "score", "judge", "topic"} <= set(table.column_names)
    rows = table.to_pandas()
    rows["case"] = rows["topic"].str.removeprefix("t").astype(int)
    # One row per (prompt, model), prompts in input order and models in config order.
    assert list(zip(rows["case"], rows["model"], strict=True)) == [
        (i, m) for i in range(6) for m in MODELS
    ]
    assert rows["id"].tolist() == [
        f"part-{i // 3}.parquet:{i % 3}" for i in range(6) for _ in MODELS
    ]
    assert (rows["task"] == "user").all()
    by = rows.set_index(["case", "model"])
    refused = [key for key in by.index if str(by.loc[key, "error"]).startswith("model beta: ")]
    assert len(refused) == 1 and refused[0][0] in GRADES
    for i, replies in GRADES.items():
        for model, reply in replies.items():
            row = by.loc[(i, model)]
            if (i, model) in refused:
                assert pd.isna(row["response"]) and pd.isna(row["judge"])
                assert row["cost_usd"] == 0.0
                continue
            assert row["response"] == answer(model, prompts[i])
            assert row["judge"] == JUDGE and row["judge_reply"] == reply
            grade = re.search(r"\[\[([\d.]+)\]\]", reply)
            if (i, model) in ((3, "alpha"), (3, "gamma")):  # unusable: no guessed score
                assert pd.isna(row["score"]) and reply[:10] in row["error"]
                assert ("outside 1-10" if model == "alpha" else "no grade") in row["error"]
                continue
            assert pd.isna(row["error"])
            assert row["score"] == pytest.approx(float(grade.group(1)) / 10)
            assert row["grade"] == pytest.approx(float(grade.group(1)))
            # Costs from the tokens the stand-ins reported (whitespace words).
            price = PRICES["models"][model]
            cost = usd(price, words(prompts[i]), words(answer(model, prompts[i])))
            assert row["answer_cost_usd"] == pytest.approx(cost)
    assert by.loc[4, "error"].eq("prompt is null").all() and by.loc[4, "score"].isna().all()
    np.testing.assert_allclose(rows["cost_usd"], rows["answer_cost_usd"] + rows["judge_cost_usd"])

    # Calls: each model answered the five usable prompts once; the judge graded every answer.
    assert [models[m].requests for m in MODELS] == [5, 5, 5]
    assert Counter(graded(b) for b in judge.stats.bodies) == {
        (i, m): 1 for i in GRADES for m in MODELS if (i, m) not in refused
    }
    assert {b["model"] for b in judge.stats.bodies} == {JUDGE}

    # What training reads: the scored pairs, error rows left out.
    training = read_user_outcomes(rows, "labels")
    assert (training["source"] == "labels").all() and (training["weight"] == 1.0).all()
    scored = rows.dropna(subset=["score"])
    assert training.set_index(["id", "model"])["score"].to_dict() == dict(
        zip(zip(scored["id"], scored["model"], strict=True), scored["score"], strict=True)
    )

    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert (summary["rows"], summary["prompts"]) == (18, 6)
    assert (summary["labeled"], summary["errors"]) == (12, 6)
    for model in MODELS:
        mine = scored[scored["model"] == model]["score"]
        assert summary["models"][model]["labeled"] == len(mine)
        assert summary["models"][model]["mean_score"] == pytest.approx(mine.mean())
    assert summary["cost_usd"]["total"] == pytest.approx(rows["cost_usd"].sum())
    assert_throughput(summary, rows=18, files=2)
    identity = json.loads((out / JOB_FILE).read_text())["identity"]
    assert (identity["models"], identity["judge_mode"]) == (MODELS, "single")


@pytest.mark.slow
def test_killed_job_reruns_to_every_pair_exactly_once(
    local_ray, local_s3, models: dict[str, StrongStandin], judge: StrongStandin, tmp_path: Path
):
    bucket = local_s3.bucket()
    files, per_file, sample = 4, 20, 16
    for f in range(files):
        ids = list(range(f * per_file, (f + 1) * per_file))
        table = pa.table({"id": ids, "prompt": [case(i) for i in ids]})
        put_table(local_s3, bucket, f"in/day={f:02d}/part-0.parquet", table, row_group_size=3)
    judge.reply("Fine.\nRating: [[6]]", when=r"<answer>")
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump(config_doc(models, judge)))
    args = [
        "--input", f"s3://{bucket}/in/",
        "--output", f"s3://{bucket}/out/",
        "--s3-endpoint", local_s3.endpoint,
        "--config", str(config),
        "--sample", str(sample),
        "--seed", "5",
    ]  # fmt: skip
    # The last file cannot be published before the kill: its upload is held, then failed.
    last = f"out/day={files - 1:02d}/"
    with local_s3.faults.hold(last):
        done_before = kill_midway(local_ray, local_s3, bucket, ["batch", "label", *args])
    assert 0 < len(done_before) < files, "the kill should land midway"
    assert not any(key.startswith(last) for key in done_before)
    # A call a killed worker sent before it died is answered (and counted) before the count
    # starts again for the rerun.
    for name, standin in (*models.items(), ("judge", judge)):
        wait_server_done(standin.port, f"the {name} stand-in")
        standin.stats.reset()

    source = inspect_inputs(locate(f"s3://{bucket}/in/", local_s3.endpoint), "prompt")
    plan = plan_sample(source, sample, seed=5)
    sampled = {
        f.relative: sorted(n * per_file + int(r) for r in plan.rows.get(f.relative, []))
        for n, f in enumerate(source)
    }
    summary = run(
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        LabelConfig.model_validate(yaml.safe_load(config.read_text())),
        sample=sample,
        seed=5,
        s3_endpoint=local_s3.endpoint,
    )
    fs = s3_filesystem(local_s3.endpoint)
    rows = pq.read_table(f"{bucket}/out", filesystem=fs).to_pandas()
    # Every sampled prompt once per model: nothing lost, nothing twice.
    pairs = Counter(zip(rows["id"], rows["model"], strict=True))
    assert pairs == {(i, m): 1 for ids in sampled.values() for i in ids for m in MODELS}
    assert (rows["score"] == 0.6).all() and rows["error"].isna().all()
    assert (summary["rows"], summary["prompts"], summary["labeled"]) == (48, 16, 48)
    # The rerun did the files the kill left unpublished, and only those: each of their
    # prompts answered once by each model and each answer graded once.
    done = {key.split("/", 1)[1] for key in done_before}
    redone = sorted(i for relative, ids in sampled.items() if relative not in done for i in ids)
    assert_throughput(summary, rows=len(redone) * len(MODELS), files=files - len(done))
    assert [models[m].requests for m in MODELS] == [len(redone)] * len(MODELS)
    assert Counter(graded(b) for b in judge.stats.bodies) == {
        (i, m): 1 for i in redone for m in MODELS
    }
    after = published(local_s3, bucket)
    assert len(after) == files and all(after[k] == stamp for k, stamp in done_before.items())
    # The pairs, the job's hidden inputs, stay beside the results, out of every reader's way.
    hidden = local_s3.client().list_objects_v2(Bucket=bucket, Prefix=f"out/{PAIRS_DIR}/")
    assert len([o for o in hidden["Contents"] if o["Key"].endswith(".parquet")]) == files
