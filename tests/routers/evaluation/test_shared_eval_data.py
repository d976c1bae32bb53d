"""Checks against the real eval data in ../shared/data (README numbers, random baseline)."""

from pathlib import Path

import pytest

from routers.evaluation.benchmarks import load_benchmark
from routers.evaluation.metrics import evaluate_random

pytestmark = pytest.mark.shared_data

# rows after decontamination, weak mean, strong mean (README; the means are over the kept rows)
EXPECTED = {
    "mmlu": (14037, 0.6809, 0.8059),
    "gsm8k": (1307, 0.6373, 0.8577),
    "mt-bench": (72, 8.281, 9.212),
}


@pytest.fixture(scope="module")
def data_dir(shared_data_dir: Path) -> Path:
    return shared_data_dir


@pytest.mark.parametrize("name", list(EXPECTED))
def test_decontaminated_sizes_and_means(data_dir: Path, name: str):
    rows, weak, strong = EXPECTED[name]
    df = load_benchmark(name, data_dir / "eval")
    assert len(df) == rows
    assert df["id"].is_unique
    # Half of the README's last digit (0.01 % / 0.001 points): a looser band would also accept
    # the MMLU means over all 14042 rows (68.08 % / 80.58 %), which the README does not mean.
    tol = 0.0005 if name == "mt-bench" else 0.00005
    assert df["weak_score"].mean() == pytest.approx(weak, abs=tol)
    assert df["strong_score"].mean() == pytest.approx(strong, abs=tol)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_random_router_apgr_is_one_half(data_dir: Path, name: str):
    df = load_benchmark(name, data_dir / "eval")
    # With only 72 MT Bench prompts the paper's 10-run mean has sd ~0.021 (0.03 fails for ~13 %
    # of seeds); 100 runs bring it to ~0.007. MMLU/GSM8K: sd 0.003 / 0.007 with 10 runs.
    runs = 100 if name == "mt-bench" else 10
    _, m = evaluate_random(df["weak_score"].to_numpy(), df["strong_score"].to_numpy(), runs=runs)
    assert m.apgr == pytest.approx(0.5, abs=0.03)
