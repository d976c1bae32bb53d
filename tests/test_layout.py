"""The layout the design asks for, checked from the source: which package may import which,
what the routers package root holds, and that there is one command-line parser."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("routers", "backends", "serve_app", "batch_jobs", "routeray")
# package -> top-level modules it must never import (directly or lazily inside a function)
FORBIDDEN = {
    "routers": {
        "ray",
        "httpx",
        "fastapi",
        "starlette",
        "uvicorn",
        "openai",
        "aiolimiter",
        "backends",
        "serve_app",
        "batch_jobs",
        "routeray",
    },
    "backends": {"ray", "serve_app", "batch_jobs", "routeray"},
    "serve_app": {"batch_jobs", "routeray"},
    "batch_jobs": {"serve_app", "routeray"},
}
# Test-only dependencies never reach the runtime packages.
TEST_ONLY = {"pytest", "moto", "tests"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", RUNTIME)
def test_package_imports_only_what_it_may(package: str):
    banned = FORBIDDEN.get(package, set()) | TEST_ONLY
    offences = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & banned)
        for path in _modules(package)
        if _imports(path) & banned
    }
    assert not offences, f"{package} imports what it must not: {offences}"


def test_serve_app_and_batch_jobs_share_backends_not_each_other():
    uses = {
        p: set().union(*(_imports(m) for m in _modules(p))) for p in ("serve_app", "batch_jobs")
    }
    assert "backends" in uses["serve_app"] and "backends" in uses["batch_jobs"]


def test_routers_root_is_the_public_surface_only():
    root_modules = sorted(p.name for p in (ROOT / "routers").glob("*.py"))
    assert len(root_modules) <= 10, root_modules
    subpackages = {p.name for p in (ROOT / "routers").iterdir() if (p / "__init__.py").exists()}
    assert {"kinds", "data", "text", "training", "evaluation"} <= subpackages


def test_one_command_line_parser():
    users = [
        str(path.relative_to(ROOT))
        for package in RUNTIME
        for path in _modules(package)
        if "argparse" in _imports(path)
    ]
    assert users == []


def test_every_registered_kind_is_one_module_in_kinds():
    from routers.registry import ROUTERS

    for kind, target in ROUTERS.items():
        module = target.partition(":")[0]
        assert module.startswith("routers.kinds."), (kind, target)
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
