"""A stand-in router for the commit-as-you-go tests: an MF router whose every `score` call first
passes a gate, a named Ray actor the test holds. The gate lets calls through until the rows
they carry reach its next stop, then makes every later call wait until the test releases it.
Once each router actor waits there, everything the job routed so far has been handed on, and
the test looks at what is published: a state it drove, not a moment it hoped to catch.

`python -m tests.batch_jobs.gated_router ARGS...` is `routeray ARGS...` as a Ray driver whose
workers know the stand-in's kind (registered by a worker setup hook), for a test to start,
watch and kill.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import ray

from routers.kinds.mf import MFRouter
from routers.registry import ROUTERS

KIND = "gated_mf"
# By name, not __name__: run as a script this module is __main__.
MODULE = "tests.batch_jobs.gated_router"
GATE_NAME = "routeray-test-gate"
GATE_NAMESPACE = "routeray-tests"


def register() -> None:
    """Make the stand-in's kind loadable in this process (the job's driver and workers)."""
    ROUTERS[KIND] = f"{MODULE}:GatedRouter"


@ray.remote(num_cpus=0)
class Gate:
    """Counts the rows that callers pass through; holds callers once a stop is reached."""

    def __init__(self) -> None:
        self.stops: list[int] = []
        self.routed = 0
        self.waiting = 0
        self.generation = 0
        self.opened = asyncio.Event()

    def reset(self, stops: Sequence[int]) -> None:
        """Count from zero, holding callers at `stops`. Callers still waiting from before (a
        killed job's: their processes are gone) are let go uncounted."""
        self.generation += 1
        self.stops = sorted(stops)
        self.routed = 0
        self.waiting = 0
        opened, self.opened = self.opened, asyncio.Event()
        opened.set()

    async def enter(self, rows: int) -> None:
        generation = self.generation
        while self.stops and self.routed >= self.stops[0]:
            self.waiting += 1
            await self.opened.wait()
            if generation != self.generation:
                return
            self.waiting -= 1
        self.routed += rows

    def state(self) -> tuple[int, int]:
        """Rows let through, and callers waiting now."""
        return self.routed, self.waiting

    def release(self) -> None:
        """Drop the stop that holds the callers: they go on to the next one, if any."""
        self.stops.pop(0)
        opened, self.opened = self.opened, asyncio.Event()
        opened.set()


def gate() -> ray.actor.ActorHandle:
    """The gate, started by the first test that asks and kept (it takes no CPU) while the test
    run's Ray lives; each test resets it."""
    return Gate.options(name=GATE_NAME, namespace=GATE_NAMESPACE, get_if_exists=True).remote()


class GatedRouter(MFRouter):
    kind = KIND

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        gate = ray.get_actor(GATE_NAME, namespace=GATE_NAMESPACE)
        ray.get(gate.enter.remote(len(prompts)))
        return super().score(prompts)


def main() -> None:
    register()
    # Joins the cluster that RAY_ADDRESS names; the CLI then finds Ray started. The hook runs
    # before Ray puts the driver's directory on a worker's path: the repository goes on it here.
    repository = str(Path(__file__).resolve().parents[2])
    ray.init(
        runtime_env={
            "worker_process_setup_hook": f"{MODULE}.register",
            "env_vars": {"PYTHONPATH": repository},
        }
    )
    from routeray.cli import app

    app(sys.argv[1:], prog_name="routeray")


if __name__ == "__main__":
    main()
