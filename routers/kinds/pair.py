"""Load-time choice of the routed pair, for router kinds trained on every model in the data
(MF, SW ranking): any two of those models can be routed between without retraining."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from routers.data.model_names import model_index
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
