"""Hugging Face settings shared by every router that loads a transformers model: the hub is
never reached, and where and in what precision a model runs is decided in one way.

Also the option types for those choices, so that a bad device or dtype is refused when the
options are read rather than deep inside a model load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, BeforeValidator


def offline() -> None:
    """Models are local directories or ship inside packages: a typo or a hub id must never
    turn into a download."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def require_local_dir(path: str | Path, kind: str) -> str:
    """`path` as text if it is a local directory, else a FileNotFoundError that says why a
    router of `kind` will not fetch it (and the offline settings, set before any model load)."""
    offline()
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"base model {str(path)!r} is not a local directory; {kind} loads only local "
            "models (pass base_model=/path/to/model, e.g. a downloaded Llama-3-8B-Instruct)"
        )
    return str(path)


def cap_threads(threads: int) -> None:
    """Score on `threads` threads in this process: torch's pool and the Rust tokenizers' pool
    (read when the first tokenizer call creates it, so call this before loading a router).

    A worker given a share of a machine's CPUs (a Ray actor, a Serve replica) would otherwise
    start one thread per core of the whole machine in each pool; beside other workers (a vLLM
    engine, more actors) the spinning threads starve each other."""
    torch.set_num_threads(threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The named device, or the GPU when there is one and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on a GPU, float32 on a CPU (bf16 matmuls are slow or unsupported there)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _device_text(value: Any) -> Any:
    return str(value) if isinstance(value, torch.device) else value


def _valid_device(value: str) -> str:
    try:
        torch.device(value)
    except RuntimeError as exc:
        raise ValueError(f"not a torch device: {exc}") from None
    return value


def _dtype_text(value: Any) -> Any:
    return dtype_name(value) if isinstance(value, torch.dtype) else value


def _valid_dtype(value: str) -> str:
    resolve_dtype(value, torch.device("cpu"))
    return value


# Load-option types: a device ("cpu", "cuda", "cuda:1", or a torch.device) and a floating
# dtype ("bfloat16", "float32", "auto", or a torch.dtype), both kept as text.
DeviceName = Annotated[str, BeforeValidator(_device_text), AfterValidator(_valid_device)]
DtypeName = Annotated[str, BeforeValidator(_dtype_text), AfterValidator(_valid_dtype)]
