"""Battle tables from tiny stand-ins for the three training sources (never ../shared/data)."""

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routers.data.battles import (
    BATTLE_COLUMNS,
    alpaca_battles,
    arena_battles,
    load_battles,
    mmlu_pro_battles,
)
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL, model_class, normalize_model_name
from routers.data.sources import (
    ALPACA_FILE,
    ARENA_FILE,
    MMLU_PRO_FILE,
    decontaminate,
    fold_text,
)

# --- model names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gpt4_1106_preview", "gpt-4-1106-preview"),
        ("gpt-4-1106-preview", "gpt-4-1106-preview"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct-v0.1"),
        ("Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct-v0.1"),
        ("Meta-Llama-3_1-70B-Instruct", "llama-3.1-70b-instruct"),
        ("Meta-Llama-3.1-405B-Instruct@hyperbolic", "llama-3.1-405b-instruct"),
        ("TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF", "mixtral-8x7b-instruct-v0.1"),
        ("TheBloke/Llama-2-70B-Chat-GGUF", "llama-2-70b-chat"),
        ("Qwen__Qwen2.5-72B-Instruct", "qwen2.5-72b-instruct"),
        ("llama2orig", "llama-2-70b-chat"),
        ("gpt4", "gpt-4-0613"),
        ("gpt35_turbo_instruct", "gpt-3.5-turbo-instruct"),
        ("gpt4_0314", "gpt-4-0314"),
        ("  GPT-4-1106-Preview ", "gpt-4-1106-preview"),
    ],
)
def test_normalize_model_name(raw, expected):
    assert normalize_model_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gpt4_1106_preview", "strong"),
        ("gpt-4-turbo-2024-04-09", "strong"),
        ("gpt4", "strong"),
        ("gpt-4o-2024-05-13", None),
        ("TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF", "weak"),
        ("llama2new", "weak"),
        ("mistralai/Mistral-7B-Instruct-v0.2", None),
        ("Nous-Hermes-2-Mixtral-8x7B-SFT-GGUF", None),
    ],
)
def test_model_class_is_one_rule_over_every_spelling(raw, expected):
    assert model_class(raw) == expected


def test_routed_pair_constants_are_normal_forms():
    # The defaults must be fixed points, or a router trained on normalised names could not
    # find its own pair.
    assert normalize_model_name(STRONG_MODEL) == STRONG_MODEL
    assert normalize_model_name(WEAK_MODEL) == WEAK_MODEL


def test_fold_text():
    assert fold_text("  What IS\n\tthe  Answer? ") == "what is the answer?"
    assert fold_text("Straße") == fold_text("STRASSE")  # casefold, not lower


# --- tiny sources -----------------------------------------------------------------------------


def write_alpaca(data_dir: Path) -> None:
    pd.DataFrame(
        {
            "prompt": ["p-alpaca-1", "p-alpaca-1", "p-alpaca-2", "p-alpaca-3", "p-alpaca-4"],
            "subset": ["helpful_base"] * 5,
            "model_a": ["gpt4_1106_preview"] * 5,
            "model_b": [
                "Mixtral-8x7B-Instruct-v0.1",
                "gpt35_turbo_instruct",
                "Mixtral-8x7B-Instruct-v0.1",
                "Mixtral-8x7B-Instruct-v0.1",
                "Mixtral-8x7B-Instruct-v0.1",
            ],
            "preference": [1.0, 2.0, 1.5, None, 1.0],
            "annotator": ["weighted_alpaca_eval_gpt4_turbo"] * 5,
            "winner": ["model_a", "model_b", "tie", None, "model_a"],
        }
    ).to_parquet(data_dir / ALPACA_FILE)


