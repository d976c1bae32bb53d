"""One place for the Hugging Face settings: offline, device and dtype, local base models."""

from __future__ import annotations

import os

import pytest
import torch

from routers.text.hf import offline, require_local_dir, resolve_device, resolve_dtype


def test_offline_never_overrides_an_explicit_setting(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_devices_and_dtypes():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("torch.float16", cpu) == torch.float16
    assert resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", cpu)


def test_a_base_model_must_be_a_local_directory(tmp_path):
    assert require_local_dir(tmp_path, "causal_llm") == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="causal_llm loads only local models"):
        require_local_dir("meta-llama/Meta-Llama-3-8B-Instruct", "causal_llm")


def test_cap_threads_caps_torch_and_the_tokenizer_pool():
    """In a fresh process: the caps are process-wide."""
    import subprocess
    import sys

    code = (
        "import os, torch; from routers import cap_threads; cap_threads(1); "
        "print(torch.get_num_threads(), os.environ['RAYON_NUM_THREADS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["1", "1"]
