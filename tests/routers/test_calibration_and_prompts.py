"""Threshold calibration, table scoring with bad rows, prices and generated prompts."""

import numpy as np
import pyarrow as pa
import pytest

from routeray.demo.prompts import generate_prompts
from routers.evaluation.calibration import strong_share, threshold_for_strong_share
from routers.kinds.random_router import RandomRouter
from routers.prices import ModelPrice, Prices, estimate_tokens
from routers.prompts import ERROR_COLUMN, SCORE_COLUMN, prompt_error, score_table

# --- calibration ------------------------------------------------------------------------------


@pytest.mark.parametrize("pct", [0.05, 0.1, 0.25, 0.5, 0.7, 0.95])
def test_threshold_gives_exact_share_on_distinct_scores(pct):
    scores = np.random.default_rng(0).permutation(np.linspace(0.01, 0.99, 20))
    t = threshold_for_strong_share(scores, pct)
    assert int((scores >= t).sum()) == round(pct * 20)
    assert strong_share(scores, t) == pytest.approx(pct)
    # The threshold is one of the scores (the k-th largest), so it is stable under `>=`.
    assert t in scores


def test_threshold_zero_sends_nobody_strong():
    scores = np.array([0.2, 0.9, 0.4, 1.0, 0.0])
    t = threshold_for_strong_share(scores, 0.0)
    assert t > scores.max()
    assert not (scores >= t).any()
    assert strong_share(scores, t) == 0.0


def test_threshold_one_sends_everyone_strong():
    scores = np.array([0.2, 0.9, 0.4, 1.0, 0.0])
    t = threshold_for_strong_share(scores, 1.0)
    assert t == 0.0
    assert (scores >= t).all()


def test_threshold_ignores_non_finite_scores():
    scores = np.array([0.1, np.nan, 0.3, 0.2, np.nan, 0.4])
    # Four finite scores: half of them strong means the top two.
    assert threshold_for_strong_share(scores, 0.5) == 0.3


def test_threshold_with_ties_is_as_near_as_ties_allow():
    scores = np.array([0.5, 0.5, 0.5, 0.5, 0.1, 0.9])
    t = threshold_for_strong_share(scores, 0.5)  # k = 3, but 0.5 is shared by four
    assert t == 0.5
    assert strong_share(scores, t) == pytest.approx(5 / 6)


@pytest.mark.parametrize("pct", [-0.01, 1.5, 50, float("nan")])
def test_threshold_invalid_pct(pct):
    with pytest.raises(ValueError, match="strong share must be a fraction"):
        threshold_for_strong_share(np.array([0.1, 0.2]), pct)


@pytest.mark.parametrize("scores", [np.array([]), np.array([np.nan, np.nan])])
def test_threshold_no_scores(scores):
    with pytest.raises(ValueError, match="zero scored prompts"):
        threshold_for_strong_share(scores, 0.5)


# --- score_table ------------------------------------------------------------------------------


