"""The threshold a router routes at, decided the same way by the endpoint and every batch job:
an explicit value, else a strong share calibrated on prompts, else the threshold recorded in
the router directory. Nothing recorded and nothing given is an error, never a silent 0.5."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from routers.checkpoint import read_config
from routers.evaluation.calibration import threshold_for_strong_share
from routers.prompts import prompt_error
from routers.protocol import Router


class ThresholdError(ValueError):
    """No threshold can be decided from what was given (the message says what to give)."""


def recorded_threshold(router_dir: str | Path) -> float | None:
    """The default threshold saved with the router (`routeray train` records one), or None."""
    value = read_config(router_dir).get("metadata", {}).get("default_threshold")
    return None if value is None else float(value)


def resolve_threshold(
    router_dir: str | Path,
    *,
    threshold: float | None = None,
    strong_pct: float | None = None,
    router: Router | None = None,
    prompts: Sequence[object] = (),
) -> float:
    """The threshold to route at.

    - `threshold`: used as given (checked to be in [0, 1]);
    - `strong_pct`: the threshold that sends that share of `prompts` (usable ones only) to the
      strong model, scored with `router`;
    - neither: the one recorded in `router_dir`.
    """
    if threshold is not None and strong_pct is not None:
        raise ThresholdError("give either a threshold or a strong share, not both")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ThresholdError(f"threshold must be in [0, 1], got {threshold}")
        return float(threshold)
    if strong_pct is not None:
        if router is None:
            raise ThresholdError("calibrating a strong share needs the router to score with")
        usable = [p for p in prompts if prompt_error(p) is None]
        if not usable:
            raise ThresholdError("calibrating a strong share needs prompts, and none is usable")
        try:
            return threshold_for_strong_share(router.score(usable), strong_pct)
        except ValueError as exc:
            raise ThresholdError(str(exc)) from exc
    recorded = recorded_threshold(router_dir)
    if recorded is None:
        raise ThresholdError(
            f"{router_dir} records no default threshold: give a threshold or a strong share"
        )
    return recorded
