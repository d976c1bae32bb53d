"""Outcome tables: found by their columns, turned into strong-vs-weak labels by the class rule
(with the ability scale standing in a missing class), share-alike rows kept out of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from routers.card import CARD_FILE
from routers.data.ability import fit_ability
from routers.data.outcome_tables import find_outcome_tables, is_share_alike
from routers.data.prompt_labels import (
    LABEL_COLUMNS,
    licences_of,
    load_prompt_labels,
    outcome_table_labels,
    source_licences,
    transfer_checks,
)
from tests.routers.data.test_battles import write_alpaca, write_arena, write_mmlu_pro

# Abilities the generated tables follow: weak-class Mixtral and its stand-in "mid-13b" are
# equally able; "tiny-1b" is far below, "big-70b" and GPT-4 above.
ABILITY = {
    "gpt-4-1106-preview": 2.0,
    "big-70b": 1.0,
    "TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF": 0.0,
    "mid-13b": 0.0,
    "tiny-1b": -2.0,
}


def long_table(name: str, models: list[str], items: int, tasks: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(sum(map(ord, name)))
    difficulty = rng.normal(0, 1, items)
    rows = []
    for i in range(items):
        task = tasks[i % len(tasks)]
        for m in models:
            p = 1 / (1 + np.exp(-(2 * ABILITY[m] - difficulty[i])))
            rows.append(
                (f"{name}/{task}/{i}", f"{name} prompt {i}", task, m, float(rng.random() < p))
            )
    return pd.DataFrame(rows, columns=["id", "prompt", "task", "model", "score"])


def with_inverted_family(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """`table` plus a family of 20 prompts that GPT-4 fails and every other model passes."""
    models = table["model"].unique()
    rows = [
        (f"{name}/format/{i}", f"{name} format {i}", "format", m, float(m != "gpt-4-1106-preview"))
        for i in range(20)
        for m in models
    ]
    return pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)


@pytest.fixture
def tables_dir(tmp_path: Path) -> Path:
    d = tmp_path / "train"
    d.mkdir()
    everyone = list(ABILITY)
    # A table with both classes, named like nothing the project knows.
    mine = long_table("mine", everyone, 200, ["maths", "trivia"])
    with_inverted_family(mine, "mine").to_parquet(d / "my_outcomes.parquet")
    # A table without the weak class: its stand-in must be mid-13b, not tiny-1b.
    no_weak = ["gpt-4-1106-preview", "big-70b", "mid-13b", "tiny-1b"]
    other = long_table("other", no_weak, 200, ["code"])
    with_inverted_family(other, "other").to_parquet(d / "other.parquet")
    # Share-alike questions in one task family, named in the sidecar provenance.
    long_table("ja", everyone, 60, ["free", "sa"]).to_parquet(d / "ja.parquet")
    (d / "ja.parquet.source.json").write_text(
        json.dumps({"licence": {"repository": "Apache-2.0", "sa": "questions: CC-BY-SA-4.0"}})
    )
    # Not an outcome table: no `task` column.
    pd.DataFrame({"id": ["x"], "prompt": ["x"], "model": ["m"], "score": [1.0]}).to_parquet(
        d / "not_long.parquet"
    )
    write_alpaca(d)
    write_arena(d)
    write_mmlu_pro(d)
    return d


def test_tables_are_found_by_their_columns(tables_dir):
    assert [t.name for t in find_outcome_tables(tables_dir)] == ["ja", "my_outcomes", "other"]


def test_a_score_outside_0_1_is_refused(tmp_path):
    long_table("bad", ["big-70b"], 3, ["t"]).assign(score=10.0).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="outside"):
        find_outcome_tables(tmp_path)


def test_the_class_rule_and_its_ability_fallback(tables_dir):
    tables = {t.name: t for t in find_outcome_tables(tables_dir)}
    scale = fit_ability({name: t.rows for name, t in tables.items()})
    assert scale.of("mid-13b") == pytest.approx(scale.of("mixtral-8x7b-instruct-v0.1"), abs=0.3)
    assert scale.of("tiny-1b") < scale.of("mid-13b") < scale.of("big-70b")
    mine = tables["my_outcomes"].choose_pair(scale)
    assert mine.strong == ["gpt-4-1106-preview"]
    assert mine.weak == ["TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"]  # a GGUF copy is Mixtral
    other = tables["other"].choose_pair(scale)
    assert other.strong == ["gpt-4-1106-preview"]
    assert "mid-13b" in other.weak and "tiny-1b" not in other.weak
    assert other.how["weak"].startswith("nearest in ability")
    assert other.stood_in == {"weak"} and mine.stood_in == set()


def test_labels_are_the_classes_means_with_family_labels(tables_dir):
    tables = find_outcome_tables(tables_dir)
    scale = fit_ability({t.name: t.rows for t in tables})
    labels = outcome_table_labels(tables, scale, share_alike=False)
    mine = labels[labels["source"] == "my_outcomes"]
    raw = tables[1].rows
    first = raw[raw["prompt"] == "mine prompt 0"].set_index("model")["score"]
    row = mine[mine["prompt"] == "mine prompt 0"].iloc[0]
    assert row["strong_q"] == first["gpt-4-1106-preview"]
    assert row["weak_q"] == first["TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF"]
    for task, rows in mine.groupby("task"):
        assert rows["family_gap"].nunique() == 1
        assert rows["family_gap"].iloc[0] == pytest.approx(rows["pair_gap"].mean()), task


def test_an_inverted_family_is_left_out_only_where_the_classes_are_stood_in(tables_dir):
    tables = find_outcome_tables(tables_dir)
    labels = outcome_table_labels(tables, fit_ability({t.name: t.rows for t in tables}), False)
    families = set(zip(labels["source"], labels["task"], strict=True))
    # GPT-4 and Mixtral themselves: that the strong model loses there is true, and kept.
    assert ("my_outcomes", "format") in families
    # A stood-in weak side beating GPT-4 on a whole family measures something else.
    assert ("other", "format") not in families and ("other", "code") in families


def test_share_alike_rows_are_checks_not_training(tables_dir):
    assert is_share_alike("questions: CC-BY-SA-4.0") and not is_share_alike("CC-BY-4.0")
    train = load_prompt_labels(tables_dir)
    assert list(train.columns) == LABEL_COLUMNS
    ja = train[train["source"] == "ja"]
    assert len(ja) == 30 and set(ja["task"]) == {"free"}
    assert set(train["source"]) >= {"mmlu_pro", "arena_hard", "alpaca_eval", "my_outcomes"}
    checks = transfer_checks(tables_dir)
    assert set(checks["source"]) == {"ja/sa"} and len(checks) == 30
    assert not set(checks["prompt"]) & set(train["prompt"])
    both = load_prompt_labels(tables_dir, share_alike=True)
    assert len(both) == len(train) + 30


def test_each_source_has_its_licence(tables_dir):
    licences = source_licences(tables_dir)
    assert licences["ja/sa"] == "Apache-2.0; questions: CC-BY-SA-4.0"
    assert licences["ja/free"] == "Apache-2.0"
    train = load_prompt_labels(tables_dir)
    of_table = licences_of(train, tables_dir)
    assert of_table["ja"] == "Apache-2.0"  # only the family it trained on
    assert of_table["my_outcomes"].startswith("not stated")
    assert of_table["mmlu_pro"].startswith("Apache-2.0")


def test_the_router_card_lists_sources_and_licences(tmp_path):
    from routers import save_router
    from routers.kinds.random_router import RandomRouter

    metadata = {
        "training": {
            "sources": {"ja": 30},
            "licences": {"ja": "Apache-2.0"},
            "not_trained_on": {"ja/sa": "share-alike licence"},
        },
        "transfer_checks": {"ja/sa": 0.61},
    }
    save_router(RandomRouter(seed=0), tmp_path / "r", metadata)
    card = (tmp_path / "r" / CARD_FILE).read_text()
    assert "| ja | 30 | Apache-2.0 |" in card
    assert "ja/sa: share-alike licence" in card
    assert "| ja/sa | 0.610 |" in card


def test_the_expected_gap_is_largest_between_the_two_abilities():
    from routers.data.ability import AbilityScale

    scale = AbilityScale(
        {}, {("t", "easy"): -10.0, ("t", "mid"): 0.5, ("t", "hard"): 10.0}, {"t": 1.0}
    )
    easy, mid, hard = scale.expected_gap("t", ["easy", "mid", "hard"], strong=1.0, weak=0.0)
    assert mid > 0.2 and abs(easy) < 1e-3 and abs(hard) < 1e-3


def test_item_labels_borrow_from_every_model_of_the_table(tables_dir):
    tables = find_outcome_tables(tables_dir)
    scale = fit_ability({t.name: t.rows for t in tables})
    labels = outcome_table_labels(tables, scale, share_alike=False)
    mine = labels[(labels["source"] == "my_outcomes") & (labels["task"] != "format")]
    # Items the middle models fail are where GPT-4's expected gain over Mixtral is: the item
    # label follows the difficulty all five models measured, not one pair's 0/1 outcome.
    assert mine["irt_gap"].corr(mine["mid_fail"]) > 0.5
    # One difficulty per count of models that solved the item (the fit's sufficient statistic).
    assert mine["irt_gap"].nunique() >= 4


def test_a_class_no_table_holds_is_a_clear_error(tmp_path):
    long_table("odd", ["big-70b", "tiny-1b"], 20, ["t"]).to_parquet(tmp_path / "odd.parquet")
    tables = find_outcome_tables(tmp_path)
    scale = fit_ability({t.name: t.rows for t in tables})
    with pytest.raises(ValueError, match="odd: no model of the strong class on any table"):
        tables[0].choose_pair(scale)
