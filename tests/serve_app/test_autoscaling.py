"""Serve autoscales the router deployment and the ingress as the config asks: under a load
ramp on `POST /v1/route` each goes from one replica to two, and back to one once the load
stops, every request is answered meanwhile, and a share controller on the router holds its
target across the change (tests/support/autoscaling.py drives the ramp; numbers from the same
ramp are in docs/BENCHMARKS.md, "Autoscaling under a load ramp")."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.autoscaling import (
    INGRESS,
    INGRESS_AUTOSCALING,
    PHASES,
    ROUTER,
    autoscaling_config,
    format_ramp,
    ramp_prompts,
    replica_states,
    run_ramp,
    serving,
)

pytestmark = pytest.mark.slow

APP = "autoscale"
TARGET_SHARE = 0.3
# Few scores before the controller takes over, so that it has by the time the load ramps up.
CONTROL = {"strong_share": TARGET_SHARE, "min_scores": 20}
# The decisions of a few hundred requests scatter around the controller's target by a few
# points (its window is a sample of the traffic, and so is each phase); a replica that routed
# at a threshold of its own, as a new ingress replica would without the controller's state,
# sends none of these prompts strong (the recorded threshold for 30 % of real user prompts).
SHARE_TOLERANCE = 0.08


@pytest.fixture(scope="module")
def autoscaled(ray_cluster):
    """(base URL ending in /v1) of an app of its own, beside the package's app when that one is
    up. Its replicas ask for no CPU: the package's app holds both CPUs of the local Ray (its
    router and the vLLM engine take one each), and what is under test is Serve's decision to
    add a replica, not where it fits (bench/autoscale.py runs them on a quarter CPU each)."""
    from routeray.demo.strong_standin import StrongStandin
    from serve_app.app import build

    ray_cluster.ensure()
    with StrongStandin() as strong, StrongStandin(answer_prefix="weak answer: ") as weak:
        config = autoscaling_config(
            strong.base_url,
            weak.base_url,
            num_cpus=0,
            ingress_autoscaling=INGRESS_AUTOSCALING,
            control=CONTROL,
        )
        with serving(build(config), APP) as base_url:
            yield base_url


def test_router_and_ingress_scale_up_under_load_and_back_down(autoscaled):
    prompts = ramp_prompts()
    before = replica_states(APP)
    assert before[ROUTER] == before[INGRESS] == {"RUNNING": 1}
    ramp = asyncio.run(
        run_ramp(
            autoscaled,
            APP,
            prompts,
            clients=12,
            before_s=4,
            scaled_s=3,
            after_s=2,
            watch=(ROUTER, INGRESS),
        )
    )
    report = f"last status {ramp.last_states()}\n{format_ramp(ramp)}"
    assert ramp.scaled_up, f"no second replica of both under load; {report}"
    assert ramp.scaled_down, f"not back to one replica of each; {report}"
    assert ramp.peak(ROUTER) >= 2 and ramp.peak(INGRESS) >= 2, report
    final = ramp.samples[-1]
    assert (final.running(ROUTER), final.running(INGRESS)) == (1, 1), report
    # Every phase carried requests, and every request got its decision.
    for phase in PHASES:
        assert ramp.in_phase(phase), f"no request in phase {phase}; {report}"
    errors = ramp.errors()
    assert errors == [], f"{len(errors)} requests failed, e.g. {errors[:3]}; {report}"
    # From the ramp on, through both replica starts and stops: the controller's share.
    share = ramp.strong_share(PHASES[1:])
    assert abs(share - TARGET_SHARE) <= SHARE_TOLERANCE, f"strong share {share:.1%}; {report}"
