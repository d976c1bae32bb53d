"""Everything `routeray serve --demo` needs on one machine with nothing configured."""

from __future__ import annotations

import socket
from pathlib import Path

from backends import OpenAIBackendConfig, SecretRef, VLLMBackendConfig
from serve_app.config import RouterDeploymentConfig, RouterSpec, ServeConfig

STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "tiny-llama"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_config(model_dir: Path, strong_base_url: str, port: int) -> ServeConfig:
    """The shipped router, vLLM on a tiny generated model, a local stand-in for the strong API."""
    return ServeConfig(
        routers=[
            RouterSpec(name="gap", aliases=["default", "fast"]),
            RouterSpec(name="minilm", path="minilm"),
        ],
        strong=OpenAIBackendConfig(
            model=STRONG_MODEL,
            base_url=strong_base_url,
            api_key=SecretRef(env="STRONG_API_KEY"),
            max_retries=2,
            backoff_initial_s=0.2,
            backoff_max_s=2.0,
            timeout_s=30,
        ),
        weak=VLLMBackendConfig(
            model=WEAK_MODEL,
            model_path=str(model_dir),
            num_cpus=1,
            engine_args={"max_model_len": 1024},
        ),
        router_deployment=RouterDeploymentConfig(num_cpus=1),
        port=port,
    )


def openai_example(base_url: str) -> str:
    return f'''from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key="unused")
reply = client.chat.completions.with_raw_response.create(
    model="router-default",  # or router-gap-0.3, {STRONG_MODEL}, {WEAK_MODEL}
    messages=[{{"role": "user", "content": "Prove that there are infinitely many primes."}}],
)
print(reply.headers["x-routeray-route"], reply.headers["x-routeray-score"])
print(reply.parse().choices[0].message.content)'''
