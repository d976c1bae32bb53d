"""The distilled router: a static-embedding student of a teacher router (no ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from routers import ROUTERS, load_router, router_class, save_router
from routers.kinds.distilled import DistilledRouter, fit_mlp, logit
from routers.kinds.quality_gap import QualityGapRouter
from routers.protocol import OptionError
from tests.routers.kinds.test_quality_gap import EASY, HARD, SMALL_GRID, generated_labels


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    teacher = QualityGapRouter.train(generated_labels(), grid=SMALL_GRID)
    return save_router(teacher, tmp_path_factory.mktemp("teacher") / "router")


def corpus(n: int, offset: int) -> list[str]:
    return [t.format(n=i + offset) for i in range(n) for t in HARD + EASY]


@pytest.fixture(scope="module")
def student(teacher_dir: Path) -> DistilledRouter:
    return DistilledRouter.train(
        generated_labels(), teacher=str(teacher_dir), corpus=corpus(40, 1000), hidden=32
    )


def test_registered_as_one_line():
    assert ROUTERS["distilled"] == "routers.kinds.distilled:DistilledRouter"
    assert router_class("distilled") is DistilledRouter


def test_student_follows_its_teacher_on_prompts_it_never_saw(
    student: DistilledRouter, teacher_dir: Path
):
    unseen = corpus(10, 5000)
    teacher = load_router(teacher_dir)
    mine, theirs = student.score(unseen), teacher.score(unseen)
    assert ((mine > 0) & (mine < 1)).all()
    assert spearmanr(mine, theirs)[0] > 0.8
    # On the teacher's own scale: the student's logits land near the teacher's.
    assert np.abs(logit(mine) - logit(theirs)).mean() < 0.5 * logit(theirs).std() + 0.05
    hard = student.score([t.format(n=7777) for t in HARD])
    easy = student.score([t.format(n=7777) for t in EASY])
    assert hard.min() > easy.max()


def test_held_out_check_refits_the_teacher_per_source(student: DistilledRouter, teacher_dir: Path):
    hyper = student.hyperparameters
    assert hyper["corpus_prompts"] == len(set(corpus(40, 1000)))
    assert set(hyper["held_out_apgr_by_source"]) == {"quiz", "chat"}
    # The refitted teacher is exactly the one the teacher's own training judged held out.
    teacher = load_router(teacher_dir)
    own = teacher.hyperparameters["held_out_apgr_by_source"]
    for source, apgr in hyper["teacher_held_out_apgr_by_source"].items():
        assert apgr == pytest.approx(own[source], abs=1e-3)
    # The generated hard prompts are learnable: a student that saw neither source does well.
    assert min(hyper["held_out_apgr_by_source"].values()) > 0.6


def test_round_trip_keeps_scores_and_carries_the_static_table(
    student: DistilledRouter, tmp_path: Path
):
    out = save_router(student, tmp_path / "student")
    assert (out / "embedder" / "model.safetensors").is_file()
    prompts = corpus(2, 9000)
    np.testing.assert_allclose(load_router(out).score(prompts), student.score(prompts), atol=1e-6)
    assert load_router(out).score([]).shape == (0,)


def test_the_student_routes_its_teachers_pair_only(student: DistilledRouter, tmp_path: Path):
    out = save_router(student, tmp_path / "student")
    teacher = QualityGapRouter.train(generated_labels(n=3), grid=SMALL_GRID)
    assert (student.strong_model, student.weak_model) == (teacher.strong_model, teacher.weak_model)
    with pytest.raises(OptionError, match="a distilled router is trained for one pair"):
        load_router(out, strong_model="claude-3-opus")
    spelled = student.strong_model.upper().replace("-", "_")
    assert load_router(out, strong_model=spelled).strong_model == student.strong_model


def test_held_out_needs_a_refittable_teacher(tmp_path: Path):
    from routers.kinds.random_router import RandomRouter

    teacher = save_router(RandomRouter(), tmp_path / "random")
    router = DistilledRouter.train(generated_labels(n=3), teacher=str(teacher), hidden=8)
    assert router.hyperparameters["held_out"] is None


def test_mlp_fits_a_nonlinear_target_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = np.abs(x[:, 0]) - x[:, 1] ** 2
    weights, (shift, scale) = fit_mlp(x, y, hidden=32, seed=1)
    w1, b1, w2, b2 = weights
    pred = (np.maximum(x @ w1 + b1, 0) @ w2 + b2) * scale + shift
    design = np.c_[x, np.ones(len(x))]
    linear = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.corrcoef(pred, y)[0, 1] > 0.9 > np.corrcoef(linear, y)[0, 1]
    again, _ = fit_mlp(x, y, hidden=32, seed=1)
    for a, b in zip(weights, again, strict=True):
        np.testing.assert_array_equal(a, b)
