"""One threshold rule for every caller: explicit, calibrated, recorded, or a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from routers.checkpoint import read_config
from routers.kinds.random_router import RandomRouter
from routers.shipped import SHIPPED, router_path
from routers.thresholds import ThresholdError, recorded_threshold, resolve_threshold


@pytest.fixture
def unrecorded(tiny_router_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny router whose config records no default threshold."""
    copy = tmp_path / "no-threshold"
    shutil.copytree(tiny_router_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["metadata"].pop("default_threshold")
    (copy / "config.json").write_text(json.dumps(config))
    return copy


class _Fixed:
    """A router whose scores are given, so the calibrated threshold is known exactly."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score(self, prompts):
        return np.array([self.scores[p] for p in prompts])


def test_explicit_threshold_wins_and_is_checked(tiny_router_dir: Path):
    assert resolve_threshold(tiny_router_dir, threshold=0.25) == 0.25
    with pytest.raises(ThresholdError, match=r"threshold must be in \[0, 1\]"):
        resolve_threshold(tiny_router_dir, threshold=1.5)
    with pytest.raises(ThresholdError, match="not both"):
        resolve_threshold(tiny_router_dir, threshold=0.2, strong_pct=0.3)


def test_recorded_threshold_is_the_default(tiny_router_dir: Path):
    assert recorded_threshold(tiny_router_dir) == 0.5
    assert resolve_threshold(tiny_router_dir) == 0.5


def test_nothing_recorded_is_an_error_not_a_silent_half(unrecorded: Path):
    assert recorded_threshold(unrecorded) is None
    with pytest.raises(ThresholdError, match="records no default threshold"):
        resolve_threshold(unrecorded)
    # An explicit threshold or a strong share still work for such a router.
    assert resolve_threshold(unrecorded, threshold=0.7) == 0.7


def test_strong_share_is_calibrated_on_usable_prompts_only(unrecorded: Path):
    router = _Fixed({"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4})
    prompts = ["a", "b", None, "c", "", "d"]
    assert resolve_threshold(unrecorded, strong_pct=0.5, router=router, prompts=prompts) == 0.3
    with pytest.raises(ThresholdError, match="none is usable"):
        resolve_threshold(unrecorded, strong_pct=0.5, router=router, prompts=[None, " "])
    with pytest.raises(ThresholdError, match="fraction"):
        resolve_threshold(unrecorded, strong_pct=2.0, router=router, prompts=["a"])
    with pytest.raises(ThresholdError, match="needs the router"):
        resolve_threshold(unrecorded, strong_pct=0.5, prompts=["a"])


def test_calibrated_share_matches_what_the_threshold_routes():
    router = RandomRouter(seed=3)
    prompts = [f"p{i}" for i in range(400)]
    scores = RandomRouter(seed=3).score(prompts)
    t = resolve_threshold(SHIPPED["default"], strong_pct=0.3, router=router, prompts=prompts)
    assert np.mean(scores >= t) == pytest.approx(0.3)


def test_shipped_names_and_directories(tmp_path: Path):
    assert router_path(None) == SHIPPED["default"]
    assert router_path("default") == SHIPPED["default"]
    assert (SHIPPED["default"] / "config.json").is_file()
    # The default is the fast tier: a student of minilm, which learns from the labels.
    assert SHIPPED["default"] == SHIPPED["fast"] != SHIPPED["minilm"]
    assert read_config(SHIPPED["fast"])["router"] == "distilled"
    assert read_config(SHIPPED["fast"])["config"]["hyperparameters"]["teacher"] == "minilm"
    assert read_config(SHIPPED["minilm"])["router"] == "quality_gap"
    assert router_path(str(tmp_path)) == tmp_path
    assert router_path("./default") == Path("default")
