"""routers: learned strong-vs-weak LLM routers (RouteLLM), as a plain library.

No Ray, no HTTP. Everything outside this package uses only what is named here: a router
scores prompts (`Router.score`, `route`), lives in a directory (`load_router`, `save_router`,
`read_config`) or ships by name (`SHIPPED`, `router_path`), routes at a threshold decided by
one rule (`resolve_threshold`), gives P(strong wins) through the probability curve recorded
with it (`CalibratedRouter`, `ProbabilityCurve`; `uncalibrated` is the raw scorer) and is one
of the kinds in `ROUTERS`; a worker with a share of the CPUs caps its threads with
`cap_threads`. Importing the package loads no model; a router kind's module is imported when
a router of that kind is loaded or trained.
"""

from routers.checkpoint import CheckpointError, load_router, read_config, save_router
from routers.decision.probability import CalibratedRouter, ProbabilityCurve, uncalibrated
from routers.prices import ModelPrice, Prices, estimate_tokens
from routers.prompts import prompt_error, score_table
from routers.protocol import BaseRouter, LoadOptions, OptionError, Router, route
from routers.registry import ROUTERS, router_class
from routers.shipped import SHIPPED, default_router_dir, router_path
from routers.text.hf import cap_threads
from routers.thresholds import ThresholdError, resolve_threshold

__all__ = [
    "ROUTERS",
    "SHIPPED",
    "BaseRouter",
    "CalibratedRouter",
    "CheckpointError",
    "LoadOptions",
    "ModelPrice",
    "OptionError",
    "Prices",
    "ProbabilityCurve",
    "Router",
    "ThresholdError",
    "cap_threads",
    "default_router_dir",
    "estimate_tokens",
    "load_router",
    "prompt_error",
    "read_config",
    "resolve_threshold",
    "route",
    "router_class",
    "router_path",
    "save_router",
    "score_table",
    "uncalibrated",
]
