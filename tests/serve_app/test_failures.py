"""Failure paths of the online endpoint, end to end: what a client (the real `openai` SDK, or
raw HTTP) sees when the strong API rate-limits, times out, drops a stream, refuses our key, or
when a deployment is down; and that the SDK's own retry logic does the right thing with it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_app.conftest import VLLM_REASON
from tests.support.ci import require_module

require_module("vllm", VLLM_REASON)
pytestmark = pytest.mark.slow

import openai  # noqa: E402

from routeray.demo.config import STRONG_MODEL, WEAK_MODEL  # noqa: E402
from tests.serve_app.conftest import (  # noqa: E402
    KEY,
    WEAK_MAX_MODEL_LEN,
    second_ingress,
)

HELLO = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture()
def standin(endpoint):
    endpoint[1].reset()
    yield endpoint[1]
    endpoint[1].reset()


def sdk(endpoint, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=endpoint[0], api_key=KEY, max_retries=max_retries, timeout=60)


def post(
    endpoint,
    body: dict,
    path: str = "/chat/completions",
    timeout: float = 60,
    base: str | None = None,
) -> httpx.Response:
    """POST to the app's /v1 (or to `base`, another ingress's)."""
    return httpx.post(
        (base or endpoint[0]) + path,
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=timeout,
    )


def sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


def test_an_upstream_429_reaches_the_client_as_429_with_its_retry_after(endpoint, standin):
    # The backend's own try and its one retry are both refused (conftest: max_retries=1).
    standin.inject("429", times=2, retry_after=3)
    response = post(endpoint, {"model": STRONG_MODEL, "messages": HELLO, "max_tokens": 4})
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "3"
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert standin.requests == 2


def test_the_sdk_waits_out_our_429_and_its_retry_succeeds(endpoint, standin):
    standin.inject("429", times=2, retry_after=1)
    started = time.monotonic()
    reply = sdk(endpoint, max_retries=2).chat.completions.create(
        model=STRONG_MODEL, messages=HELLO, max_tokens=4
    )
    assert reply.model == STRONG_MODEL
    # Two refused upstream calls, then the SDK's second request, answered at once.
    assert standin.requests == 3
    assert time.monotonic() - started >= 1.0, "the SDK did not wait for Retry-After"


def test_the_backend_retries_a_429_itself_first(endpoint, standin):
    standin.inject("429", times=1, retry_after=0)
    reply = sdk(endpoint).chat.completions.create(model=STRONG_MODEL, messages=HELLO, max_tokens=4)
    assert reply.model == STRONG_MODEL
    assert standin.requests == 2, "the upstream 429 was not retried"


def test_a_routed_429_falls_back_to_the_weak_model(endpoint, standin):
    standin.inject("429", times=2)
    response = post(endpoint, {"model": "router-gap-0.0", "messages": HELLO, "max_tokens": 4})
    assert response.status_code == 200
    assert response.headers["x-routeray-fallback"] == "strong-failed"
    assert response.json()["model"] == WEAK_MODEL


def test_an_upstream_timeout_is_a_504(endpoint, standin):
    # The stand-in would answer after a minute (it stops waiting once the client hangs up),
    # well within our request_timeout_s: only the backend's own timeout makes this a 504.
    standin.inject("timeout", times=2, delay=60)
    started = time.monotonic()
    response = post(endpoint, {"model": STRONG_MODEL, "messages": HELLO, "max_tokens": 4})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "api_error"
    # The first try and its one retry, each cut off at conftest's STRONG_TIMEOUT_S: bounded,
    # and far from the stand-in's minute however busy the machine.
    assert standin.requests == 2
    assert time.monotonic() - started < 30


def test_a_refused_upstream_key_tells_the_sdk_not_to_retry(endpoint, standin):
    standin.inject("401", times=3)
    with pytest.raises(openai.APIStatusError) as info:
        sdk(endpoint, max_retries=2).chat.completions.create(
            model=STRONG_MODEL, messages=HELLO, max_tokens=4
        )
    assert info.value.status_code == 502
    assert info.value.response.headers["x-should-retry"] == "false"
    # One upstream call: neither the backend nor the SDK tried again.
    assert standin.requests == 1


def test_both_models_failing_is_a_clean_error(endpoint, standin):
    # The strong model fails; the weak one cannot hold the prompt: more words than its context
    # has tokens, each word a token at least.
    standin.inject("500", times=2)
    long_prompt = [{"role": "user", "content": "word " * (WEAK_MAX_MODEL_LEN + 1)}]
    response = post(endpoint, {"model": "router-gap-0.0", "messages": long_prompt})
    assert response.status_code == 400, response.text
    assert response.headers["x-routeray-fallback"] == "strong-failed"
    message = response.json()["error"]["message"]
    assert "weak model rejected the request" in message
    assert f"maximum context length is {WEAK_MAX_MODEL_LEN} tokens" in message, message


def test_a_stream_that_drops_after_its_first_chunks_ends_with_an_error_event(endpoint, standin):
    standin.inject("drop_stream", times=1, after_chunks=2)
    body = {"model": STRONG_MODEL, "messages": HELLO, "max_tokens": 8, "stream": True}
    response = post(endpoint, body)
    assert response.status_code == 200  # the stream had started
    events = sse_events(response)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["type"] == "api_error" and "interrupted" in last["error"]["message"]
    # The chunks sent before the drop reached the client.
    assert any("choices" in json.loads(e) for e in events[:-1])
    # And the SDK raises on the error event instead of ending quietly.
    standin.inject("drop_stream", times=1, after_chunks=2)
    stream = sdk(endpoint).chat.completions.create(
        model=STRONG_MODEL, messages=HELLO, max_tokens=8, stream=True
    )
    with pytest.raises(openai.APIError, match="interrupted"):
        for _ in stream:
            pass


@pytest.mark.parametrize("model", [STRONG_MODEL, WEAK_MODEL])
def test_streams_are_costed_even_when_the_client_asks_no_usage(endpoint, standin, model):
    body = {"model": model, "messages": HELLO, "max_tokens": 4, "stream": True}
    events = sse_events(post(endpoint, body))
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    # The client asked for no usage and gets none, as from the OpenAI API...
    assert chunks and all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    if model == STRONG_MODEL:
        # ...while the backend was asked for it, so the cost metric sees every stream.
        assert standin.stats.bodies[-1]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model", [STRONG_MODEL, WEAK_MODEL])
def test_a_client_that_asks_for_usage_gets_it_last(endpoint, model):
    stream = sdk(endpoint).chat.completions.create(
        model=model,
        messages=HELLO,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_models_needs_a_key(endpoint):
    assert httpx.get(f"{endpoint[0]}/models", timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=endpoint[0], api_key="wrong", max_retries=0).models.list()
    assert STRONG_MODEL in {m.id for m in sdk(endpoint).models.list()}


def raw_post(endpoint, head: str, body: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (an HTTP client would refuse a false Content-Length); the status
    and body of the answer."""
    url = httpx.URL(endpoint[0])
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\n{head}\r\n"
    ).encode()
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):  # the server may stop reading at the limit
            sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


