"""An LLM judge's prompts, its verdicts and the labels they make, in the training schema.

Two modes, both after MT-Bench (Zheng et al. 2023), as the RouteLLM paper labels its data:

* pairwise: the judge compares the weak and the strong answer and says [[A]], [[B]] or [[C]]
  (tie). It is asked twice, the strong answer first as A and then as B, because judges favour
  one position; each order scores the strong answer 1 (win), 0.5 (tie) or 0 (loss) and
  `strong_score` is the mean of the two, so a judge that always picks A yields a tie.
* single: the judge grades each answer alone from 1 to 10 ("Rating: [[7]]");
  `strong_score` and `weak_score` are the grades over 10. The N-model label job
  (batch_jobs.label_models) grades every model's answer this way (`single_conversation`,
  `single_score`).

A reply without exactly one verdict (none, several different ones, a grade outside 1-10) is
not guessed at: the row becomes an error row that keeps the judge's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

JudgeMode = Literal["pairwise", "single"]
JUDGE_MODES: tuple[str, ...] = ("pairwise", "single")

PAIRWISE_SYSTEM = (
    "You judge the quality of answers that AI assistants give to a user. You will see the "
    "user's question and two answers, A and B. Decide which answer serves the user better. "
    "Weigh correctness first, then how well the answer follows the request, how helpful, "
    "complete and clear it is. Which answer comes first, how long each one is and how it "
    "presents itself must not sway you. Give a short justification, then finish with one line "
    "that holds only the verdict: [[A]] when A is better, [[B]] when B is better, [[C]] when "
    "they are equally good."
)
SINGLE_SYSTEM = (
    "You judge the quality of an answer that an AI assistant gives to a user. You will see the "
    "user's question and the answer. Weigh correctness first, then how well the answer follows "
    "the request, how helpful, complete and clear it is. Give a short justification, then "
    "finish with one line in exactly this form: Rating: [[N]], where N is a whole number from "
    "1 (wrong or useless) to 10 (excellent)."
)
PAIRWISE_USER = (
    "<question>\n{question}\n</question>\n\n"
    "<answer_a>\n{answer_a}\n</answer_a>\n\n"
    "<answer_b>\n{answer_b}\n</answer_b>"
)
SINGLE_USER = "<question>\n{question}\n</question>\n\n<answer>\n{answer}\n</answer>"

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_GRADE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
# The strong answer's score for each pairwise verdict, by the strong answer's position.
_STRONG_SCORE = {
    "strong_first": {"A": 1.0, "C": 0.5, "B": 0.0},
    "strong_second": {"B": 1.0, "C": 0.5, "A": 0.0},
}
# What each judge call is about, in call order (the order of `judge_verdicts`).
CALLS: dict[str, tuple[str, ...]] = {
    "pairwise": ("strong answer as A", "strong answer as B"),
    "single": ("strong answer", "weak answer"),
}
ERROR_EXCERPT_CHARS = 300


class VerdictError(ValueError):
    """A judge reply that holds no usable verdict."""


@dataclass(frozen=True)
class Label:
    strong_score: float
    weak_score: float
    winner: str  # strong, weak or tie


def judge_conversations(
    mode: str, question: str, strong: str, weak: str
) -> list[list[dict[str, str]]]:
    """The judge calls for one row, in the order of CALLS[mode]."""
    if mode == "pairwise":
        system, orders = PAIRWISE_SYSTEM, ((strong, weak), (weak, strong))
        users = [PAIRWISE_USER.format(question=question, answer_a=a, answer_b=b) for a, b in orders]
    elif mode == "single":
        return [single_conversation(question, a) for a in (strong, weak)]
    else:
        raise ValueError(f"unknown judge mode {mode!r}: use one of {', '.join(JUDGE_MODES)}")
    return [[{"role": "system", "content": system}, {"role": "user", "content": u}] for u in users]


def single_conversation(question: str, answer: str) -> list[dict[str, str]]:
    """The judge call that grades one answer alone."""
    user = SINGLE_USER.format(question=question, answer=answer)
    return [{"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": user}]


def _one(found: list[str], what: str) -> str:
    distinct = set(found)
    if len(distinct) != 1:
        raise VerdictError(f"{'no' if not distinct else 'more than one'} {what}")
    return found[0]


def parse_pairwise(text: str) -> str:
    """'A', 'B' or 'C' (tie); VerdictError unless the text holds exactly one of them."""
    return _one(_VERDICT.findall(text), "verdict [[A]], [[B]] or [[C]]")


def parse_grade(text: str) -> float:
    """The grade in 'Rating: [[N]]', 1 to 10; VerdictError unless there is exactly one."""
    grade = float(_one(_GRADE.findall(text), "grade [[N]]"))
    if not 1 <= grade <= 10:
        raise VerdictError(f"grade {grade:g} outside 1-10")
    return grade


def winner_of(strong_score: float, weak_score: float) -> str:
    if strong_score > weak_score:
        return "strong"
    return "weak" if strong_score < weak_score else "tie"


def label(mode: str, texts: list[str]) -> Label:
    """The label from the judge's replies (in the order of CALLS[mode]); VerdictError names
    the call whose reply is unusable and quotes it."""
    values = []
    for number, (text, call) in enumerate(zip(texts, CALLS[mode], strict=True), 1):
        try:
            values.append(parse_pairwise(text) if mode == "pairwise" else parse_grade(text))
        except VerdictError as exc:
            raise _unusable(f"judge reply {number} of {len(texts)} ({call})", exc, text) from exc
    if mode == "pairwise":
        first, second = values
        strong = (_STRONG_SCORE["strong_first"][first] + _STRONG_SCORE["strong_second"][second]) / 2
        weak = 1.0 - strong
    else:
        strong, weak = values[0] / 10, values[1] / 10
    return Label(strong, weak, winner_of(strong, weak))


def single_score(text: str) -> float:
    """The quality in [0, 1] that a single-answer grade gives (the grade over 10, as the
    two-model single mode and Arena-Hard's grades are scaled); VerdictError quotes the reply."""
    try:
        return parse_grade(text) / 10
    except VerdictError as exc:
        raise _unusable("judge reply", exc, text) from exc


def _unusable(which: str, exc: VerdictError, text: str) -> VerdictError:
    excerpt = " ".join(text.split())
    if len(excerpt) > ERROR_EXCERPT_CHARS:
        excerpt = excerpt[: ERROR_EXCERPT_CHARS - 3] + "..."
    return VerdictError(f"{which} is unusable ({exc}): {excerpt!r}")
