"""The shipped routers read the end of a long prompt, where the question usually is."""

from __future__ import annotations

from routers import load_router, router_path
from routers.decision.probability import uncalibrated

DOCUMENT = " ".join(
    f"Section {i}. The committee reviewed the quarterly figures for region {i % 7} and noted "
    "that shipments, staffing and maintenance schedules stayed within the agreed ranges."
    for i in range(150)
)  # about 3,700 words: far past the embedder's 256-token window


def test_question_at_the_end_of_a_long_prompt_changes_the_score():
    # The raw scorer: what the window feeds; the probability curve is nearly flat in places
    # and would hide a real change under the tolerance below.
    router = uncalibrated(load_router(router_path("minilm")))
    easy_question = "Thanks! Could you say hello back?"
    hard_question = (
        "Using the figures above, derive a closed-form expression for the variance of the "
        "quarterly shipments and prove that it is minimised by an even split."
    )
    easy, hard = (f"{DOCUMENT}\n\n{q}" for q in (easy_question, hard_question))
    middle_changed = easy.replace("Section 75.", "Section seventy-five.")
    scores = router.score([easy, hard, middle_changed])
    alone = router.score([easy_question, hard_question])
    assert abs(scores[1] - scores[0]) > 1e-3, scores
    # ...and moves it the way the question alone would.
    assert (scores[1] > scores[0]) == (alone[1] > alone[0]), (scores, alone)
    # The window keeps the head and the tail; a change in the middle is not read at all.
    assert abs(scores[2] - scores[0]) < 1e-6, scores
