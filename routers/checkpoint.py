"""A trained router on disk: `config.json` plus `model.safetensors`. Never pickle. A
`README.md` card beside them says what it was trained on and under which licences
(`routers.card`).

A router whose embedder is a static model (`routers.text.static`) carries it in an
`embedder/` subdirectory (the model's own JSON config, tokenizer and safetensors), so that the
directory alone is the whole router wherever it is copied.

A top-level `"probability"` section, where present, holds the curve that turns the kind's raw
score into P(strong wins) (`routers.decision.probability`); `load_router` applies it,
`save_router` of a loaded router keeps it, and `update_config` writes a new one (and recorded
thresholds) into an existing directory without touching its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from routers.card import write_card
from routers.decision.probability import CalibratedRouter, ProbabilityCurve, probability_curve
from routers.protocol import BaseRouter, OptionError
from routers.registry import router_class
from routers.text.static import is_static_model

FORMAT = "routeray-router"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMBEDDER_DIR = "embedder"
PROBABILITY = "probability"


class CheckpointError(ValueError):
    """A router directory that cannot be loaded; the message says which and why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_router(
    router: BaseRouter, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write the router into `directory`; the config is written last so a crash mid-save
    leaves a directory that `load_router` rejects instead of half-loads. A calibrated router
    (`load_router` of a directory with a probability curve) keeps its curve."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "router": router.kind,
        "config": router.config(),
        "metadata": metadata or {},
    }
    curve = probability_curve(router)
    if curve is not None:
        document[PROBABILITY] = curve.model_dump()
    _bundle_embedder(document, directory)
    tensors = {name: t.detach().contiguous().cpu() for name, t in router.tensors().items()}
    if tensors:
        weights = directory / WEIGHTS_FILE
        save_file(tensors, str(weights))
        os.chmod(weights, 0o644)
        document["weights"] = {"file": WEIGHTS_FILE, "sha256": _sha256(weights)}
    _write_config(document, directory)
    write_card(document, directory)
    return directory


def _write_config(document: dict[str, Any], directory: Path) -> None:
    # Atomic: a reader sees the old config or the new one, never half of one.
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as fh:
        json.dump(document, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(fh.name, 0o644)  # a temporary file is private; a router directory is shared
    os.replace(fh.name, directory / CONFIG_FILE)


def update_config(
    directory: str | Path,
    *,
    probability: ProbabilityCurve | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a probability curve and/or metadata entries (merged over the recorded ones) into
    an existing router directory; weights, embedder and card are left as they are."""
    directory = Path(directory)
    document = read_config(directory)
    if probability is not None:
        document[PROBABILITY] = probability.model_dump()
    if metadata:
        document["metadata"] = {**document.get("metadata", {}), **metadata}
    _write_config(document, directory)
    return directory


def recorded_probability(document: dict[str, Any], directory: Path) -> ProbabilityCurve | None:
    """The probability curve in a checkpoint document, or None when it records none."""
    section = document.get(PROBABILITY)
    if section is None:
        return None
    try:
        return ProbabilityCurve.model_validate(section)
    except ValueError as exc:
        raise CheckpointError(f"{directory}: its probability curve is invalid: {exc}") from exc


def _bundle_embedder(document: dict[str, Any], directory: Path) -> None:
    """Copy a static embedder into the router directory and point the config at the copy."""
    embedder = document["config"].get("embedder") or {}
    source = embedder.get("model_path")
    if not is_static_model(source):
        return
    target = directory / EMBEDDER_DIR
    if Path(source).resolve() != target.resolve():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        for path in target.iterdir():
            os.chmod(path, 0o644)
    document["config"]["embedder"] = {**embedder, "model_path": EMBEDDER_DIR}
    document["embedder"] = {"dir": EMBEDDER_DIR, "sha256": _sha256(target / WEIGHTS_FILE)}


def _bundled_embedder(document: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The config with a bundled embedder's path made absolute, after checking its weights."""
    config = document["config"]
    bundled = document.get("embedder")
    if not bundled:
        return config
    weights = directory / bundled["dir"] / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{directory}: embedder weights {bundled['dir']}/{WEIGHTS_FILE} missing"
        )
    if _sha256(weights) != bundled["sha256"]:
        raise CheckpointError(
            f"{directory}: embedder weights {bundled['dir']}/{WEIGHTS_FILE} are truncated or "
            "modified (their sha256 does not match config.json)"
        )
    embedder = {**config.get("embedder", {}), "model_path": str(directory / bundled["dir"])}
    return {**config, "embedder": embedder}


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON document, validated as a routeray router directory."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"router directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a router directory")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a router directory: it has no {CONFIG_FILE}")
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is truncated or not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(
            f'{directory} is not a routeray router: {CONFIG_FILE} lacks "format": "{FORMAT}"'
        )
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written by a newer routeray (format_version "
            f"{document['format_version']} > {FORMAT_VERSION})"
        )
    return document


def load_router(directory: str | Path, **options: Any) -> BaseRouter:
    """Load a router directory; `options` are the kind's load options (`LoadOptions`), the
    inference-time choices such as the device or the model pair. A directory that records a
    probability curve gives a `CalibratedRouter`, whose scores are P(strong wins); the raw
    scorer is `routers.decision.probability.uncalibrated(router)`.

    CheckpointError for a directory that cannot be loaded; OptionError (a ValueError too) for
    an option the kind does not take or a value it cannot use, raised before any weight is read.
    """
    directory = Path(directory)
    document = read_config(directory)
    try:
        cls = router_class(str(document.get("router")))
    except ValueError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    parsed = cls.parse_load_options(options)
    curve = recorded_probability(document, directory)
    tensors = {}
    if "weights" in document:
        weights = directory / document["weights"]["file"]
        if not weights.is_file():
            raise CheckpointError(f"{directory}: weights file {weights.name} is missing")
        if _sha256(weights) != document["weights"]["sha256"]:
            raise CheckpointError(
                f"{directory}: weights file {weights.name} is truncated or modified "
                "(its sha256 does not match config.json)"
            )
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{directory}: cannot read {weights.name}: {exc}") from exc
    try:
        router = cls.from_checkpoint(_bundled_embedder(document, directory), tensors, parsed)
    except OptionError:
        raise
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{directory}: config or weights do not fit router {document['router']!r}: {exc}"
        ) from exc
    return router if curve is None else CalibratedRouter(router, curve)
