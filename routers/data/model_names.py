"""One spelling per model across every data source."""

from __future__ import annotations

import re

# Spellings that the generic rules below cannot reconcile. Keys are already rule-normalised.
_ALIASES = {
    "llama-2-70b-chat-hf": "llama-2-70b-chat",
    "llama-2-13b-chat-hf": "llama-2-13b-chat",
    "llama-2-7b-chat-hf": "llama-2-7b-chat",
    "gpt-4": "gpt-4-0613",
    "claude": "claude-1",
}

# The pair the paper routes between, and the defaults everywhere in routeray.
STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mixtral-8x7b-instruct-v0.1"


def normalize_model_name(name: str) -> str:
    """`gpt4_1106_preview`, `gpt-4-1106-preview` -> `gpt-4-1106-preview`;
    `mistralai/Mixtral-8x7B-Instruct-v0.1` -> `mixtral-8x7b-instruct-v0.1`."""
    n = name.strip().rsplit("/", 1)[-1].lower()
    # A lone version digit pair only: Meta-Llama-3_1 -> 3.1, but gpt4_1106 stays a date.
    n = re.sub(r"\b(\d)_(\d)\b", r"\1.\2", n)
    n = n.replace("_", "-").replace(" ", "-")
    n = re.sub(r"^gpt35(?=-|$)", "gpt-3.5", n)
    n = re.sub(r"^gpt4(?=-|$)", "gpt-4", n)
    return _ALIASES.get(n, n)


def model_index(models: list[str], name: str) -> int:
    """Where `name` (any spelling) stands in a router's trained model list."""
    normal = normalize_model_name(name)
    if normal not in models:
        raise ValueError(
            f"model {name!r} was not in this router's training data; "
            f"choose among: {', '.join(models)}"
        )
    return models.index(normal)
