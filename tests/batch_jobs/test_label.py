"""`batch label` end to end: the strong-API stand-in as strong model and judge (its scripted
replies play the judge's verdicts, malformed ones included), a second stand-in as the weak
model, on a local Ray, local files and loopback S3; labels checked against hand computations."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from batch_jobs.commit import JOB_FILE, SUMMARY_FILE
from batch_jobs.inputs import inspect_inputs
from batch_jobs.judge import (
    PAIRWISE_SYSTEM,
    PAIRWISE_USER,
    VerdictError,
    judge_conversations,
    label,
    parse_grade,
    parse_pairwise,
)
from batch_jobs.label import run
from batch_jobs.label_config import LabelConfig
from batch_jobs.label_cost import estimate_rows
from batch_jobs.sample import SAMPLE_DIR, plan_sample
from batch_jobs.storage import locate, s3_filesystem
from routeray.cli import app
from routeray.demo.strong_standin import StrongStandin, answer_for
from routers.data.user_labels import read_user_labels
from tests.support.jobs import kill_midway, published, wait_server_done
from tests.support.local_s3 import put_table
from tests.support.throughput import assert_throughput

STRONG, WEAK, JUDGE = "standin-strong", "standin-weak", "standin-judge"
PRICES = {
    "strong": {"input_per_million": 10.0, "output_per_million": 30.0, "mean_output_tokens": 50},
    "weak": {"input_per_million": 1.0, "output_per_million": 2.0, "mean_output_tokens": 40},
    "judge": {"input_per_million": 5.0, "output_per_million": 15.0, "mean_output_tokens": 20},
}
# A judge request holds both answers (pairwise) or one (single); an answer request holds none.
BOTH_ANSWERS = r"strong answer.*weak answer|weak answer.*strong answer"


@pytest.fixture(scope="module")
def strong():
    with StrongStandin(model_name=STRONG) as server:
        yield server


@pytest.fixture(scope="module")
def weak():
    with StrongStandin(model_name=WEAK, answer_prefix="weak answer: ") as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_standins(request: pytest.FixtureRequest):
    yield
    for name in ("strong", "weak"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


def config_doc(strong: StrongStandin, weak: StrongStandin | None = None, **extra: Any) -> dict:
    fast = {"max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    doc: dict[str, Any] = {
        "strong": {"model": STRONG, "base_url": strong.base_url, **fast},
        "judge": {"model": JUDGE},  # the strong stand-in under another name
        "prices": PRICES,
        "max_tokens": 64,
        "strong_stage": {"batch_size": 4},
        "judge_stage": {"batch_size": 4, "requests_per_s": 200, "concurrency": 8},
        **extra,
    }
    if weak is not None:
        doc["weak"] = {"kind": "openai", "model": WEAK, "base_url": weak.base_url, **fast}
        doc["weak_stage"] = {"batch_size": 4}
    return doc


def case(i: int) -> str:
    return f"case {i:02d}: explain topic number {i} to a curious student"


def judge_bodies(standin: StrongStandin) -> list[dict]:
    return [b for b in standin.stats.bodies if b["model"] == JUDGE]


def words(text: str) -> int:
    return len(text.split())


def usd(price: dict, tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * price["input_per_million"] + tokens_out * price["output_per_million"]) / 1e6


# -- the judge's verdicts and labels, without Ray ----------------------------------------------


def test_pairwise_labels_average_both_orders():
    # (strong as A, strong as B) -> strong_score: win 1, tie 0.5, loss 0, averaged by hand.
    hand = {
        ("[[A]]", "[[B]]"): (1.0, "strong"),
        ("[[B]]", "[[A]]"): (0.0, "weak"),
        ("[[A]]", "[[A]]"): (0.5, "tie"),  # position bias cancels out
        ("[[C]]", "[[C]]"): (0.5, "tie"),
        ("[[A]]", "[[C]]"): (0.75, "strong"),
        ("[[C]]", "[[A]]"): (0.25, "weak"),
    }
    for (first, second), (score, winner) in hand.items():
        result = label("pairwise", [f"A is tighter.\n{first}", f"Verdict: {second}"])
        assert (result.strong_score, result.weak_score, result.winner) == (
            score,
            1 - score,
            winner,
        )
    assert parse_pairwise("[[ b ]]".upper()) == "B"
    assert parse_pairwise("Both say [[A]]; final: [[A]]") == "A"


def test_unusable_verdicts_are_errors_with_the_judge_text():
    for text in ("I cannot decide.", "A is [[A]] but then [[B]]", "[[D]]"):
        with pytest.raises(VerdictError):
            parse_pairwise(text)
    with pytest.raises(VerdictError, match=r"reply 2 of 2 \(strong answer as B\).*'Hmm, hard\.'"):
        label("pairwise", ["[[A]]", "Hmm, hard."])
    assert parse_grade("Fine work.\nRating: [[7]]") == 7.0
    assert parse_grade("Rating: [[7.5]]") == 7.5
    for text in ("Rating: 7", "Rating: [[0]]", "Rating: [[11]]", "[[3]] or [[4]]"):
        with pytest.raises(VerdictError):
            parse_grade(text)
    single = label("single", ["Rating: [[8]]", "Rating: [[3]]"])
    assert (single.strong_score, single.weak_score, single.winner) == (0.8, 0.3, "strong")
    assert label("single", ["[[6]]", "[[6]]"]).winner == "tie"


def test_judge_is_asked_both_orders_and_single_grades_each_answer():
    first, second = judge_conversations("pairwise", "Q?", "STRONG", "WEAK")
    assert first[0] == second[0] == {"role": "system", "content": PAIRWISE_SYSTEM}
    a_first = first[1]["content"]
    b_first = second[1]["content"]
    assert a_first.index("STRONG") < a_first.index("WEAK")
    assert b_first.index("WEAK") < b_first.index("STRONG")
    grades = judge_conversations("single", "Q?", "STRONG", "WEAK")
    assert ["STRONG" in c[1]["content"] for c in grades] == [True, False]
    assert ["WEAK" in c[1]["content"] for c in grades] == [False, True]


def test_standin_plays_scripted_replies(strong: StrongStandin):
    def ask(text: str) -> str:
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        reply = httpx.post(f"{strong.base_url}/chat/completions", json=body).json()
        return reply["choices"][0]["message"]["content"]

    strong.reply("[[C]]", when=r"judge.*this")
    strong.reply("once", times=1)
    strong.reply("twice", when="twice", times=2)
    assert ask("please judge\nthis") == "[[C]]"  # a rule applies to every match
    assert ask("anything") == "once"
    assert ask("anything") == answer_for([{"role": "user", "content": "anything"}])
    assert [ask("twice") for _ in range(3)] == ["twice", "twice", "strong answer: eciwt"]
    assert ask("judge this too") == "[[C]]"


# -- the sample and the estimate, without Ray --------------------------------------------------


def write_archive(root: Path, sizes: list[int], columns: dict[str, list] | None = None) -> None:
    """Files part=N/data.parquet of these sizes; ids count up across them, prompts are case(id)
    unless `columns` (values for all rows, in id order) says otherwise."""
    start = 0
    for n, size in enumerate(sizes):
        ids = list(range(start, start + size))
        table = {"id": ids, "prompt": [case(i) for i in ids]}
        for name, values in (columns or {}).items():
            table[name] = pa.array(values[start : start + size], pa.string())
        (root / f"part={n}").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(table), root / f"part={n}" / "data.parquet", row_group_size=7)
        start += size


def test_sample_is_reproducible_and_spread_across_files(tmp_path: Path):
    sizes = [100, 50, 30, 20, 200]
    write_archive(tmp_path, sizes)
    files = inspect_inputs(locate(str(tmp_path)), "prompt")
    plan = plan_sample(files, 40, seed=3)
    again = plan_sample(inspect_inputs(locate(str(tmp_path)), "prompt"), 40, seed=3)
    assert plan.digest() == again.digest() and plan.size == 40
    assert plan_sample(files, 40, seed=4).digest() != plan.digest()
    # Each file's share follows its size: 40 * 100/400 = 10, 5, 3, 2, 20.
    shares = {f.relative: len(plan.rows.get(f.relative, [])) for f in files}
    assert list(shares.values()) == [10, 5, 3, 2, 20]
    for f in files:
        rows = plan.rows[f.relative]
        assert len(set(rows.tolist())) == len(rows) and rows.max() < f.num_rows
        assert np.all(np.diff(rows) > 0)
    # Many small files share a small sample at random, not in name order.
    many = tmp_path / "many"
    write_archive(many, [3] * 30)
    small = inspect_inputs(locate(str(many)), "prompt")
    chosen = sorted(plan_sample(small, 10, seed=0).rows)
    assert len(chosen) == 10 and chosen != sorted(f.relative for f in small)[:10]
    assert plan_sample(small, 1000, seed=0).size == 90


def test_estimate_is_a_hand_computation():
    config = LabelConfig.model_validate(
        {"strong": {"model": STRONG, "base_url": "http://x/v1"}, "prices": PRICES}
    )
    prompt = "p" * 40  # 10 tokens at four characters a token
    given = "s" * 80  # 20 tokens
    overhead = len(PAIRWISE_SYSTEM + PAIRWISE_USER.format(question="", answer_a="", answer_b=""))
    overhead //= 4
    # No weak model: row 0 (no weak answer) will be an error row, row 2 has a null prompt;
    # only row 1 (both answers given) is judged, and no answer is written.
    estimate = estimate_rows(
        config, [prompt, prompt, None], [None, given, None], [None, "w" * 8, None]
    )
    assert (estimate.rows, estimate.judge_calls) == (1, 2)
    assert (estimate.strong_answers, estimate.weak_answers) == (0, 0)
    judge = 2 * usd(PRICES["judge"], overhead + 10 + 20 + 2, 20)
    assert estimate.total_usd == pytest.approx(judge)
    # With a weak model: row 0 gets both answers written (mean lengths), row 1 none.
    config = config.model_copy(update={"weak": config.strong})
    estimate = estimate_rows(config, [prompt, prompt], [None, given], [None, "w" * 8])
    assert (estimate.rows, estimate.weak_answers, estimate.strong_answers) == (2, 1, 1)
    row0 = overhead + 10 + 50 + 40
    row1 = overhead + 10 + 20 + 2
    judge = 2 * (usd(PRICES["judge"], row0, 20) + usd(PRICES["judge"], row1, 20))
    assert estimate.judge_usd == pytest.approx(judge)
    assert estimate.total_usd == pytest.approx(
        judge + usd(PRICES["strong"], 10, 50) + usd(PRICES["weak"], 10, 40)
    )


def test_dry_run_calls_no_model_and_prints_the_estimate(
    strong: StrongStandin, weak: StrongStandin, tmp_path: Path
):
    write_archive(tmp_path / "in", [20, 20])
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump(config_doc(strong, weak)))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["batch", "label", "--input", str(tmp_path / "in"), "--output", str(out),
         "--config", str(config), "--sample", "6", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert strong.requests == 0 and weak.requests == 0
    assert not out.exists()
    estimate = json.loads(result.output[: result.output.index("\n}\n") + 2])["estimated_cost_usd"]
    assert (estimate["rows"], estimate["judge_calls"], estimate["strong_answers"]) == (6, 12, 6)
    assert estimate["total_usd"] > 0
    assert (
        f"${estimate['total_usd']:.4f}" in result.output and "no model was called" in result.output
    )


# -- the job on Ray ----------------------------------------------------------------------------


PAIRWISE_SCRIPT = {
    # case: (verdict with the strong answer as A, with the strong answer as B)
    0: ("A covers it.\n[[A]]", "B covers it.\n[[B]]"),
    1: ("[[B]]", "[[A]]"),
    2: ("Equal. [[C]]", "Equal. [[C]]"),
    3: ("[[A]]", "[[C]]"),
    4: ("[[C]]", "[[A]]"),
    5: ("[[A]]", "[[A]]"),
    6: ("[[A]]", "I cannot tell which one is better."),
    9: ("[[B]]", "[[B]]"),
}
# Worked out by hand from the rule: win 1, tie 0.5, loss 0 per order, averaged.
PAIRWISE_HAND = {
    0: (1.0, "strong"),
    1: (0.0, "weak"),
    2: (0.5, "tie"),
    3: (0.75, "strong"),
    4: (0.25, "weak"),
    5: (0.5, "tie"),
    9: (0.5, "tie"),
}


def script_pairwise(standin: StrongStandin) -> None:
    for i, (strong_first, strong_second) in PAIRWISE_SCRIPT.items():
        standin.reply(strong_first, when=rf"case {i:02d}:.*strong answer.*weak answer")
        standin.reply(strong_second, when=rf"case {i:02d}:.*weak answer.*strong answer")


@pytest.mark.slow
def test_pairwise_labels_equal_a_hand_computation(
    local_ray, strong: StrongStandin, weak: StrongStandin, tmp_path: Path
):
    prompts: list[str | None] = [case(i) for i in range(10)]
    prompts[7] = None
    # Weak answers are given for every row but 8, which the weak model answers with an error.
    given = [f"weak answer: given for {i}" for i in range(10)]
    given[8] = None
    write_archive(tmp_path / "in", [5, 5], {"prompt": prompts, "weak_response": given})
    script_pairwise(strong)
    weak.inject("400")

    out = tmp_path / "out"
    config = LabelConfig.model_validate(config_doc(strong, weak))
    summary = run(str(tmp_path / "in"), str(out), config)

    rows = pq.read_table(out).to_pandas().set_index("id").sort_index()
    assert rows.index.tolist() == list(range(10))
    for i, (score, winner) in PAIRWISE_HAND.items():
        row = rows.loc[i]
        assert (row["strong_score"], row["weak_score"], row["winner"]) == (score, 1 - score, winner)
        assert list(row["judge_verdicts"]) == list(PAIRWISE_SCRIPT[i])
        assert pd.isna(row["error"])
        assert row["weak_response"] == given[i]
        assert row["strong_response"] == answer_for([{"role": "user", "content": prompts[i]}])
    # The unparsable verdict: an error row that keeps the judge's text, no guessed label.
    assert "I cannot tell which one is better." in rows.loc[6, "error"]
    assert list(rows.loc[6, "judge_verdicts"]) == list(PAIRWISE_SCRIPT[6])
    assert rows.loc[[6, 7, 8], ["strong_score", "weak_score", "winner"]].isna().all().all()
    assert rows.loc[7, "error"] == "prompt is null"
    assert rows.loc[8, "error"].startswith(f"weak model {WEAK}: ")

    # Calls: one weak answer (refused), strong answers and two judge calls per answered row.
    judged = [0, 1, 2, 3, 4, 5, 6, 9]
    assert weak.requests == 1
    assert len(judge_bodies(strong)) == 2 * len(judged)
    assert strong.requests == 3 * len(judged)
    # Costs from the tokens the stand-in reported (whitespace words): the strong answer's...
    for i in judged:
        reply = answer_for([{"role": "user", "content": prompts[i]}])
        answer = usd(PRICES["strong"], words(prompts[i]), words(reply))
        assert rows.loc[i, "answer_cost_usd"] == pytest.approx(answer)
    # ...and the judge's, both orders.
    judge_cost = dict.fromkeys(judged, 0.0)
    for body in judge_bodies(strong):
        text = "\n".join(m["content"] for m in body["messages"])
        i = int(re.search(r"case (\d\d):", text).group(1))
        strong_first = text.index("strong answer") < text.index("weak answer")
        reply = PAIRWISE_SCRIPT[i][0 if strong_first else 1]
        judge_cost[i] += usd(PRICES["judge"], sum(map(words, text.split("\n"))), words(reply))
    for i in judged:
        assert rows.loc[i, "judge_cost_usd"] == pytest.approx(judge_cost[i])
    np.testing.assert_allclose(rows["cost_usd"], rows["answer_cost_usd"] + rows["judge_cost_usd"])
    assert rows.loc[[7, 8], "cost_usd"].tolist() == [0.0, 0.0]

    # What `routeray train --extra-data` reads: the labelled rows, error rows left out.
    training = read_user_labels(pq.read_table(out).to_pandas(), "labels").set_index("id")
    assert sorted(training.index) == sorted(PAIRWISE_HAND)
    assert training["strong_score"].to_dict() == {i: s for i, (s, _) in PAIRWISE_HAND.items()}

    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert (summary["rows"], summary["labeled"], summary["errors"]) == (10, 7, 3)
    assert summary["winners"] == {"strong": 2, "weak": 2, "tie": 3}
    assert summary["mean_strong_score"] == pytest.approx(3.5 / 7)
    assert summary["cost_usd"]["total"] == pytest.approx(rows["cost_usd"].sum())
    assert_throughput(summary, rows=10, files=2)
    assert summary["cost_usd"]["judge"] == pytest.approx(sum(judge_cost.values()))


@pytest.mark.slow
def test_a_judge_that_always_says_a_gives_ties_on_given_answers(
    local_ray, local_s3, strong: StrongStandin
):
    bucket = local_s3.bucket()
    for f in range(3):
        ids = list(range(f * 4, f * 4 + 4))
        table = pa.table(
            {
                "id": ids,
                "prompt": [case(i) for i in ids],
                "strong_response": [f"strong answer {i}" for i in ids],
                "weak_response": [None if i == 11 else f"weak answer {i}" for i in ids],
            }
        )
        put_table(local_s3, bucket, f"in/day={f}/part.parquet", table, row_group_size=3)
    strong.reply("Both are fine.\n[[A]]", when=BOTH_ANSWERS)
    # No weak model and no judge section: answers come from the input, the strong model judges.
    doc = config_doc(strong)
    del doc["judge"]
    summary = run(
        f"s3://{bucket}/in",
        f"s3://{bucket}/out",
        LabelConfig.model_validate(doc),
        s3_endpoint=local_s3.endpoint,
    )
    fs = s3_filesystem(local_s3.endpoint)
    rows = pq.read_table(f"{bucket}/out", filesystem=fs).to_pandas().set_index("id").sort_index()
    assert rows.index.tolist() == list(range(12))
    labelled = rows.drop(index=11)
    assert (labelled["strong_score"] == 0.5).all() and (labelled["weak_score"] == 0.5).all()
    assert (labelled["winner"] == "tie").all()
    assert all(list(v) == ["Both are fine.\n[[A]]"] * 2 for v in labelled["judge_verdicts"])
    assert (labelled["answer_cost_usd"] == 0).all() and (labelled["judge_cost_usd"] > 0).all()
    assert rows.loc[11, "error"].startswith("no weak answer: weak_response is null")
    # Only judge calls, under the strong model's name (the judge's default).
    assert strong.requests == 2 * 11
    assert {b["model"] for b in strong.stats.bodies} == {STRONG}
    assert summary["winners"] == {"strong": 0, "weak": 0, "tie": 11}
    assert summary["cost_usd"]["answers"] == 0.0
    # The estimate knew as much: no answer to write, row 11 never judged.
    estimate = summary["estimated_cost_usd"]
    assert (estimate["rows"], estimate["judge_calls"]) == (11, 22)
    assert (estimate["strong_answers"], estimate["weak_answers"], estimate["strong_usd"]) == (
        0,
        0,
        0,
    )


@pytest.mark.slow
def test_single_answer_grading_from_the_command_line(
    local_ray, strong: StrongStandin, weak: StrongStandin, tmp_path: Path
):
    write_archive(tmp_path / "in", [5])
    grades = {0: ("[[8]]", "[[3]]"), 1: ("[[4]]", "[[9]]"), 2: ("[[6]]", "[[6]]"),
              3: ("[[11]]", "[[2]]"), 4: ("[[7.5]]", "[[7]]")}  # fmt: skip
    for i, (strong_grade, weak_grade) in grades.items():
        strong.reply(f"Rating: {strong_grade}", when=rf"case {i:02d}:.*strong answer")
        strong.reply(f"Rating: {weak_grade}", when=rf"case {i:02d}:.*weak answer")
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump(config_doc(strong, weak)))  # judge_mode: pairwise default
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["batch", "label", "--input", str(tmp_path / "in"), "--output", str(out),
         "--config", str(config), "--judge-mode", "single"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "estimated cost: $" in result.output and "labelled 4 of 5 rows (single)" in result.output

    rows = pq.read_table(out).to_pandas().set_index("id").sort_index()
    hand = {0: (0.8, 0.3, "strong"), 1: (0.4, 0.9, "weak"), 2: (0.6, 0.6, "tie"),
            4: (0.75, 0.7, "strong")}  # fmt: skip
    for i, expected in hand.items():
        assert tuple(rows.loc[i, ["strong_score", "weak_score", "winner"]]) == expected
    assert "grade 11 outside 1-10" in rows.loc[3, "error"]
    assert list(rows.loc[3, "judge_verdicts"]) == ["Rating: [[11]]", "Rating: [[2]]"]
    assert (rows["weak_response"].str.startswith("weak answer: ")).all()
    assert weak.requests == 5 and len(judge_bodies(strong)) == 10
    assert json.loads((out / JOB_FILE).read_text())["identity"]["judge_mode"] == "single"


@pytest.mark.slow
def test_killed_sample_job_reruns_to_every_sampled_prompt_exactly_once(
    local_ray, local_s3, strong: StrongStandin, weak: StrongStandin, tmp_path: Path
):
    bucket = local_s3.bucket()
    files, per_file, sample = 4, 20, 16
    for f in range(files):
        ids = list(range(f * per_file, (f + 1) * per_file))
        table = pa.table({"id": ids, "prompt": [case(i) for i in ids]})
        put_table(local_s3, bucket, f"in/day={f:02d}/part-0.parquet", table, row_group_size=3)
    strong.reply("[[A]]", when=BOTH_ANSWERS)
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump(config_doc(strong, weak)))
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
    # The killed job's workers are gone; a call one of them sent before it died is answered
    # (and counted) before the count starts again for the rerun.
    for name, standin in (("strong", strong), ("weak", weak)):
        wait_server_done(standin.port, f"the {name} model's stand-in")
        standin.stats.reset()

    fs = s3_filesystem(local_s3.endpoint)
    source = inspect_inputs(locate(f"s3://{bucket}/in/", local_s3.endpoint), "prompt")
    plan = plan_sample(source, sample, seed=5)
    sampled = {
        f.relative: sorted(f_index * per_file + int(r) for r in plan.rows.get(f.relative, []))
        for f_index, f in enumerate(source)
    }
    summary = run(
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        LabelConfig.model_validate(yaml.safe_load(config.read_text())),
        sample=sample,
        seed=5,
        s3_endpoint=local_s3.endpoint,
    )
    rows = pq.read_table(f"{bucket}/out", filesystem=fs).to_pandas()
    assert sorted(rows["id"]) == sorted(i for ids in sampled.values() for i in ids)  # each once
    assert (rows["winner"] == "tie").all() and summary["rows"] == sample
    # The rerun processed the files the kill left unpublished, by the listing and by its own
    # count: those files' sampled rows, and only those.
    done = {key.split("/", 1)[1] for key in done_before}
    redone = sorted(i for relative, ids in sampled.items() if relative not in done for i in ids)
    assert_throughput(summary, rows=len(redone), files=files - len(done))
    # It asked for each of those rows' answers once and judged each in both orders, once.
    judged = Counter(
        int(re.search(r"case (\d+):", b["messages"][-1]["content"]).group(1))
        for b in judge_bodies(strong)
    )
    assert judged == dict.fromkeys(redone, 2)
    assert len(judge_bodies(strong)) == 2 * summary["rows_processed"]
    assert weak.requests == summary["rows_processed"]
    assert strong.requests == 3 * summary["rows_processed"]
    after = published(local_s3, bucket)
    assert len(after) == files and all(after[k] == stamp for k, stamp in done_before.items())
    # The sample's hidden inputs stay beside the results, out of every reader's way.
    hidden = local_s3.client().list_objects_v2(Bucket=bucket, Prefix=f"out/{SAMPLE_DIR}/")
    assert len([o for o in hidden["Contents"] if o["Key"].endswith(".parquet")]) == files
