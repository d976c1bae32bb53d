"""A controller that holds a target strong share, or a spend rate in USD per hour, by moving
the threshold with the traffic.

A fixed threshold means a share only of the traffic it was calibrated on; when the mix drifts
(a launch brings harder prompts) the same threshold sends a different share strong. The
controller keeps the router's most recent scores (a sliding window of `window` requests) and
routes at the score that would have sent the target share of that window strong: the same rule
as `routeray calibrate` (`routers.evaluation.calibration`), applied continuously. A spend target
first turns the budget into a share: with the observed request rate and the window's per-request
costs of both models, the largest share of the window (highest scores first) whose spend at that
rate stays within the budget, clipped to the bounds the target allows.

Pure Python and numpy, no clock of its own: every call passes the time (seconds, any epoch), so
the online endpoint, a replay of historical traffic and a test drive the same code. The whole
state is a plain JSON-able dict (`state()` / `from_state()`), so whoever holds the controller
can restart without losing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from routers.evaluation.calibration import threshold_for_strong_share
from routers.prices import Prices, estimate_tokens

STATE_VERSION = 1


class ShareTarget(BaseModel):
    """What the controller holds: exactly one of `strong_share` or `spend_usd_per_hour`."""

    model_config = ConfigDict(extra="forbid")

    strong_share: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Share of requests to send strong."
    )
    spend_usd_per_hour: float | None = Field(
        default=None, gt=0.0, description="Spend on both models together, USD per hour."
    )
    window: int = Field(
        default=300,
        ge=10,
        description="Recent requests whose scores set the threshold (and whose decisions give "
        "the observed share). Smaller follows a shift sooner and wobbles more.",
    )
    min_scores: int = Field(
        default=50,
        ge=1,
        description="Scores needed before the window's quantile replaces initial_threshold.",
    )
    initial_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Threshold until min_scores scores are in (default: the router's recorded "
        "threshold for the target share, where the caller knows one).",
    )
    rate_window_s: float = Field(
        default=300.0,
        gt=0.0,
        description="Time constant of the request-rate and spend-rate estimates (seconds).",
    )
    min_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Lowest share a spend target may ask."
    )
    max_share: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Highest share a spend target may ask."
    )

    @model_validator(mode="after")
    def _one_target(self) -> ShareTarget:
        if (self.strong_share is None) == (self.spend_usd_per_hour is None):
            raise ValueError("give exactly one of strong_share or spend_usd_per_hour")
        if self.min_share > self.max_share:
            raise ValueError(f"min_share {self.min_share} is above max_share {self.max_share}")
        if self.min_scores > self.window:
            raise ValueError(f"min_scores {self.min_scores} is above window {self.window}")
        return self

    def describe(self) -> str:
        if self.strong_share is not None:
            return f"{self.strong_share:.0%} strong"
        return f"${self.spend_usd_per_hour:g}/hour"


def request_costs(
    prices: Prices,
    prompts: Sequence[Any] | None = None,
    *,
    input_tokens: np.ndarray | Sequence[float] | None = None,
    output_tokens: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """Each request's cost (USD) on the strong and on the weak model, shape (n, 2): input tokens
    counted by the caller or estimated from the prompt text (`estimate_tokens`), output tokens
    as given or each model's mean from the prices."""
    if input_tokens is None:
        if prompts is None:
            raise ValueError("request_costs needs prompts or input_tokens")
        input_tokens = estimate_tokens(list(prompts))
    tokens = np.asarray(input_tokens, dtype=np.float64)
    out = None if output_tokens is None else np.asarray(output_tokens, dtype=np.float64)
    return np.stack([prices.strong.cost(tokens, out), prices.weak.cost(tokens, out)], axis=1)


class _Ring:
    """The last `size` rows pushed, oldest first: a fixed numpy buffer, so that a window's
    quantile costs no conversion per request."""

    def __init__(self, size: int, width: int | None = None) -> None:
        self._data = np.zeros((size,) if width is None else (size, width), dtype=np.float64)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def extend(self, rows: np.ndarray) -> None:
        size = len(self._data)
        rows = np.asarray(rows, dtype=np.float64)[-size:]
        at = (self._next + np.arange(len(rows))) % size
        self._data[at] = rows
        self._next = (self._next + len(rows)) % size
        self._count = min(size, self._count + len(rows))

    def values(self) -> np.ndarray:
        if self._count < len(self._data):
            return self._data[: self._count]
        return np.roll(self._data, -self._next, axis=0)


