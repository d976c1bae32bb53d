"""Property-based fuzzing of the real server from its own OpenAPI document (schemathesis).

Every operation in /openapi.json (chat completions, route, models, health) gets requests
generated from the document's schemas: valid bodies and bodies that break them (wrong types,
missing fields, out-of-range numbers, odd strings), with and without the key. A generated
model name is almost always an unknown one (a 404), so half the valid bodies go to a router, the
strong stand-in or the vLLM model instead, for the generated fields to reach a backend; those
ask for a few tokens at most, so the run takes minutes (max_tokens and n far beyond reason are
test_hostile_inputs' cases).

What it proves: no generated request gets a 5xx; every 4xx is an OpenAI error body; a request
that breaks the schema is refused (4xx); a /v1 route answers nothing without its key; a valid
request is answered (2xx) unless refused for a reason the document cannot express (an unknown
model name, no text to route on), and the run's valid bodies were answered by the models, not
only refused. Reproducible: Hypothesis is derandomized, so every run sends the same requests."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter

import httpx
import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
schemathesis = require_module(
    "schemathesis", "the fuzz test needs schemathesis: pip install -e '.[dev]'"
)
pytestmark = pytest.mark.slow

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)

from routeray.demo.config import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from serve_app.ingress import api  # noqa: E402
from tests.serve_app.conftest import KEY, MAX_ROUTE_PROMPTS  # noqa: E402
from tests.serve_app.openai_errors import openai_error_problems  # noqa: E402

# Generated cases per operation in the fuzzing phase; the examples and coverage phases add
# their own deterministic cases (boundary values, each property missing or mistyped, ...).
MAX_EXAMPLES = 100
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
        "checks": {
            # A refusal for a schema-breaking body may be any 4xx the endpoint gives: 400
            # invalid, 401 key, 404 unknown model, 413 over the body limit.
            "negative_data_rejection": {"expected-statuses": ["4xx"]},
            # A valid body is answered, or refused for what the document cannot say: a 404 for
            # a generated model name, a 400 for a semantic refusal. `refusal_is_allowed`
            # narrows both to the reasons they may have.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404"]},
        },
    }
)
# The document is the ingress's own, built here: the operations must be known when pytest
# collects (the server starts later), and test_the_served_document_is_the_one_fuzzed checks
# that the server serves this very document.
schema = schemathesis.openapi.from_dict(api.openapi(), config=CONFIG)
STATUSES: Counter[int] = Counter()
# Operations the fuzz test ran for in this session, and the models that answered (2xx) its
# valid bodies, by operation.
FUZZED: set[str] = set()
ANSWERED: dict[str, Counter[str]] = {}
# The fewest valid bodies each POST operation must see answered over the run (the
# derandomized run answers well more).
ANSWERED_AT_LEAST = {"POST /v1/chat/completions": 8, "POST /v1/route": 2}


@pytest.fixture(scope="module")
def root(endpoint):
    yield endpoint[0].removesuffix("/v1")
    # What the server answered, by status, and who answered the valid bodies, in the run's
    # output (-s, or a failure).
    print(f"\nfuzz statuses: {dict(sorted(STATUSES.items()))}")
    print(f"valid bodies answered: { {op: dict(by) for op, by in sorted(ANSWERED.items())} }")


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
    generated_model = case.body.get("model") if isinstance(case.body, dict) else None
    aim(case)
    started = time.monotonic()
    response = case.call(base_url=root, timeout=60)
    STATUSES[response.status_code] += 1
    FUZZED.add(case.operation.label)
    assert time.monotonic() - started < 60
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            negative_data_rejection,
            positive_data_acceptance,
            ignored_auth,
        ],
    )
    if 400 <= response.status_code < 500:
        problems = openai_error_problems(response.status_code, response.content)
        assert not problems, problems
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if 200 <= response.status_code < 300:
        answered = ANSWERED.setdefault(case.operation.label, Counter())
        answered[answering_model(response)] += 1
    else:
        aimed = isinstance(case.body, dict) and case.body.get("model") != generated_model
        error = response.json()["error"]
        assert refusal_is_allowed(case, aimed, response.status_code, error), (
            f"a valid request was refused: {response.status_code} {error}"
        )


def answering_model(response: schemathesis.Response) -> str:
    """The model named by a 2xx answer (the first event of a stream); "" for none."""
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.startswith("text/event-stream"):
        first = next(line for line in response.text.splitlines() if line.startswith("data: "))
        return json.loads(first[6:]).get("model", "")
    body = response.json()
    return body.get("model", "") if isinstance(body, dict) else ""


INTEGER_FIELDS = ("n", "max_tokens", "max_completion_tokens")


def refusal_is_allowed(case: schemathesis.Case, aimed: bool, status: int, error: dict) -> bool:
    """Whether a valid body (by the document) may get this 4xx: only for a reason the
    document cannot express, and the error must name it."""
    body = case.body if isinstance(case.body, dict) else {}
    param, message = error["param"] or "", error["message"]
    if status == 404:
        # A generated model name, which the app does not serve; aim() gave the others real ones.
        return not aimed and param == "model"
    if status != 400:
        return False
    if param == "prompts" and case.path == "/v1/route":
        # More prompts than this server takes in one request (its config, not the document).
        prompts = body.get("prompts")
        return (
            isinstance(prompts, list)
            and len(prompts) > MAX_ROUTE_PROMPTS
            and f"at most {MAX_ROUTE_PROMPTS}" in message
        )
    if param == "messages" or param.startswith("prompts."):
        # Valid text, none of it to route on: no user message, or a blank prompt.
        return "no user text to route on" in message or "no text to route on" in message
    if param == "model":
        # /v1/route decides for routers only: aim() may have named a backend.
        return (
            case.path == "/v1/route"
            and body.get("model") in (STRONG_MODEL, WEAK_MODEL)
            and error["code"] == "router_model_required"
        )
    if param in INTEGER_FIELDS:
        # JSON Schema counts 2.0 as an integer; the app, as the OpenAI API does, wants 2.
        value = body.get(param)
        return isinstance(value, float) and value.is_integer() and "valid integer" in message
    if not param and message.startswith("weak model rejected the request"):
        # An image, audio or file part: which models read them is the deployment's to say, and
        # the tiny weak model reads text only.
        return any(
            isinstance(part, dict) and part.get("type") != "text"
            for turn in body.get("messages") or []
            if isinstance(turn, dict) and isinstance(turn.get("content"), list)
            for part in turn["content"]
        )
    return False


def test_valid_bodies_were_answered_not_only_refused():
    """A 4xx is never a server error, so a run that refused every request would pass the test
    above: the run's valid bodies must have reached the models and been answered, by both
    backends among them. Runs after the fuzz test (pytest keeps the file's order)."""
    operations = {
        f"{method.upper()} {path}" for path, ops in api.openapi()["paths"].items() for method in ops
    }
    missing = operations - FUZZED
    if missing:
        pytest.skip(f"the fuzz test did not run for {sorted(missing)}: run the whole module")
    for operation, least in ANSWERED_AT_LEAST.items():
        answered = ANSWERED.get(operation, Counter())
        assert answered.total() >= least, (operation, dict(answered), dict(STATUSES))
    models = set(ANSWERED.get("POST /v1/chat/completions", Counter()))
    assert {STRONG_MODEL, WEAK_MODEL} <= models, models
