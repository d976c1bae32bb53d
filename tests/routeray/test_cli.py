"""The `routeray` command line end to end, on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from routeray.cli import app
from routers import router_class
from routers.checkpoint import load_router
from routers.data.tables import training_table

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_score_keeps_every_row_and_explains_bad_ones(tmp_path: Path, tiny_router_dir: Path):
    source = tmp_path / "in.parquet"
    prompts = ["What is 17 * 23?", None, "   ", "Write a poem about the sea.", "x" * 300_000]
    pq.write_table(pa.table({"id": [1, 2, 3, 4, 5], "prompt": prompts}), source)
    out = tmp_path / "out.parquet"
    result = invoke("score", "--input", source, "--output", out, "--router", tiny_router_dir)
    assert result.exit_code == 0, result.output
    assert "3 rows had an unusable prompt" in result.output
    table = pq.read_table(out).to_pandas()
    assert table["id"].tolist() == [1, 2, 3, 4, 5]
    assert table["strong_win_rate"].notna().tolist() == [True, False, False, True, False]
    assert table.loc[1, "error"] == "prompt is null"
    assert table.loc[2, "error"] == "prompt is empty"
    assert "too long" in table.loc[4, "error"]
    good = table["strong_win_rate"].dropna()
    assert ((good > 0) & (good < 1)).all()
    expected = load_router(tiny_router_dir).score([prompts[0], prompts[3]])
    np.testing.assert_allclose(good.to_numpy(), expected, rtol=1e-6)
    assert not (tmp_path / "out.parquet.partial").exists()


def test_score_non_string_column_is_reported_per_row(tmp_path: Path, tiny_router_dir: Path):
    source = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": [1, None, 3]}), source)
    out = tmp_path / "out.parquet"
    result = invoke("score", "--input", source, "--output", out, "--router", tiny_router_dir)
    assert result.exit_code == 0, result.output
    errors = pq.read_table(out).column("error").to_pylist()
    assert errors[1] == "prompt is null"
    assert errors[0].startswith("prompt is not a string")


def test_score_missing_column_fails_clearly(tmp_path: Path, tiny_router_dir: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["hello"]}), source)
    result = invoke(
        "score", "--input", source, "--output", tmp_path / "o.parquet", "--router", tiny_router_dir
    )
    assert result.exit_code == 2
    assert "no column 'prompt'" in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_score_with_a_foreign_router_dir_fails_clearly(tmp_path: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["hello"]}), source)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = invoke(
        "score", "--input", source, "--output", tmp_path / "o.parquet", "--router", foreign
    )
    assert result.exit_code == 2
    assert "not a routeray router" in result.output


def test_calibrate_prints_a_threshold_that_hits_the_share(tmp_path: Path, tiny_router_dir: Path):
    prompts = [f"question number {i}: explain topic {i % 7} in detail" for i in range(40)]
    source = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [*prompts, None]}), source)
    result = invoke(
        "calibrate", "--router", tiny_router_dir, "--input", source, "--strong-pct", "0.25"
    )
    assert result.exit_code == 0, result.output
    threshold = float(result.output.strip().splitlines()[-1])
    scores = load_router(tiny_router_dir).score(prompts)
    assert np.mean(scores >= threshold) == pytest.approx(0.25)
    assert "1 unusable rows ignored" in result.output


def _write_benchmark(directory: Path) -> None:
    rng = np.random.default_rng(0)
    n = 60
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "id": [f"mmlu/x/{i}" for i in range(n)],
            "prompt": [
                f"Question {i}: which option is right about subject {i % 5}?" for i in range(n)
            ],
            "weak_score": rng.integers(0, 2, n).astype(float),
            "strong_score": rng.integers(0, 2, n).astype(float),
            "contaminated": [i < 3 for i in range(n)],
        }
    ).to_parquet(directory / "mmlu.parquet")


def test_eval_writes_metrics_and_plot(tmp_path: Path, tiny_router_dir: Path):
    data = tmp_path / "eval"
    _write_benchmark(data)
    out = tmp_path / "result"
    result = invoke(
        "eval",
        "--benchmark",
        "mmlu",
        "--router",
        "random",
        "--router",
        str(tiny_router_dir),
        "--eval-dir",
        data,
        "--output",
        out,
        "--no-embedding-cache",
    )
    assert result.exit_code == 0, result.output
    assert "57 prompts (3 contaminated prompts left out)" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"random", "tiny-mf"}
    for values in metrics.values():
        assert set(values) == {"apgr", "cpt20", "cpt50", "cpt80", "auc", "strong_at_95"}
        assert 0.0 <= values["cpt50"] <= 100.0
    assert (out / "mmlu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cross_fit_dirs(tmp_path: Path) -> tuple[Path, Path]:
    data, train = tmp_path / "eval", tmp_path / "train"
    _write_benchmark(data)
    for name in ("mt_bench", "gsm8k"):  # decontamination reads every benchmark's prompts
        pd.DataFrame({"prompt": ["unrelated"]}).to_parquet(data / f"{name}.parquet")
    _write_training_sources(train)
    return data, train


def test_eval_cross_fit_adds_a_row_scored_out_of_fold(tmp_path: Path):
    data, train = _cross_fit_dirs(tmp_path)
    out = tmp_path / "result"
    args = ["--benchmark", "mmlu", "--router", "random", "--eval-dir", data]
    args += ["--train-dir", train, "--output", out, "--no-embedding-cache"]
    result = invoke("eval", *args, "--cross-fit", "3", "--kind", "sw_ranking")
    assert result.exit_code == 0, result.output
    assert "sw_ranking trained 3 times" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"random", "sw_ranking cross-fit 3"}


def test_eval_cross_fit_with_one_fold_fails_clearly(tmp_path: Path):
    data, train = _cross_fit_dirs(tmp_path)
    args = ["--benchmark", "mmlu", "--router", "random", "--eval-dir", data, "--train-dir", train]
    result = invoke("eval", *args, "--output", tmp_path / "r", "--cross-fit", "1", "--kind", "mf")
    assert result.exit_code == 2
    assert "at least 2 folds" in result.output


def test_eval_unknown_benchmark_fails_clearly(tmp_path: Path):
    result = invoke(
        "eval",
        "--benchmark",
        "hellaswag",
        "--router",
        "random",
        "--eval-dir",
        tmp_path,
        "--output",
        tmp_path / "o",
    )
    assert result.exit_code == 2
    assert "unknown benchmark 'hellaswag'" in result.output


def _write_training_sources(directory: Path) -> None:
    directory.mkdir(parents=True)
    rows = []
    for i in range(30):
        math = i % 2 == 0
        prompt = f"Solve: {i} + {i * 3} times {i + 2}" if math else f"Say hello to friend {i}"
        for other in ("vicuna-7b", "text_davinci_003"):
            rows.append(
                {
                    "prompt": prompt,
                    "model_a": "gpt4_1106_preview",
                    "model_b": other,
                    "winner": "model_a" if math else "model_b",
                    "preference": 1.0 if math else 2.0,
                }
            )
        rows.append(
            {
                "prompt": prompt,
                "model_a": "gpt4_1106_preview",
                "model_b": "Mixtral-8x7B-Instruct-v0.1",
                "winner": "model_a" if math else "tie",
                "preference": 1.0 if math else 1.5,
            }
        )
    rows.extend(
        {
            "prompt": "An eval prompt that leaked",
            "model_a": "gpt4_1106_preview",
            "model_b": other,
            "winner": "model_a",
            "preference": 1.0,
        }
        for other in ("vicuna-7b", "Mixtral-8x7B-Instruct-v0.1")
    )
    pd.DataFrame(rows).to_parquet(directory / "alpaca_eval_pairwise.parquet")
    arena = [
        {"question_id": f"q{q}", "model": m, "score": s, "prompt": f"Arena prompt {q}"}
        for q in range(4)
        for m, s in (("gpt-4-1106-preview", 9.0), ("mistralai/Mixtral-8x7B-Instruct-v0.1", 6.0))
    ]
    pd.DataFrame(arena).to_parquet(directory / "arena_bench_v1_scores.parquet")
    pd.DataFrame(
        {
            "question_id": ["a", "b", "c"],
            "src": ["ori_mmlu-law", "stemez-Physics", "stemez-Physics"],
            "prompt": [
                "MMLU-derived question",
                "What is the unit of force?",
                "Name the SI unit of energy.",
            ],
            "from_original_mmlu": [True, False, False],
            "correct__Mixtral-8x7B-Instruct-v0.1": pd.array([True, False, False], "boolean"),
            "correct__gpt-4o-2024-05-13": pd.array([True, True, True], "boolean"),
        }
    ).to_parquet(directory / "mmlu_pro_correctness.parquet")


# Eval prompts planted in the eval sets, each equal to a training prompt of
# `_write_training_sources` once whitespace and case are folded (the contamination rule), in
# every benchmark and every training source; MT Bench's second turn counts too.
LEAKED_EVAL = {
    "mmlu": {"prompt": ["an EVAL prompt  that leaked"]},  # alpaca_eval: 2 battles, 1 labelled
    "gsm8k": {
        "prompt": [
            " say hello to FRIEND 5\n",  # alpaca_eval: 3 battles, 1 labelled
            "name the si unit of ENERGY.",  # mmlu_pro: 1 battle, 1 labelled
            "Say hello to friend 7!",  # equal to no training prompt: nothing to drop
        ]
    },
    "mt_bench": {"prompt": ["unrelated"], "prompt_turn2": ["ARENA prompt\t3"]},  # arena_hard: 1, 1
}
# What decontamination must drop per source: (battles, labelled prompts, distinct prompts).
LEAKED_ROWS = {"alpaca_eval": (5, 2, 2), "arena_hard": (1, 1, 1), "mmlu_pro": (1, 1, 1)}
LEAKED_TRAINING_PROMPTS = {
    "An eval prompt that leaked",
    "Say hello to friend 5",
    "Name the SI unit of energy.",
    "Arena prompt 3",
}


def _training_dirs(tmp_path: Path, leaked: bool = False) -> tuple[Path, Path]:
    """Training sources, and eval sets that decontamination reads: one unrelated prompt each,
    or (`leaked`) the `LEAKED_EVAL` prompts."""
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    _write_training_sources(train_dir)
    eval_dir.mkdir()
    for name in ("mt_bench", "mmlu", "gsm8k"):
        columns = LEAKED_EVAL[name] if leaked else {"prompt": ["unrelated"]}
        pd.DataFrame(columns).to_parquet(eval_dir / f"{name}.parquet")
    return train_dir, eval_dir


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from routeray.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


# Router kind -> training options, and whether the fixture is enough for the router to rank
# math above chit-chat. quality_gap chooses its model on a held-out training source, and here
# two of the three sources hold 5 prompts: its learning is tested in test_quality_gap.py.
TRAINED_KINDS = {
    "mf": ([], True),
    "sw_ranking": ([], True),
    "quality_gap": ([], False),
    "distilled": ([], False),
    "bert": (["--param", "epochs=1", "--param", "batch_size=8"], False),
    "causal_llm": (["--param", "lora=true", "--param", "epochs=1"], False),
}


@pytest.mark.parametrize("kind", list(TRAINED_KINDS))
def test_train_writes_a_loadable_decontaminated_router(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
):
    train_dir, eval_dir = _training_dirs(tmp_path, leaked=True)
    out = tmp_path / "router"
    options, learns = TRAINED_KINDS[kind]
    if kind == "causal_llm":
        options = [*options, "--param", f"base_model={request.getfixturevalue('tiny_llama')}"]
    result = invoke(
        "train",
        "--kind",
        kind,
        "--train-dir",
        train_dir,
        "--eval-dir",
        eval_dir,
        "--output",
        out,
        "--no-embedding-cache",
        *options,
    )
    assert result.exit_code == 0, result.output
    cls = router_class(kind)
    battles = cls.trains_on == "battles"
    for source, (n_battles, n_labelled, n_prompts) in LEAKED_ROWS.items():
        rows = f"{n_battles} battles" if battles else f"{n_labelled} labelled prompts"
        assert f"decontamination: {source}: dropped {rows} ({n_prompts} prompts)" in result.output
    # The rows are gone from what was trained on, not just counted in a log line.
    everything = training_table(cls, train_dir, None)
    kept = training_table(cls, train_dir, eval_dir)
    planted = sum(n[0] if battles else n[1] for n in LEAKED_ROWS.values())
    assert len(everything) - len(kept) == planted > 0
    leaked = {" ".join(p.split()).casefold() for p in LEAKED_TRAINING_PROMPTS}
    assert leaked <= {" ".join(p.split()).casefold() for p in everything["prompt"]}
    assert not leaked & {" ".join(p.split()).casefold() for p in kept["prompt"]}
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["training"]["rows"] == len(kept)
    assert meta["training"]["sources"] == kept["source"].value_counts().to_dict()
    card = (out / "README.md").read_text()
    for source in kept["source"].unique():
        assert f"| {source} | {meta['training']['sources'][source]} | Apache-2.0" in card
    router = load_router(out)
    scores = router.score(["Solve: 7 + 21 times 9", "Say hello to friend 99"])
    assert ((scores >= 0) & (scores <= 1)).all()
    if learns:
        assert scores[0] > scores[1]
    assert 0.0 <= meta["default_threshold"] <= 1.0
    assert meta["training"]["options"] == {
        k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options if "=" in o)
    }


def test_train_distilled_reads_a_decontaminated_corpus(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path, leaked=True)
    corpus = tmp_path / "corpus.parquet"
    prompts = [f"Compute {i} times {i + 3} and explain" for i in range(20)]
    # One equals an eval prompt once whitespace and case fold; one is blank.
    pq.write_table(pa.table({"text": [*prompts, "SAY hello to friend 7!", "  "]}), corpus)
    out = tmp_path / "student"
    args = ["--train-dir", train_dir, "--eval-dir", eval_dir, "--no-embedding-cache"]
    result = invoke(
        "train", "--kind", "distilled", *args, "--corpus", corpus, "--prompt-column", "text",
        "--param", "hidden=16", "--output", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decontamination: corpus: dropped 1 corpus prompts" in result.output
    document = json.loads((out / "config.json").read_text())
    assert document["metadata"]["training"]["options"]["corpus"] == {
        "files": {str(corpus): 21},
        "kept": 20,
    }
    assert document["config"]["hyperparameters"]["corpus_prompts"] == 20
    # The metadata says where the corpus came from; its text stays out of the router.
    assert "Compute 3 times 6" not in (out / "config.json").read_text()
    assert load_router(out).score(["Compute 99 times 102 and explain"]).shape == (1,)


def test_corpus_needs_a_kind_that_learns_from_one(tmp_path: Path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"prompt": ["a prompt"]}), corpus)
    result = invoke("train", "--kind", "mf", "--corpus", corpus, "--output", tmp_path / "r")
    assert result.exit_code == 2
    assert "router kind 'mf' has no training option 'corpus'" in result.output


@pytest.mark.parametrize(
    ("column", "message"),
    [("text", "has no column 'prompt'"), ("prompt", "column 'prompt' holds int64, not text")],
)
def test_a_corpus_without_text_prompts_fails_clearly(tmp_path: Path, column: str, message: str):
    train_dir, eval_dir = _training_dirs(tmp_path)
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({column: [1, 2, 3] if column == "prompt" else ["a", "b"]}), corpus)
    args = ["--train-dir", train_dir, "--eval-dir", eval_dir, "--output", tmp_path / "r"]
    result = invoke("train", "--kind", "distilled", "--corpus", corpus, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "r").exists()


def test_corpus_command_records_where_the_prompts_came_from(tmp_path: Path):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    records = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "", "answer": "-"}]
    (repo / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "train.jsonl"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "data"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    out = tmp_path / "corpus" / "questions.parquet"
    common = ["--git-dir", repo / ".git", "--path", "train.jsonl", "--repository", "o/r"]
    result = invoke("corpus", *common, "--field", "question", "--licence", "MIT", "--output", out)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("prompt").to_pylist() == ["What is 2 + 3?"]
    source = json.loads(table.schema.metadata[b"routeray.source"])
    assert source == json.loads(out.with_name(out.name + ".source.json").read_text())
    assert source["commit"] == sha.stdout.strip() and len(source["commit"]) == 40
    assert [source[k] for k in ("repository", "path", "licence")] == ["o/r", "train.jsonl", "MIT"]
    assert (source["records"], source["prompts"]) == (2, 1)

    missing = invoke("corpus", *common, "--field", "prompt", "--licence", "MIT", "--output", out)
    assert missing.exit_code == 2 and "no record has a non-empty 'prompt'" in missing.output
    common[3] = "absent.jsonl"
    absent = invoke("corpus", *common, "--field", "question", "--licence", "MIT", "--output", out)
    assert absent.exit_code == 2 and "absent.jsonl" in absent.output


def test_param_values_keep_their_types():
    from routeray.options import key_values

    items = ["lr=5e-5", "epochs=2", "lora=true", "base_model=/m/x", "dims=[64, 128]"]
    assert key_values(items, "--param") == {
        "lr": 5e-5,
        "epochs": 2,
        "lora": True,
        "base_model": "/m/x",
        "dims": [64, 128],
    }


def test_train_option_the_router_lacks_fails_clearly(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    args = ["--train-dir", train_dir, "--eval-dir", eval_dir, "--output", tmp_path / "r"]
    result = invoke("train", "--kind", "mf", *args, "--param", "wings=2")
    assert result.exit_code == 2
    assert "router kind 'mf' has no training option 'wings'" in result.output
    assert not (tmp_path / "r").exists()


def test_train_param_must_be_key_value(tmp_path: Path):
    result = invoke("train", "--kind", "mf", "--param", "epochs", "--output", tmp_path / "r")
    assert result.exit_code == 2
    assert "--param takes KEY=VALUE" in result.output


def test_train_unknown_router_kind_fails_clearly(tmp_path: Path):
    result = invoke("train", "--kind", "gpt-magic", "--output", tmp_path / "r")
    assert result.exit_code == 2
    assert "unknown router kind 'gpt-magic'" in result.output


def test_train_without_eval_data_refuses(tmp_path: Path):
    train_dir = tmp_path / "train"
    _write_training_sources(train_dir)
    result = invoke(
        "train",
        "--train-dir",
        train_dir,
        "--eval-dir",
        tmp_path / "missing",
        "--output",
        tmp_path / "r",
        "--no-embedding-cache",
    )
    assert result.exit_code == 2
    assert "always decontaminated" in result.output
    assert not (tmp_path / "r").exists()


def test_ratings_rank_the_model_that_wins_first(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    result = invoke("ratings", "--train-dir", train_dir, "--eval-dir", eval_dir, "--tiers", "2")
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.output.splitlines() if line[:4].strip().isdigit()]
    # In the fixture gpt-4o wins its two battles and never loses; Mixtral never wins (it loses
    # or ties every battle with gpt-4-1106 and loses to gpt-4o).
    assert table[0][0] == "1" and table[0][3] == "gpt-4o-2024-05-13"
    assert table[-1][0] == "2" and table[-1][3] == "mixtral-8x7b-instruct-v0.1"
    assert {row[0] for row in table} == {"1", "2"}


def test_cli_cache_setting_does_not_outlive_the_command(tmp_path: Path):
    import os

    result = invoke(
        "eval",
        "--benchmark",
        "nope",
        "--router",
        "random",
        "--eval-dir",
        tmp_path,
        "--embedding-cache",
        tmp_path / "cache",
    )
    # The options parsed, the cache was set for the command, and the command failed inside it.
    assert result.exit_code == 2 and "unknown benchmark 'nope'" in result.output
    assert "ROUTERAY_EMBEDDING_CACHE" not in os.environ


# --- one vocabulary ---------------------------------------------------------------------------


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"routeray {version('routeray')}"


def test_score_and_calibrate_take_the_shipped_name(tmp_path: Path):
    from routers import default_router_dir

    source = tmp_path / "in.parquet"
    prompts = ["What is 17 * 23?", "hi!", "Prove that sqrt(2) is irrational.", "Name a colour."]
    pq.write_table(pa.table({"prompt": prompts}), source)
    out = tmp_path / "out.parquet"
    result = invoke("score", "--input", source, "--output", out, "--router", "default")
    assert result.exit_code == 0, result.output
    expected = load_router(default_router_dir()).score(prompts)
    np.testing.assert_allclose(pq.read_table(out).column("strong_win_rate").to_numpy(), expected)
    result = invoke("calibrate", "--router", "default", "--input", source, "--strong-pct", "0.5")
    assert result.exit_code == 0, result.output
    threshold = float(result.output.strip().splitlines()[-1])
    assert np.mean(expected >= threshold) == 0.5


def test_load_options_reach_the_router(tmp_path: Path, tiny_router_dir: Path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["What is 17 * 23?", "hi!"]}), source)
    scores = {}
    for pair in ("mixtral-8x7b-instruct-v0.1", "other-model"):
        out = tmp_path / f"{pair}.parquet"
        args = ["--router", tiny_router_dir, "--load-option", f"weak_model={pair}"]
        result = invoke("score", "--input", source, "--output", out, *args)
        assert result.exit_code == 0, result.output
        scores[pair] = pq.read_table(out).column("strong_win_rate").to_numpy()
    # Another weak model is another pair: the scores move.
    assert not np.allclose(scores["mixtral-8x7b-instruct-v0.1"], scores["other-model"])


def test_unknown_load_option_is_refused_the_same_way_for_every_command(
    tmp_path: Path, tiny_router_dir: Path
):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["hi"]}), source)
    bad = ["--router", tiny_router_dir, "--load-option", "wings=2"]
    for command in (
        ["score", "--input", source, "--output", tmp_path / "o.parquet", *bad],
        ["calibrate", "--input", source, *bad],
    ):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert "router kind 'mf' has no load option 'wings'" in result.output


def test_routers_lists_kinds_and_shipped_names():
    result = invoke("routers")
    assert result.exit_code == 0
    assert "quality_gap" in result.output and "default" in result.output
    # The shipped N-model router's models, which `--load-option models=[...]` may name.
    from routers import read_config, router_path

    trained = read_config(router_path("multi"))["config"]["trained_models"]
    assert f"multi knows {len(trained)} models: " in result.output
    assert "gpt-4-1106-preview" in result.output.split("multi knows")[1]


# --- your own labels --------------------------------------------------------------------------


def _user_labels(path: Path, hello_wins: str, n: int = 20) -> Path:
    """The fixture's two prompt families, labelled as a user's judge would: math to the strong
    model, hello to `hello_wins`."""
    prompts, winners = [], []
    for i in range(n):
        prompts += [f"Solve: {i + 100} + {i * 5} times {i + 3}", f"Say hello to friend {i + 100}"]
        winners += ["weak" if hello_wins == "strong" else "strong", hello_wins]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"prompt": prompts, "winner": winners}).to_parquet(path)
    return path


def _hello_minus_math(router_dir: Path) -> float:
    scores = load_router(router_dir).score(["Say hello to friend 7", "Solve: 8 + 21 times 9"])
    return float(scores[0] - scores[1])


def test_train_extra_data_flips_a_prompt_family(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    common = ["--train-dir", train_dir, "--eval-dir", eval_dir, "--no-embedding-cache"]
    shared = invoke("train", "--kind", "mf", *common, "--output", tmp_path / "shared")
    assert shared.exit_code == 0, shared.output
    assert _hello_minus_math(tmp_path / "shared") < 0  # the shared data: math goes strong

    mine = _user_labels(tmp_path / "labels" / "mine.parquet", hello_wins="strong")
    only = invoke(
        "train", "--kind", "mf", *common, "--output", tmp_path / "only",
        "--extra-data", mine, "--no-shared-data",
    )  # fmt: skip
    assert only.exit_code == 0, only.output
    assert _hello_minus_math(tmp_path / "only") > 0  # the user's labels alone flip it
    both = invoke(
        "train", "--kind", "mf", *common, "--output", tmp_path / "both",
        "--extra-data", tmp_path / "labels", "--extra-weight", "20",
    )  # fmt: skip
    assert both.exit_code == 0, both.output
    assert _hello_minus_math(tmp_path / "both") > 0  # heavy enough to outweigh the shared data
    recorded = json.loads((tmp_path / "both" / "config.json").read_text())["metadata"]
    assert recorded["training"]["extra_data"] == {"labels": 40}
    assert recorded["training"]["extra_weight"] == 20.0


def test_train_extra_data_errors_are_clear(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    args = ["train", "--kind", "mf", "--train-dir", train_dir, "--eval-dir", eval_dir]
    result = invoke(*args, "--no-shared-data", "--output", tmp_path / "r")
    assert result.exit_code == 2 and "give --extra-data" in result.output
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"prompt": ["a"], "strong_score": [3.0], "weak_score": [0.0]}).to_parquet(bad)
    result = invoke(*args, "--extra-data", bad, "--output", tmp_path / "r")
    assert result.exit_code == 2 and "outside [0, 1]" in result.output
    result = invoke(*args, "--extra-data", tmp_path / "missing", "--output", tmp_path / "r")
    assert result.exit_code == 2 and "not found" in result.output
    assert not (tmp_path / "r").exists()


def test_eval_on_your_own_labels_with_cross_fit(tmp_path: Path, tiny_router_dir: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [f"Solve: {i} + {i * 3} times {i + 2}" for i in range(0, 30, 2)]  # in training
    prompts += [f"Write a limerick about a cat named {i}" for i in range(45)]
    strong = rng.integers(0, 2, len(prompts)).astype(float)
    data = tmp_path / "traffic.parquet"
    pd.DataFrame(
        {"id": range(len(prompts)), "prompt": prompts, "strong_score": strong,
         "weak_score": 1.0 - strong}
    ).to_parquet(data)  # fmt: skip
    out = tmp_path / "result"
    result = invoke(
        "eval", "--data", data, "--routers", "default", "--router", tiny_router_dir,
        "--router", "random", "--cross-fit", "3", "--kind", "mf", "--train-dir", train_dir,
        "--eval-dir", eval_dir, "--output", out, "--no-embedding-cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "traffic: 60 labelled prompts" in result.output
    # The user's own prompts are kept out of the shared training rows, as benchmarks are.
    assert "alpaca_eval: dropped" in result.output and "(15 prompts)" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"default", "tiny-mf", "random", "mf cross-fit 3"}
    for values in metrics.values():
        assert {"apgr", "cpt50", "cpt80", "strong_at_95"} <= set(values)
    assert (out / "traffic.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_needs_exactly_one_of_benchmark_and_data(tmp_path: Path):
    result = invoke("eval", "--router", "random", "--output", tmp_path / "o")
    assert result.exit_code == 2 and "exactly one of --benchmark and --data" in result.output


def test_train_reads_outcome_tables_and_checks_share_alike_rows(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    rng = np.random.default_rng(0)
    rows = [
        (f"mine/{task}/{i}", f"{task} question {i}?", task, model, float(rng.random() < p))
        for task in ("open", "shared")
        for i in range(30)
        for model, p in (("gpt-4-1106-preview", 0.9), ("Mixtral-8x7B-Instruct-v0.1", 0.5))
    ]
    table = pd.DataFrame(rows, columns=["id", "prompt", "task", "model", "score"])
    table.to_parquet(train_dir / "my_table.parquet")
    (train_dir / "my_table.parquet.source.json").write_text(
        json.dumps({"licence": {"repository": "MIT", "shared": "questions: CC-BY-SA-4.0"}})
    )
    out = tmp_path / "router"
    result = invoke(
        "train", "--kind", "quality_gap", "--train-dir", train_dir, "--eval-dir", eval_dir,
        "--output", out, "--no-embedding-cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["training"]["sources"]["my_table"] == 30  # the share-alike half is not in it
    assert meta["training"]["licences"]["my_table"] == "MIT"
    assert list(meta["training"]["not_trained_on"]) == ["my_table/shared"]
    assert list(meta["transfer_checks"]) == ["my_table/shared"]
    assert "transfer check my_table/shared: APGR" in result.output
    card = (out / "README.md").read_text()
    assert "| my_table | 30 | MIT |" in card and "my_table/shared: share-alike" in card


def test_train_on_named_sources_only(tmp_path: Path):
    train_dir, eval_dir = _training_dirs(tmp_path)
    common = ["--train-dir", train_dir, "--eval-dir", eval_dir, "--no-embedding-cache"]
    out = tmp_path / "router"
    result = invoke(
        "train", "--kind", "mf", *common, "--output", out,
        "--source", "arena_hard", "--source", "mmlu_pro",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert set(meta["training"]["sources"]) == {"arena_hard", "mmlu_pro"}
    result = invoke("train", "--kind", "mf", *common, "--output", out, "--source", "arena")
    assert result.exit_code != 0
    assert "no training source named arena" in result.output
    assert "alpaca_eval, arena_hard, mmlu_pro" in result.output