def write_arena(data_dir: Path) -> None:
    pd.DataFrame(
        {
            # q1: three models -> 3 battles. q2: two models with equal scores -> a tie.
            # q3: one model only -> no battle. q4: a null score is left out -> no battle.
            "question_id": ["q1", "q1", "q1", "q2", "q2", "q3", "q4", "q4"],
            "model": [
                "gpt-4-1106-preview",
                "mistralai/Mixtral-8x7B-Instruct-v0.1",
                "claude-2.1",
                "gpt-4-1106-preview",
                "claude-2.1",
                "claude-2.1",
                "claude-2.1",
                "gpt-4-1106-preview",
            ],
            "score": [9.0, 4.0, 7.0, 6.0, 6.0, 5.0, 8.0, None],
            "prompt": ["p-arena-1"] * 3 + ["p-arena-2"] * 2 + ["p-arena-3"] + ["p-arena-4"] * 2,
        }
    ).to_parquet(data_dir / ARENA_FILE)


def write_mmlu_pro(data_dir: Path) -> None:
    table = pa.table(
        {
            "question_id": pa.array([1, 2, 3, 4], pa.int64()),
            "src": ["ori_mmlu-high_school_physics", "stemez-Physics", "theoremQA-Math", "scibench"],
            "question": ["q-derived", "q-pro-1", "q-pro-2", "q-pro-3"],
            "prompt": ["p-mmlu-derived", "p-pro-1", "p-pro-2", "p-pro-3"],
            "from_original_mmlu": [True, False, False, False],
            # Bool columns with nulls, as pyarrow writes them.
            "correct__gpt-4o-2024-05-13": pa.array([True, True, True, True]),
            "correct__Mixtral-8x7B-Instruct-v0.1": pa.array([False, False, True, None]),
            "correct__Meta-Llama-3_1-70B-Instruct": pa.array([True, None, True, False]),
        }
    )
    pq.write_table(table, data_dir / MMLU_PRO_FILE)


def write_eval(eval_dir: Path, mt_bench_prompt: str = "Unrelated MT Bench question?") -> None:
    eval_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "prompt": [mt_bench_prompt, "Another MT Bench prompt."],
            "prompt_turn2": ["Now  REWRITE it as a poem.", None],
        }
    ).to_parquet(eval_dir / "mt_bench.parquet")
    pd.DataFrame({"prompt": ["An MMLU question?"]}).to_parquet(eval_dir / "mmlu.parquet")
    pd.DataFrame({"prompt": ["A GSM8K question?"]}).to_parquet(eval_dir / "gsm8k.parquet")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "train"
    d.mkdir()
    write_alpaca(d)
    write_arena(d)
    write_mmlu_pro(d)
    return d


def as_set(battles: pd.DataFrame) -> set[tuple]:
    return set(battles[["prompt", "model_a", "model_b", "winner"]].itertuples(index=False))


GPT4, MIXTRAL = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
CLAUDE, GPT35 = "claude-2.1", "gpt-3.5-turbo-instruct"
GPT4O, LLAMA = "gpt-4o-2024-05-13", "llama-3.1-70b-instruct"


def test_alpaca_battles(data_dir):
    battles = alpaca_battles(data_dir)
    assert list(battles.columns) == BATTLE_COLUMNS
    # The row with no winner is dropped; names are normalised; winners map to a / b / tie.
    assert as_set(battles) == {
        ("p-alpaca-1", GPT4, MIXTRAL, "a"),
        ("p-alpaca-1", GPT4, GPT35, "b"),
        ("p-alpaca-2", GPT4, MIXTRAL, "tie"),
        ("p-alpaca-4", GPT4, MIXTRAL, "a"),
    }
    assert len(battles) == 4
    assert (battles["source"] == "alpaca_eval").all()
    assert (battles["weight"] == 1.0).all()