class ShareController:
    """Holds `target` by routing at a quantile of the recent scores.

    `observe(scores, now, costs, strong)` records a batch of routed requests (the decisions
    taken, or those the current threshold gives) and moves the threshold; `threshold` is what
    to route at next (None before any score when no initial threshold is known: route weak).
    """

    def __init__(self, target: ShareTarget, initial_threshold: float | None = None) -> None:
        self.target = target
        self._initial = (
            initial_threshold if initial_threshold is not None else target.initial_threshold
        )
        self._threshold = self._initial
        self._scores = _Ring(target.window)
        self._strong = _Ring(target.window)
        self._costs = _Ring(target.window, width=2)
        self._share = target.strong_share
        # Exponentially weighted rates (per second), normalised by the weight seen so far.
        self._rate = 0.0
        self._spend_rate = 0.0
        self._weight = 0.0
        self._last_time: float | None = None
        self._latest = (0, 0.0)  # the last batch: requests, spend
        self.requests = 0
        self.spent = 0.0

    # --- what callers read ---------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def target_share(self) -> float | None:
        """The share the threshold aims at now (for a spend target: the budget's share)."""
        return self._share

    @property
    def observed_share(self) -> float | None:
        """Share of the window's requests that were actually sent strong."""
        return float(self._strong.values().mean()) if len(self._strong) else None

    @property
    def requests_per_hour(self) -> float | None:
        return self._per_hour(self._rate, self._latest[0])

    @property
    def spend_per_hour(self) -> float | None:
        """Observed spend (USD/hour) of the decisions taken, with the same weighting as the
        request rate; None until costs have been observed over some time."""
        return self._per_hour(self._spend_rate, self._latest[1])

    def _per_hour(self, weighted: float, latest: float) -> float | None:
        # Read just after a batch, the weighted sum holds that batch at full weight: half of
        # it is the share of the interval it ends (else evenly spaced requests read high by
        # half a request per time constant).
        if self._weight <= 0:
            return None
        return (weighted - 0.5 * latest / self.target.rate_window_s) / self._weight * 3600.0

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """The decisions the current threshold gives (all weak while there is none)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self._threshold is None:
            return np.zeros(scores.shape, dtype=bool)
        return scores >= self._threshold

    # --- what callers feed ---------------------------------------------------------------
    def observe(
        self,
        scores: np.ndarray | Sequence[float],
        now: float,
        costs: np.ndarray | None = None,
        strong: np.ndarray | Sequence[bool] | None = None,
    ) -> np.ndarray:
        """Record routed requests at time `now` (seconds) and update the threshold.

        `costs`: each request's (strong, weak) cost, shape (n, 2) (`request_costs`); needed for
        a spend target, and for `spend_per_hour`. `strong`: the decisions actually taken (an
        ingress may have routed at an older threshold); by default those of the current
        threshold. Non-finite scores (unusable prompts) are left out. Returns the decisions."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        decided = self.decide(scores) if strong is None else np.asarray(strong, dtype=bool)
        if decided.shape != scores.shape:
            raise ValueError(f"{len(decided)} decisions for {len(scores)} scores")
        if costs is not None:
            costs = np.asarray(costs, dtype=np.float64).reshape(-1, 2)
            if len(costs) != len(scores):
                raise ValueError(f"{len(costs)} costs for {len(scores)} scores")
        elif self.target.spend_usd_per_hour is not None:
            raise ValueError("a spend target needs each request's costs (request_costs)")
        keep = np.isfinite(scores)
        spent = 0.0
        if costs is not None:
            spent = float(np.where(decided, costs[:, 0], costs[:, 1])[keep].sum())
            self._costs.extend(costs[keep])
        self._scores.extend(scores[keep])
        self._strong.extend(decided[keep])
        self._count(int(keep.sum()), spent, float(now))
        self._update()
        return decided

    def _count(self, n: int, spent: float, now: float) -> None:
        # A batch reported late (another replica's) counts as now: time never runs backwards.
        tau = self.target.rate_window_s
        if self._last_time is None:
            self._last_time = now
        dt = max(0.0, now - self._last_time)
        decay = math.exp(-dt / tau)
        # rate = sum of exp(-age/tau)/tau over events; weight = 1 - exp(-elapsed/tau) corrects
        # the estimate while less than a few time constants have passed.
        self._rate = self._rate * decay + n / tau
        self._spend_rate = self._spend_rate * decay + spent / tau
        self._weight = self._weight * decay + (1.0 - decay)
        self._last_time = max(self._last_time, now)
        self._latest = (n, spent)
        self.requests += n
        self.spent += spent

    def _update(self) -> None:
        if not len(self._scores) or (
            self._initial is not None and len(self._scores) < self.target.min_scores
        ):
            return
        scores = self._scores.values()
        if self.target.spend_usd_per_hour is not None:
            share = self._budget_share(scores)
            if share is None:
                return
            self._share = share
        assert self._share is not None
        self._threshold = threshold_for_strong_share(scores, self._share)

    def _budget_share(self, scores: np.ndarray) -> float | None:
        """The largest share of the window, highest scores first, whose spend at the observed
        rate stays within the budget; None while no rate has been observed."""
        rate = self.requests_per_hour
        if rate is None or rate <= 0 or len(self._costs) != len(scores):
            return None
        costs = self._costs.values()
        order = np.argsort(-scores, kind="stable")
        extra = np.cumsum(costs[order, 0] - costs[order, 1])  # strong instead of weak, top k
        n = len(scores)
        per_request = (costs[:, 1].sum() + np.concatenate([[0.0], extra])) / n
        budget = self.target.spend_usd_per_hour / rate  # USD a request may cost on average
        affordable = np.nonzero(per_request <= budget)[0]
        k = int(affordable.max()) if affordable.size else 0
        return float(np.clip(k / n, self.target.min_share, self.target.max_share))

    # --- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON types."""
        return {
            "version": STATE_VERSION,
            "target": self.target.model_dump(),
            "initial_threshold": self._initial,
            "threshold": self._threshold,
            "share": self._share,
            "scores": self._scores.values().tolist(),
            "strong": self._strong.values().astype(bool).tolist(),
            "costs": self._costs.values().tolist(),
            "rate": self._rate,
            "spend_rate": self._spend_rate,
            "weight": self._weight,
            "last_time": self._last_time,
            "latest": list(self._latest),
            "requests": self.requests,
            "spent": self.spent,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ShareController:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown share controller state version {state.get('version')!r}")
        controller = cls(ShareTarget.model_validate(state["target"]), state["initial_threshold"])
        controller._threshold = state["threshold"]
        controller._share = state["share"]
        controller._scores.extend(np.asarray(state["scores"], dtype=np.float64))
        controller._strong.extend(np.asarray(state["strong"], dtype=bool))
        controller._costs.extend(np.asarray(state["costs"], dtype=np.float64).reshape(-1, 2))
        controller._rate = float(state["rate"])
        controller._spend_rate = float(state["spend_rate"])
        controller._weight = float(state["weight"])
        controller._last_time = state["last_time"]
        controller._latest = (int(state["latest"][0]), float(state["latest"][1]))
        controller.requests = int(state["requests"])
        controller.spent = float(state["spent"])
        return controller

    def snapshot(self) -> dict[str, Any]:
        """The figures worth exporting or logging (no scores, no prompts)."""
        return {
            "target": self.target.describe(),
            "threshold": self._threshold,
            "target_share": self._share,
            "observed_share": self.observed_share,
            "requests_per_hour": self.requests_per_hour,
            "spend_per_hour": self.spend_per_hour,
            "requests": self.requests,
            "spent": self.spent,
        }


def replay(
    controller: ShareController,
    scores: np.ndarray,
    times: np.ndarray,
    costs: np.ndarray | None = None,
    batch: int = 1,
) -> dict[str, np.ndarray]:
    """Route `scores` (in arrival order, at `times` in seconds) through `controller`, `batch`
    requests per report as an ingress would send them: each batch is decided at the threshold
    in force before it, then observed. Per request: the threshold used, the decision, its cost
    (when costs are given), and the controller's target share, observed share and spend rate
    after its batch."""
    scores = np.asarray(scores, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    n = len(scores)
    out = {
        "time": times,
        "score": scores,
        "threshold": np.full(n, np.nan),
        "strong": np.zeros(n, dtype=bool),
        "cost": np.full(n, np.nan),
        "target_share": np.full(n, np.nan),
        "observed_share": np.full(n, np.nan),
        "spend_per_hour": np.full(n, np.nan),
    }
    for start in range(0, n, max(1, batch)):
        part = slice(start, min(n, start + max(1, batch)))
        t = controller.threshold
        out["threshold"][part] = np.nan if t is None else t
        batch_costs = None if costs is None else costs[part]
        strong = controller.observe(scores[part], float(times[part][-1]), batch_costs)
        out["strong"][part] = strong
        if batch_costs is not None:
            out["cost"][part] = np.where(strong, batch_costs[:, 0], batch_costs[:, 1])
        for key, value in (
            ("target_share", controller.target_share),
            ("observed_share", controller.observed_share),
            ("spend_per_hour", controller.spend_per_hour),
        ):
            out[key][part] = np.nan if value is None else value
    return out
