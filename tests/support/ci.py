"""What a test run may skip: a fresh clone skips the checks whose optional parts are missing and
says how to enable them; under CI the same gap fails the run, so that CI cannot pass by skipping."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def running_in_ci() -> bool:
    """CI services set CI=true (GitHub Actions, GitLab, Buildkite and `.ci/run`'s callers)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_module(name: str, reason: str) -> ModuleType:
    """Import `name` for a test module. Not installed: a skip that gives `reason` (how to
    install it), or under CI a failure. Installed but failing to import (a broken build, a
    missing shared library): always an error, never a skip."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only the module itself missing is "not installed"; one of its own imports missing
        # is a broken install.
        if exc.name != name.split(".")[0]:
            raise
        message = f"{name} is not installed: {reason}"
        if running_in_ci():
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message, allow_module_level=True)
