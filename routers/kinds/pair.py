"""The routed pair at load time: a choice for router kinds trained on every model in the data
(MF, SW ranking), where any two of those models can be routed between without retraining; a
check for kinds whose labels are one pair's (quality_gap, distilled)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from routers.data.model_names import model_index, normalize_model_name
from routers.protocol import BaseRouter, LoadOptions


class PairLoadOptions(LoadOptions):
    """For routers trained on every model in the data: the routed pair, any two of them."""

    strong_model: str | None = Field(default=None, min_length=1)
    weak_model: str | None = Field(default=None, min_length=1)


def routed_pair(
    router: type[BaseRouter], config: dict[str, Any], options: PairLoadOptions
) -> tuple[str, str]:
    """The pair a loaded router routes between: the options' (each one among the checkpoint's
    `models`, else an OptionError) or the checkpoint's own."""
    pair = []
    for side in ("strong_model", "weak_model"):
        wanted = getattr(options, side)
        if wanted is None:
            pair.append(config[side])
            continue
        try:
            model_index(config["models"], wanted)
        except ValueError as exc:
            raise router.option_error(side, wanted, str(exc)) from None
        pair.append(wanted)
    return pair[0], pair[1]


class FixedPairLoadOptions(LoadOptions):
    """For routers whose labels and calibration are one pair's: naming that pair (in any
    spelling) is allowed, naming another is an error."""

    strong_model: str | None = None
    weak_model: str | None = None


def check_fixed_pair(
    router: type[BaseRouter], config: dict[str, Any], options: FixedPairLoadOptions
) -> None:
    """OptionError if the options name another pair than the checkpoint's own."""
    for key in ("strong_model", "weak_model"):
        wanted = getattr(options, key)
        if wanted and normalize_model_name(wanted) != normalize_model_name(config[key]):
            raise router.option_error(
                key,
                wanted,
                f"a {router.kind} router is trained for one pair ({config['strong_model']} "
                f"vs {config['weak_model']}); retrain it for {key}={wanted!r}",
            )
