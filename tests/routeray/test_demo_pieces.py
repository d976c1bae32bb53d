"""`routeray demo ...`: the demo's pieces on their own, as serve_config.yaml's comments use them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from routeray.cli import app
from routeray.demo.config import free_port


def test_tiny_model_command_builds_a_model_directory(tmp_path: Path):
    result = CliRunner().invoke(app, ["demo", "tiny-model", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny" / "config.json").is_file()
    assert (tmp_path / "tiny" / "tokenizer.json").is_file()


def test_standin_command_serves_openai_clients_and_requires_its_key(tmp_path: Path):
    import openai

    port = free_port()
    env = {**os.environ, "STANDIN_KEY": "sk-local-test-key"}
    routeray = Path(sys.executable).with_name("routeray")
    proc = subprocess.Popen(
        [str(routeray), "demo", "standin", "--port", str(port), "--api-key-env", "STANDIN_KEY"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        client = openai.OpenAI(base_url=base_url, api_key="sk-local-test-key", max_retries=0)
        deadline = time.time() + 60
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.time() < deadline, "stand-in did not start"
                time.sleep(0.2)
        reply = client.chat.completions.create(
            model="gpt-4-1106-preview", messages=[{"role": "user", "content": "hello there"}]
        )
        assert reply.choices[0].message.content
        wrong = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
        try:
            wrong.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hello"}]
            )
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError:
            pass
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_standin_command_refuses_an_empty_key_variable(monkeypatch):
    monkeypatch.delenv("ROUTERAY_NO_SUCH_KEY", raising=False)
    result = CliRunner().invoke(app, ["demo", "standin", "--api-key-env", "ROUTERAY_NO_SUCH_KEY"])
    assert result.exit_code == 2
    assert "ROUTERAY_NO_SUCH_KEY is empty" in result.output