class LengthRouter:
    """Deterministic: score = len(prompt) / 1000. Records what it was asked to score."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def score(self, prompts):
        self.calls.append(list(prompts))
        return np.array([len(p) / 1000 for p in prompts], dtype=np.float64)


def test_score_table_bad_rows_get_null_scores_and_reasons():
    prompts = ["What is 2+2?", None, "", "   \n\t", "x" * 51, "Write a poem.", "y" * 50]
    table = pa.table({"id": list(range(7)), "prompt": prompts})
    router = LengthRouter()
    out = score_table(router, table, max_chars=50)

    assert out.column_names == ["id", "prompt", SCORE_COLUMN, ERROR_COLUMN]
    assert out.column("id").to_pylist() == list(range(7))
    assert out.column("prompt").to_pylist() == prompts
    # The router sees only the good prompts, in table order, in one call.
    assert router.calls == [["What is 2+2?", "Write a poem.", "y" * 50]]
    scores = out.column(SCORE_COLUMN).to_pylist()
    assert scores == [0.012, None, None, None, None, 0.013, 0.05]
    assert out.schema.field(SCORE_COLUMN).type == pa.float64()
    errors = out.column(ERROR_COLUMN).to_pylist()
    assert errors[0] is None and errors[5] is None and errors[6] is None
    assert errors[1] == "prompt is null"
    assert errors[2] == errors[3] == "prompt is empty"
    assert "too long" in errors[4] and "51" in errors[4] and "50" in errors[4]


def test_score_table_default_size_limit():
    table = pa.table({"prompt": ["ok", "z" * 200_001]})
    out = score_table(LengthRouter(), table)
    assert out.column(SCORE_COLUMN).to_pylist() == [0.002, None]
    assert "too long" in out.column(ERROR_COLUMN)[1].as_py()


def test_score_table_large_string_column():
    table = pa.table({"prompt": pa.array(["abc", None], pa.large_string())})
    out = score_table(LengthRouter(), table)
    assert out.column(SCORE_COLUMN).to_pylist() == [0.003, None]
    assert out.column(ERROR_COLUMN).to_pylist() == [None, "prompt is null"]


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1, None, 3], pa.int64()),
        pa.array([{"text": "hi"}, None, {"text": "yo"}]),
        pa.array([["a", "b"], None, []]),
    ],
    ids=["int", "struct", "list"],
)
def test_score_table_non_string_column(column):
    router = LengthRouter()
    out = score_table(router, pa.table({"prompt": column}))
    assert out.column(SCORE_COLUMN).to_pylist() == [None, None, None]
    errors = out.column(ERROR_COLUMN).to_pylist()
    assert errors[1] == "prompt is null"
    assert errors[0].startswith("prompt is not a string") and errors[0] == errors[2]
    assert str(column.type) in errors[0]
    assert router.calls == []  # nothing routable, so the router is never called


def test_prompt_error_non_string_values():
    assert prompt_error(42) == "prompt is not a string (got int)"
    assert prompt_error({"text": "hi"}) == "prompt is not a string (got dict)"
    assert prompt_error(["hi"]) == "prompt is not a string (got list)"
    assert prompt_error("fine") is None


def test_score_table_with_random_router_replaces_old_columns():
    table = pa.table(
        {
            "prompt": ["a", None, "b", "c"],
            SCORE_COLUMN: [9.0, 9.0, 9.0, 9.0],
            ERROR_COLUMN: ["old", "old", "old", "old"],
        }
    )
    out = score_table(RandomRouter(seed=3), table)
    assert out.column_names == ["prompt", SCORE_COLUMN, ERROR_COLUMN]
    scores = out.column(SCORE_COLUMN).to_pylist()
    expected = RandomRouter(seed=3).score(["a", "b", "c"])
    assert scores[1] is None
    assert [scores[0], scores[2], scores[3]] == pytest.approx(expected.tolist())
    assert out.column(ERROR_COLUMN).to_pylist() == [None, "prompt is null", None, None]


def test_score_table_other_prompt_column_and_missing_column():
    table = pa.table({"text": ["hello"], "user": ["u1"]})
    out = score_table(LengthRouter(), table, prompt_column="text")
    assert out.column(SCORE_COLUMN).to_pylist() == [0.005]
    with pytest.raises(KeyError, match="prompt") as info:
        score_table(LengthRouter(), table)
    assert "text" in str(info.value) and "user" in str(info.value)


def test_score_table_dictionary_encoded_strings():
    # A pandas categorical column (or a parquet file written from one) arrives as
    # dictionary<values=string>: its values are strings and must be scored like any others.
    table = pa.table({"prompt": pa.array(["hi", "hello", "hi", None]).dictionary_encode()})
    assert pa.types.is_dictionary(table.schema.field("prompt").type)
    out = score_table(LengthRouter(), table)
    assert out.column(SCORE_COLUMN).to_pylist() == [0.002, 0.005, 0.002, None]
    assert out.column(ERROR_COLUMN).to_pylist() == [None, None, None, "prompt is null"]


def test_score_table_empty_table():
    table = pa.table({"prompt": pa.array([], pa.string())})
    out = score_table(LengthRouter(), table)
    assert out.num_rows == 0
    assert out.column_names == ["prompt", SCORE_COLUMN, ERROR_COLUMN]


# --- costs ------------------------------------------------------------------------------------


def test_model_price_cost_by_hand():
    price = ModelPrice(input_per_million=10.0, output_per_million=30.0, mean_output_tokens=200)
    # (1000 * 10 + 500 * 30) / 1e6 = 0.025 ; (3000 * 10 + 500 * 30) / 1e6 = 0.045
    np.testing.assert_allclose(price.cost(np.array([1000, 3000]), 500), [0.025, 0.045])
    # Per-prompt output tokens.
    np.testing.assert_allclose(
        price.cost(np.array([1000, 3000]), np.array([100, 0])), [0.013, 0.030]
    )
    # No output tokens given: the mean, 200 -> (1000 * 10 + 200 * 30) / 1e6 = 0.016
    np.testing.assert_allclose(price.cost(np.array([1000])), [0.016])


def test_default_prices():
    prices = Prices()
    assert prices.strong.input_per_million == 10.0 and prices.strong.output_per_million == 30.0
    assert prices.weak.input_per_million == 0.6 and prices.weak.output_per_million == 0.6
    # One million input tokens and the default 300 output tokens.
    assert float(prices.strong.cost(np.array([1_000_000]))[0]) == pytest.approx(10.009)
    assert float(prices.weak.cost(np.array([1_000_000]))[0]) == pytest.approx(0.60018)


def test_negative_price_rejected():
    with pytest.raises(ValueError):
        ModelPrice(input_per_million=-1.0, output_per_million=1.0)


def test_prices_from_yaml(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(
        "strong:\n"
        "  input_per_million: 5\n"
        "  output_per_million: 15\n"
        "  mean_output_tokens: 100\n"
        "weak:\n"
        "  input_per_million: 0.2\n"
        "  output_per_million: 0.4\n"
    )
    prices = Prices.from_yaml(path)
    assert prices.strong == ModelPrice(
        input_per_million=5, output_per_million=15, mean_output_tokens=100
    )
    assert prices.weak.mean_output_tokens == 300.0
    # (2000 * 5 + 100 * 15) / 1e6 ; (2000 * 0.2 + 300 * 0.4) / 1e6
    assert float(prices.strong.cost(np.array([2000]))[0]) == pytest.approx(0.0115)
    assert float(prices.weak.cost(np.array([2000]))[0]) == pytest.approx(0.00052)


def test_prices_from_yaml_partial_and_empty(tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("weak:\n  input_per_million: 1\n  output_per_million: 2\n")
    prices = Prices.from_yaml(partial)
    assert prices.strong == Prices().strong
    assert prices.weak.output_per_million == 2.0
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert Prices.from_yaml(empty) == Prices()
    bad = tmp_path / "bad.yaml"
    bad.write_text("strong:\n  input_per_million: -3\n  output_per_million: 1\n")
    with pytest.raises(ValueError):
        Prices.from_yaml(bad)


def test_estimate_tokens():
    tokens = estimate_tokens(["", "abc", "a" * 400, None])
    assert tokens.tolist() == [1, 1, 100, 0]


# --- generated prompts ------------------------------------------------------------------------


def test_generate_prompts_reproducible_per_seed():
    a = generate_prompts(50, seed=1)
    assert a == generate_prompts(50, seed=1)
    assert a != generate_prompts(50, seed=2)
    assert len(a) == 50
    assert all(isinstance(p, str) and p.strip() for p in a)
    assert generate_prompts(0) == []


def test_generate_prompts_mixed_lengths_and_kinds():
    prompts = generate_prompts(200, seed=0)
    words = np.array([len(p.split()) for p in prompts])
    assert words.min() <= 10  # chit-chat
    assert words.max() >= 200  # long context
    assert 5 < len(set(prompts)) <= 200
    assert any("step by step" in p for p in prompts)  # maths
    assert any("function" in p for p in prompts)  # code
    assert any("meeting notes" in p for p in prompts)  # long context
