"""Static embeddings: one vector per vocabulary token, averaged over a prompt (model2vec).

The table is distilled from a sentence-transformers encoder (the default MiniLM) by running
each vocabulary token through it once, then reducing the vectors with PCA and weighting them
by token frequency. Encoding a prompt is then tokenisation plus a mean of table rows: no
transformer pass, so the cost per prompt is about that of the tokenizer alone. No window
either: every token of a long prompt counts, the decisive tail included.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routers.text.hf import offline

MODEL_TYPE = "model2vec"


def is_static_model(path: str | Path | None) -> bool:
    """Whether `path` is a directory holding a model2vec static model."""
    if path is None:
        return False
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


class StaticEmbedder:
    """Encodes prompts to L2-normalised float32 vectors with a model2vec static model; the same
    interface as `routers.text.embedders.Embedder`."""

    def __init__(self, model_path: str | Path, *, batch_size: int = 4096) -> None:
        offline()
        from model2vec import StaticModel

        self.model_path = str(model_path)
        self.name = Path(model_path).name
        self.model = StaticModel.from_pretrained(self.model_path, force_download=False)
        self.dim = int(self.model.dim)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # model2vec fans out to a process pool above a number of sentences; inside a Ray actor
        # or a Serve replica that would oversubscribe the CPUs the scheduler gave us.
        vectors = self.model.encode(
            list(texts), max_length=None, batch_size=self.batch_size, use_multiprocessing=False
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # A prompt of only unknown tokens has no vector; zero stays zero.
        return vectors / np.where(norms > 0, norms, 1.0)

    def cache_key(self) -> str:
        # By content, not name: every router carries its table in a directory named
        # `embedder/`, and two different tables of one size must not share cached vectors.
        weights = Path(self.model_path) / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        return f"static-{self.dim}-{digest}"


def distill_static(
    source: str | Path,
    output: str | Path,
    dims: int = 256,
    dtype: str = "int8",
    source_name: str | None = None,
) -> Path:
    """Distil a static model from the sentence-transformers model at `source` into `output`,
    its table stored as `dtype` (int8 halves float16's size; what that costs in routing is
    measured in docs/BENCHMARKS.md).

    Runs locally from the encoder's own vocabulary: nothing is downloaded."""
    offline()
    from model2vec import StaticModel
    from model2vec.distill import distill

    output = Path(output)
    distill(model_name=str(source), pca_dims=dims).save_pretrained(str(output))
    quantized = StaticModel.from_pretrained(str(output), force_download=False, quantize_to=dtype)
    quantized.save_pretrained(str(output))
    config_path = output / "config.json"
    config = json.loads(config_path.read_text())
    # model2vec records the source as given (an absolute path on this machine).
    config["tokenizer_name"] = source_name or Path(source).name
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    # A generated model card whose links point at the hub under the directory's name.
    (output / "README.md").unlink(missing_ok=True)
    for path in output.iterdir():
        os.chmod(path, 0o644)
    return output