BIG = json.dumps(
    {"model": "router-gap", "messages": [{"role": "user", "content": "x" * 100_000}]}
).encode()


def test_an_oversized_chunked_body_is_a_413(endpoint):
    """No Content-Length: the body is cut off at the limit (conftest: 64 KiB) while read."""
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(BIG[i : i + 8192]), BIG[i : i + 8192])
        for i in range(0, len(BIG), 8192)
    )
    status, body = raw_post(endpoint, "Transfer-Encoding: chunked\r\n", chunked + b"0\r\n\r\n")
    assert status == 413
    assert b"request body is larger" in body


def test_a_declared_length_over_the_limit_is_a_413_before_the_body(endpoint):
    """A Content-Length over the limit is refused at once, whatever follows it."""
    status, body = raw_post(endpoint, "Content-Length: 10000000\r\n", b"{}")
    assert status == 413
    assert b"request body is larger" in body


def test_a_body_longer_than_its_declared_length_is_read_only_as_declared(endpoint):
    """HTTP frames the body by Content-Length: the 10 bytes declared are the request (not a
    JSON object, so a 400) and the rest is never read as part of it."""
    status, body = raw_post(endpoint, "Content-Length: 10\r\n", BIG)
    assert status == 400
    assert json.loads(body)["error"]["message"].startswith("request body is not valid JSON")


# The request deadline of a second ingress in front of the same deployments: far shorter than
# the replacement of a dead replica (the vLLM engine starts in tens of seconds) and than an
# answer that fills the weak model's context.
SHORT_DEADLINE_S = 2.0