def test_arena_battles(data_dir):
    battles = arena_battles(data_dir, np.random.default_rng(0))
    assert list(battles.columns) == BATTLE_COLUMNS
    assert len(battles) == 4

    def outcome(prompt, x, y):
        """Winner of x vs y whichever side each is on, as 'x', 'y' or 'tie'."""
        row = battles[
            (battles["prompt"] == prompt)
            & (battles[["model_a", "model_b"]].apply(set, axis=1) == {x, y})
        ]
        assert len(row) == 1, (prompt, x, y)
        a, w = row["model_a"].iloc[0], row["winner"].iloc[0]
        if w == "tie":
            return "tie"
        return "x" if (w == "a") == (a == x) else "y"

    # q1: scores gpt-4 9 > claude 7 > mixtral 4.
    assert outcome("p-arena-1", GPT4, MIXTRAL) == "x"
    assert outcome("p-arena-1", GPT4, CLAUDE) == "x"
    assert outcome("p-arena-1", CLAUDE, MIXTRAL) == "x"
    assert outcome("p-arena-2", GPT4, CLAUDE) == "tie"
    assert set(battles["prompt"]) == {"p-arena-1", "p-arena-2"}
    assert (battles["source"] == "arena_hard").all()


def test_mmlu_pro_battles(data_dir):
    battles, derived = mmlu_pro_battles(data_dir, np.random.default_rng(0), None)
    assert derived == 1
    assert "p-mmlu-derived" not in set(battles["prompt"])
    assert list(battles.columns) == BATTLE_COLUMNS
    assert as_set(battles) == {
        # q2: gpt-4o right, mixtral wrong, llama null (skipped).
        ("p-pro-1", GPT4O, MIXTRAL, "a"),
        # q3: all three right -> ties.
        ("p-pro-2", GPT4O, MIXTRAL, "tie"),
        ("p-pro-2", GPT4O, LLAMA, "tie"),
        ("p-pro-2", MIXTRAL, LLAMA, "tie"),
        # q4: mixtral null (skipped), gpt-4o right, llama wrong.
        ("p-pro-3", GPT4O, LLAMA, "a"),
    }
    assert len(battles) == 5
    assert (battles["source"] == "mmlu_pro").all()


def test_mmlu_pro_src_prefix_alone_marks_derived(tmp_path):
    # A question whose flag says False but whose src says ori_mmlu is still MMLU-derived.
    pq.write_table(
        pa.table(
            {
                "question_id": [1, 2],
                "src": ["ori_mmlu-anatomy", "stemez-Biology"],
                "question": ["a", "b"],
                "prompt": ["derived", "kept"],
                "from_original_mmlu": [False, False],
                "correct__m1": [True, True],
                "correct__m2": [False, False],
            }
        ),
        tmp_path / MMLU_PRO_FILE,
    )
    battles, derived = mmlu_pro_battles(tmp_path, np.random.default_rng(0), None)
    assert derived == 1
    assert set(battles["prompt"]) == {"kept"}


def test_mmlu_pro_max_pairs_per_question(tmp_path):
    models = [f"correct__m{i}" for i in range(6)]  # 15 pairs per question
    pq.write_table(
        pa.table(
            {
                "question_id": [1, 2],
                "src": ["stemez-a", "stemez-b"],
                "question": ["a", "b"],
                "prompt": ["pa", "pb"],
                "from_original_mmlu": [False, False],
                **{m: [i % 2 == 0, i % 3 == 0] for i, m in enumerate(models)},
            }
        ),
        tmp_path / MMLU_PRO_FILE,
    )
    battles, _ = mmlu_pro_battles(tmp_path, np.random.default_rng(0), 4)
    assert battles.groupby("prompt").size().to_dict() == {"pa": 4, "pb": 4}
    all_battles, _ = mmlu_pro_battles(tmp_path, np.random.default_rng(0), None)
    assert len(all_battles) == 30
    assert as_set(battles) <= as_set(all_battles)


# --- load_battles -----------------------------------------------------------------------------


def test_load_battles_all_sources(data_dir, caplog):
    caplog.set_level(logging.INFO, logger="routers")
    battles = load_battles(data_dir)
    assert list(battles.columns) == BATTLE_COLUMNS
    assert battles["source"].value_counts().to_dict() == {
        "alpaca_eval": 4,
        "arena_hard": 4,
        "mmlu_pro": 5,
    }
    assert "left out 1 MMLU-derived" in caplog.text
    assert set(battles["winner"]) <= {"a", "b", "tie"}


def test_load_battles_subset_of_sources(data_dir):
    battles = load_battles(data_dir, sources=["arena_hard"])
    assert set(battles["source"]) == {"arena_hard"}


