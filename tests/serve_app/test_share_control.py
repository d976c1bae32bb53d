"""A share controller on the endpoint: `router-ctl` (the shipped router scored in the ingress,
`control: {strong_share: 0.3}`) served by a second ingress in front of the app's backends
(conftest's `second_ingress`), driven with scripted easy-then-hard traffic through
`POST /v1/route` (nothing generated)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
pytestmark = pytest.mark.slow

import ray  # noqa: E402

from routers.decision.share_control import ShareTarget  # noqa: E402
from serve_app.config import RouterSpec  # noqa: E402
from serve_app.share_control import (  # noqa: E402
    NAMESPACE,
    controller_actor_name,
    delete_controller_actor,
)
from tests.serve_app.conftest import (  # noqa: E402
    KEY,
    MAX_ROUTE_PROMPTS,
    scrape_metrics,
    second_ingress,
)
from tests.support.mixed_traffic import easy_prompt, hard_prompt  # noqa: E402

AUTH = {"authorization": f"Bearer {KEY}"}
APP = "control"
TARGET = ShareTarget(strong_share=0.3, window=100, min_scores=20)
SPEC = RouterSpec(name="ctl", path="default", placement="ingress", control=TARGET)


@pytest.fixture(scope="module")
def controlled(endpoint):
    delete_controller_actor(APP)  # a detached actor of an earlier run would keep its state
    with second_ingress(endpoint, APP, routers=[SPEC]) as url:
        yield url
    delete_controller_actor(APP)


def route(url: str, prompts: list[str], model: str = "router-ctl") -> list[dict]:
    answer = httpx.post(
        f"{url}/route", json={"model": model, "prompts": prompts}, headers=AUTH, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def figures() -> dict:
    actor = ray.get_actor(controller_actor_name(APP), namespace=NAMESPACE)
    return ray.get(actor.snapshot.remote(), timeout=30)["ctl"]


def wait_counted(requests: int) -> dict:
    """The controller's figures once it has counted `requests` prompts (reports are sent in
    the background, a fraction of a second after the decisions)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            now = figures()
            if now["requests"] >= requests:
                return now
        except ValueError:  # the actor is created by the ingress's first request
            pass
        assert time.monotonic() < deadline, f"the controller never counted {requests} prompts"
        time.sleep(0.05)


def send(url: str, prompts: list[str], counted: int) -> tuple[list[dict], int]:
    """Route `prompts` in requests of MAX_ROUTE_PROMPTS, each once the controller has counted
    the one before (so each is decided at a threshold that has seen all earlier traffic)."""
    data = []
    for start in range(0, len(prompts), MAX_ROUTE_PROMPTS):
        chunk = prompts[start : start + MAX_ROUTE_PROMPTS]
        data += route(url, chunk)
        counted += len(chunk)
        wait_counted(counted)
    return data, counted


def test_threshold_follows_the_mix_and_survives_the_ingress_replica(endpoint, controlled):
    rng = np.random.default_rng(5)
    easy, counted = send(controlled, [easy_prompt(rng) for _ in range(160)], 0)
    at_easy = figures()
    assert abs(np.mean([d["route"] == "strong" for d in easy[40:]]) - 0.3) <= 0.1

    hard, counted = send(controlled, [hard_prompt(rng) for _ in range(480)], counted)
    strong = np.array([d["route"] == "strong" for d in hard])
    # The first hard prompts meet the easy traffic's threshold: most go strong.
    assert strong[:MAX_ROUTE_PROMPTS].mean() > 0.5
    assert hard[0]["threshold"] == pytest.approx(at_easy["threshold"])
    # Once a window of hard prompts is in, the share is back near the target.
    assert abs(strong[200:].mean() - 0.3) <= 0.08, strong[200:].mean()
    at_hard = figures()
    assert at_hard["threshold"] > at_easy["threshold"]
    assert at_hard["observed_share"] == pytest.approx(0.3, abs=0.12)

    # A pinned share or threshold keeps its own, and is not counted.
    (pinned,) = route(controlled, [hard_prompt(rng)], model="router-ctl-0.5")
    assert pinned["threshold"] == 0.5
    assert figures()["requests"] == counted

    lines = scrape_metrics(
        endpoint[2],
        lambda lines: any(
            line.startswith("ray_routeray_threshold{") and 'router="ctl"' in line for line in lines
        ),
    )
    assert "# TYPE ray_routeray_threshold gauge" in lines
    assert "# TYPE ray_routeray_observed_strong_share gauge" in lines

    # Kill the ingress replica: Serve starts another, which routes at the controller's
    # threshold, not the configured start.
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if f"{APP}#{APP.capitalize()}Ingress#" in a["name"]
    ]
    assert len(replicas) == 1, replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))
    deadline = time.monotonic() + 120
    while True:
        try:
            (after,) = route(controlled, [hard_prompt(rng)])
            break
        except (AssertionError, httpx.HTTPError):
            assert time.monotonic() < deadline, "the ingress never came back"
            time.sleep(0.5)
    assert after["threshold"] == pytest.approx(at_hard["threshold"])
    assert wait_counted(counted + 1)["requests"] == counted + 1