def wait_for_health(url: str, code: int, within_s: float) -> dict:
    """GET /health until it answers `code`; its body. Failing after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        response = httpx.get(url, timeout=30)
        if response.status_code == code:
            return response.json()
        assert time.monotonic() < deadline, f"{url} never answered {code}: {response.text}"
        time.sleep(0.5)


def test_a_dead_weak_replica_gives_clean_errors_and_health_reports_it(endpoint):
    """Killing the weak model's replica while it generates: the requests it was answering get
    a 503 or an error event (never a 500 or a cut connection); a request sent meanwhile is
    answered once a new replica is up or given a clean error; while /health reports the
    replica down, a request through an ingress with a short request_timeout_s gets exactly
    the 504 that deadline promises (README); and /health turns 503 naming the replica while
    Serve replaces it, then 200 (the vLLM engine takes tens of seconds)."""
    import ray

    health = endpoint[0].removesuffix("/v1") + "/health"
    all_ok = {"status": "ok", "deployments": {"router": "ok", "strong": "ok", "weak": "ok"}}
    # Answers as long as the context allows (vLLM's ignore_eos: random weights would stop at
    # once): thousands of tokens, seconds of work however fast the machine, so that they are
    # still being generated when the replica dies.
    long = {
        "model": WEAK_MODEL,
        "messages": HELLO,
        "max_tokens": WEAK_MAX_MODEL_LEN,
        "ignore_eos": True,
    }
    events: list[str] = []
    generating = threading.Event()

    def stream_events() -> list[str]:
        with httpx.stream(
            "POST",
            endpoint[0] + "/chat/completions",
            json={**long, "stream": True},
            headers={"authorization": f"Bearer {KEY}"},
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    generating.set()
        return events

    with (
        second_ingress(endpoint, "deadline", request_timeout_s=SHORT_DEADLINE_S) as short,
        ThreadPoolExecutor(3) as pool,
    ):
        short_health = short.removesuffix("/v1") + "/health"
        for url in (health, short_health):
            ok = httpx.get(url, timeout=30)
            assert (ok.status_code, ok.json()) == (200, all_ok), ok.text
        # From the GCS: this cluster runs no dashboard for the state API.
        replicas = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "routeray#WeakModel#" in a["name"]
        ]
        assert len(replicas) == 1, replicas
        replica = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])

        whole = pool.submit(post, endpoint, long)
        streamed = pool.submit(stream_events)
        assert generating.wait(60), "the stream never started"
        # Both requests are in the replica: Serve's own count of its ongoing requests, which
        # its routers read (nothing else is sent to the replica meanwhile).
        deadline = time.monotonic() + 60
        while (ongoing := ray.get(replica.get_num_ongoing_requests.remote(), timeout=30)) != 2:
            assert time.monotonic() < deadline, f"{ongoing} requests in the replica, not 2"
            time.sleep(0.2)
        # Both still being generated, with thousands of tokens to go.
        assert not whole.done(), whole.result().text[:500]
        assert not streamed.done() and "[DONE]" not in events, events[-3:]
        ray.kill(replica)
        started = time.monotonic()
        timeout = endpoint[3].request_timeout_s + 30
        meanwhile = pool.submit(
            post, endpoint, {"model": WEAK_MODEL, "messages": HELLO}, timeout=timeout
        )

        down = wait_for_health(health, 503, 30)
        assert down["status"] == "unhealthy" and down["deployments"]["weak"] != "ok"
        assert down["deployments"]["router"] == down["deployments"]["strong"] == "ok"

        # The second ingress sees the replica down too, so its request cannot meet the dead
        # replica (a 503): it waits for the new one and meets the deadline, or meets it in an
        # answer that cannot be written within it.
        down = wait_for_health(short_health, 503, 30)
        assert down["deployments"]["weak"] != "ok", down
        late_short = post(endpoint, long, path="/chat/completions", base=short)
        assert late_short.status_code == 504, late_short.text
        error = late_short.json()["error"]
        assert error["type"] == "api_error" and error["code"] == "backend_error", error
        assert f"within {SHORT_DEADLINE_S:g} s" in error["message"], error

        answer = whole.result()
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["type"] == "api_error"
        streamed.result()
        assert events[-1] != "[DONE]", "the stream outlived its replica"
        assert json.loads(events[-1])["error"]["code"] == "backend_error"
        late = meanwhile.result()
        waited = time.monotonic() - started
        # Answered by the new replica, or a clean error: the dead one (503) or the deadline (504).
        assert late.status_code in (200, 503, 504), late.text
        assert waited < timeout, "a request outlived the deadline"
    wait_for_health(health, 200, 240)
    reply = sdk(endpoint).chat.completions.create(model=WEAK_MODEL, messages=HELLO, max_tokens=4)
    assert reply.model == WEAK_MODEL