def test_unknown_source_is_an_error(data_dir):
    with pytest.raises(ValueError, match="reddit"):
        load_battles(data_dir, sources=["alpaca_eval", "reddit"])


def test_decontamination_drops_folded_matches_and_logs_counts(data_dir, tmp_path, caplog):
    # Make one alpaca prompt (2 battles) and one arena prompt (3 battles) equal eval prompts up
    # to whitespace and case, and one alpaca prompt equal an MT Bench second turn.
    alpaca = pd.read_parquet(data_dir / ALPACA_FILE)
    alpaca["prompt"] = alpaca["prompt"].replace(
        {
            "p-alpaca-1": "What is  the CAPITAL\nof France?",
            "p-alpaca-4": "now rewrite it as a poem.",
        }
    )
    alpaca.to_parquet(data_dir / ALPACA_FILE)
    arena = pd.read_parquet(data_dir / ARENA_FILE)
    arena["prompt"] = arena["prompt"].replace({"p-arena-1": "  an mmlu QUESTION? "})
    arena.to_parquet(data_dir / ARENA_FILE)
    eval_dir = tmp_path / "eval"
    write_eval(eval_dir, mt_bench_prompt="what is the capital of france?")

    caplog.set_level(logging.INFO, logger="routers")
    battles = load_battles(data_dir, eval_dir)
    lines = caplog.messages
    kept = set(battles["prompt"])
    assert "What is  the CAPITAL\nof France?" not in kept
    assert "now rewrite it as a poem." not in kept
    assert "  an mmlu QUESTION? " not in kept
    assert battles["source"].value_counts().to_dict() == {
        "alpaca_eval": 1,
        "arena_hard": 1,
        "mmlu_pro": 5,
    }
    assert battles.index.tolist() == list(range(len(battles)))
    assert "decontamination: alpaca_eval: dropped 3 battles (2 prompts)" in lines
    assert "decontamination: arena_hard: dropped 3 battles (1 prompts)" in lines
    assert "decontamination: mmlu_pro: dropped 0 battles (0 prompts)" in lines


def test_decontaminate_keeps_near_misses(tmp_path, caplog):
    eval_dir = tmp_path / "eval"
    write_eval(eval_dir)
    battles = pd.DataFrame(
        {
            "prompt": ["An MMLU question", "An MMLU question?!", "A GSM8K  question?"],
            "model_a": ["x"] * 3,
            "model_b": ["y"] * 3,
            "winner": ["a"] * 3,
            "source": ["s"] * 3,
            "weight": [1.0] * 3,
        }
    )
    caplog.set_level(logging.INFO, logger="routers")
    kept = decontaminate(battles, eval_dir)
    # Only whitespace and case are folded: punctuation differences are different prompts.
    assert kept["prompt"].tolist() == ["An MMLU question", "An MMLU question?!"]
    assert caplog.messages == ["decontamination: s: dropped 1 battles (1 prompts)"]


def test_source_weights(data_dir):
    battles = load_battles(data_dir, source_weights={"mmlu_pro": 0.25, "arena_hard": 2})
    weights = battles.groupby("source")["weight"].unique().map(list).to_dict()
    assert weights == {"alpaca_eval": [1.0], "arena_hard": [2.0], "mmlu_pro": [0.25]}


@pytest.mark.parametrize("missing", [ALPACA_FILE, ARENA_FILE, MMLU_PRO_FILE])
def test_missing_source_file(data_dir, missing):
    (data_dir / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_battles(data_dir)


def test_missing_eval_file(data_dir, tmp_path):
    eval_dir = tmp_path / "eval"
    write_eval(eval_dir)
    (eval_dir / "gsm8k.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("gsm8k.parquet")):
        load_battles(data_dir, eval_dir)


def test_missing_source_not_asked_for_is_fine(data_dir):
    (data_dir / MMLU_PRO_FILE).unlink()
    battles = load_battles(data_dir, sources=["alpaca_eval", "arena_hard"])
    assert len(battles) == 8
