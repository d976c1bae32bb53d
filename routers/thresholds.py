"""The threshold a router routes at, decided the same way by the endpoint and every batch job:
an explicit value, else a strong share (calibrated on the prompts given, or read from the
thresholds recorded in the router directory for each share), else the default threshold
recorded there. Nothing recorded and nothing given is an error, never a silent 0.5.

A router directory records, in its config's metadata, `default_threshold` and
`share_thresholds`: for each strong share (a fraction, as a string key "0.30"), the threshold
that sends that share of a reference mix of prompts to the strong model (`routeray calibrate`
writes both; the shipped routers' mix is real user prompts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

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


def recorded_share_thresholds(router_dir: str | Path) -> dict[float, float]:
    """{strong share: threshold} recorded in the router directory, by share; {} when none."""
    table = read_config(router_dir).get("metadata", {}).get("share_thresholds") or {}
    return {
        float(share): float(t) for share, t in sorted(table.items(), key=lambda kv: float(kv[0]))
    }


def threshold_for_share(table: Mapping[float, float], share: float, where: str = "") -> float:
    """The threshold for `share` from a recorded {share: threshold} table, interpolated
    linearly between the two nearest recorded shares. ThresholdError when nothing is
    recorded or the share lies outside the recorded range."""
    if not table:
        raise ThresholdError(
            f"{where or 'the router'} records no thresholds by strong share: run "
            "`routeray calibrate` on prompts like your traffic, or give a threshold"
        )
    shares = np.array(sorted(table), dtype=np.float64)
    if not shares[0] <= share <= shares[-1]:
        raise ThresholdError(
            f"strong share {share:.2%} is outside the recorded range "
            f"{shares[0]:.0%}-{shares[-1]:.0%}{' of ' + where if where else ''}"
        )
    return float(np.interp(share, shares, [table[s] for s in shares]))


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
      strong model, scored with `router`; with no prompts, the threshold recorded in
      `router_dir` for that share;
    - neither: the one recorded in `router_dir`.
    """
    if threshold is not None and strong_pct is not None:
        raise ThresholdError("give either a threshold or a strong share, not both")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ThresholdError(f"threshold must be in [0, 1], got {threshold}")
        return float(threshold)
    if strong_pct is not None and not prompts and router is None:
        return threshold_for_share(
            recorded_share_thresholds(router_dir), strong_pct, str(router_dir)
        )
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
