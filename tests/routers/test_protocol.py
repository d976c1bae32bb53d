"""The router contract every kind shares: load options, training options and their one error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import routers
from routers import router_path
from routers.checkpoint import WEIGHTS_FILE, load_router, read_config
from routers.evaluation.cross_fit import cross_fit_scores
from routers.kinds.mf import MFRouter
from routers.kinds.random_router import RandomRouter
from routers.protocol import BaseRouter, LoadOptions, OptionError
from routers.registry import ROUTERS, router_class

# What each kind accepts at load time; a change here is a change of the public contract.
LOAD_OPTIONS = {
    "random": ["seed"],
    "mf": ["strong_model", "weak_model"],
    "sw_ranking": [
        "strong_model",
        "weak_model",
        "l2",
        "weight_base",
        "weight_scale",
        "max_iter",
        "tol",
        "chunk_size",
    ],
    "bert": ["device", "bf16", "batch_tokens", "max_batch_size", "strong_model", "weak_model"],
    "causal_llm": ["base_model", "device", "dtype", "batch_size", "strong_model", "weak_model"],
    "quality_gap": ["strong_model", "weak_model"],
    "distilled": ["strong_model", "weak_model"],
    "multi": ["models", "device"],
}


class OptionFree(BaseRouter):
    """A kind that takes no load options and no training options."""

    kind = "option_free"

    def score(self, prompts):
        return np.zeros(len(prompts))

    def config(self):
        return {}

    @classmethod
    def from_checkpoint(cls, config, tensors, options: LoadOptions) -> OptionFree:
        return cls()

    @classmethod
    def train(cls, table: pd.DataFrame, *, seed: int = 0) -> OptionFree:
        return cls()


def test_every_registered_kind_declares_its_load_options():
    assert set(LOAD_OPTIONS) == set(ROUTERS)
    for kind, names in LOAD_OPTIONS.items():
        assert list(router_class(kind).load_options.model_fields) == names


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_an_unknown_load_option_is_the_same_error_for_every_kind(kind):
    cls = router_class(kind)
    expected = (
        f"router kind '{kind}' has no load option 'temperature'; "
        f"it takes: {', '.join(LOAD_OPTIONS[kind])}"
    )
    with pytest.raises(OptionError) as info:
        cls.parse_load_options({"temperature": 0.5})
    assert str(info.value) == expected
    assert isinstance(info.value, ValueError)


def test_several_unknown_options_and_a_kind_without_options():
    with pytest.raises(OptionError, match=r"has no load options 'a', 'b'; it takes: seed$"):
        RandomRouter.parse_load_options({"a": 1, "b": 2})
    with pytest.raises(OptionError, match=r"^router kind 'option_free' has no load option 'x'; "):
        OptionFree.parse_load_options({"x": 1})
    with pytest.raises(OptionError, match=r"it takes no load options$"):
        OptionFree.parse_load_options({"x": 1})


def test_none_means_not_given():
    options = router_class("bert").parse_load_options({"device": None, "bf16": None})
    assert options.device is None and options.bf16 is False
    assert router_class("mf").parse_load_options({"temperature": None}).model_dump() == {
        "strong_model": None,
        "weak_model": None,
    }


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("sw_ranking", {"l2": 0.0}, "cannot use load option l2=0.0: l2 must be > 0"),
        ("sw_ranking", {"max_iter": "many"}, "cannot use load option max_iter='many'"),
        ("bert", {"device": "gpu0"}, "cannot use load option device='gpu0'"),
        ("bert", {"batch_tokens": 0}, "cannot use load option batch_tokens=0"),
        ("causal_llm", {"dtype": "int8"}, "cannot use load option dtype='int8': unknown dtype"),
        ("random", {"seed": "abc"}, "cannot use load option seed='abc'"),
    ],
)
def test_a_bad_value_is_an_option_error(kind, options, message):
    with pytest.raises(OptionError, match=f"^router kind '{kind}' " + re.escape(message)):
        router_class(kind).parse_load_options(options)


def test_good_values_are_read_as_their_types():
    import torch

    bert = router_class("bert").parse_load_options(
        {"device": torch.device("cpu"), "bf16": "true", "batch_tokens": "4096"}
    )
    assert (bert.device, bert.bf16, bert.batch_tokens) == ("cpu", True, 4096)
    causal = router_class("causal_llm").parse_load_options({"dtype": torch.bfloat16})
    assert causal.dtype == "bfloat16"


def test_load_router_checks_options_before_reading_weights(tmp_path):
    directory = Path(shutil.copytree(router_path("minilm"), tmp_path / "qg"))
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(OptionError, match="router kind 'quality_gap' has no load option 'foo'"):
        load_router(directory, foo=1)


def test_quality_gap_refuses_another_pair_and_accepts_its_own():
    pair = read_config(router_path("minilm"))["config"]
    with pytest.raises(OptionError) as info:
        load_router(router_path("minilm"), strong_model="claude-3-opus")
    message = str(info.value)
    assert message.startswith(
        "router kind 'quality_gap' cannot use load option strong_model='claude-3-opus'"
    )
    assert "trained for one pair" in message and "retrain it" in message
    # The trained pair itself, in any spelling, is fine.
    spelled = pair["strong_model"].upper().replace("-", "_")
    router = load_router(router_path("minilm"), strong_model=spelled, weak_model=None)
    assert (router.strong_model, router.weak_model) == (pair["strong_model"], pair["weak_model"])


def test_train_option_names_come_from_the_signature():
    names = MFRouter.train_option_names()
    assert "seed" not in names and "battles" not in names and "table" not in names
    assert names[:3] == ["embedder", "dims", "weight_decays"]
    assert RandomRouter.train_option_names() == []
    for kind in ROUTERS:
        assert "log" not in router_class(kind).train_option_names()
        assert "show_progress" not in router_class(kind).train_option_names()


def test_check_train_options():
    MFRouter.check_train_options({"dims": (8,), "lr": 0.1})
    with pytest.raises(OptionError) as info:
        MFRouter.check_train_options({"lr": 0.1, "epochs": 3})
    assert str(info.value) == (
        "router kind 'mf' has no training option 'epochs'; it takes: "
        + ", ".join(MFRouter.train_option_names())
    )
    with pytest.raises(OptionError, match="'random' has no training options 'a', 'b'; it takes no"):
        RandomRouter.check_train_options({"a": 1, "b": 2})


def test_an_unknown_training_option_stops_cross_fitting_before_training():
    benchmark = pd.DataFrame(
        {"prompt": [f"q{i}" for i in range(6)], "weak_score": 0.0, "strong_score": 1.0}
    )
    training = pd.DataFrame(columns=["prompt", "model_a", "model_b", "winner", "source", "weight"])
    with pytest.raises(OptionError, match="'random' has no training option 'epochs'"):
        cross_fit_scores(RandomRouter, benchmark, "bench", training, folds=2, epochs=3)
    scores = cross_fit_scores(RandomRouter, benchmark, "bench", training, folds=2)
    assert scores.shape == (6,) and np.isfinite(scores).all()


def test_the_package_surface():
    for name in [
        "Router",
        "BaseRouter",
        "LoadOptions",
        "OptionError",
        "route",
        "load_router",
        "save_router",
        "read_config",
        "CheckpointError",
        "default_router_dir",
        "router_class",
        "ROUTERS",
        "prompt_error",
        "score_table",
        "Prices",
        "ModelPrice",
        "estimate_tokens",
    ]:
        assert name in routers.__all__ and hasattr(routers, name)


def test_importing_the_package_loads_no_model_library():
    import subprocess
    import sys

    code = (
        "import sys, routers; "
        "print(sorted(m for m in ('transformers', 'sentence_transformers', 'peft') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
