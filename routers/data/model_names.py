"""One spelling per model across every data source, and the one rule for which models count
as the strong class and the weak class."""

from __future__ import annotations

import re

# Spellings that the generic rules below cannot reconcile. Keys are already rule-normalised.
_ALIASES = {
    "llama-2-70b-chat-hf": "llama-2-70b-chat",
    "llama-2-13b-chat-hf": "llama-2-13b-chat",
    "llama-2-7b-chat-hf": "llama-2-7b-chat",
    "gpt-4": "gpt-4-0613",
    "claude": "claude-1",
    # RouterBench's spellings (routerbench_0shot.pkl columns) of models the sources name
    # otherwise. RouterBench called Together's Mistral-7B-Instruct-v0.1 and
    # Mixtral-8x7B-Instruct-v0.1 `...-chat`, and Anthropic's models by their API names of 2023.
    "claude-v1": "claude-1",
    "claude-v2": "claude-2",
    "claude-instant-v1": "claude-instant-1",
    "mixtral-8x7b-chat": "mixtral-8x7b-instruct-v0.1",
    "mistral-7b-chat": "mistral-7b-instruct-v0.1",
    "code-llama-instruct-34b-chat": "codellama-34b-instruct",
    # XSTest's completion files: Llama-2-70b-chat with its original system prompt and without.
    "llama2orig": "llama-2-70b-chat",
    "llama2new": "llama-2-70b-chat",
    # ... and its Mistral-7B-Instruct-v0.1 without a system prompt (`mistralguard`, with
    # Mistral's guardrail prompt, is a configuration of its own).
    "mistralinstruct": "mistral-7b-instruct-v0.1",
}

# A quantised or re-packaged copy is the same model: `TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF`
# is Mixtral-8x7B-Instruct-v0.1.
_PACKAGING = re.compile(r"-(gguf|awq|gptq(-[a-z0-9-]+)?|exl2|mlx|bf16|fp16)$")

# The pair the paper routes between, and the defaults everywhere in routeray.
STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mixtral-8x7b-instruct-v0.1"

# The classes a table's models are sorted into when it becomes strong-vs-weak labels: the
# routed pair and their siblings (other snapshots of GPT-4 Turbo and GPT-4; the other open
# model of the paper's time and size class, Llama-2-70B-chat). GPT-4o and later are not GPT-4
# class: they would make the strong model look better than the one routed to.
STRONG_CLASS = frozenset(
    {
        STRONG_MODEL,
        "gpt-4-0125-preview",
        "gpt-4-turbo-preview",
        "gpt-4-turbo-2024-04-09",
        "gpt-4-0613",
        "gpt-4-0314",
    }
)
WEAK_CLASS = frozenset({WEAK_MODEL, "llama-2-70b-chat"})


def normalize_model_name(name: str) -> str:
    """`gpt4_1106_preview`, `gpt-4-1106-preview` -> `gpt-4-1106-preview`;
    `mistralai/Mixtral-8x7B-Instruct-v0.1`, `TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF`,
    `mistralai__Mixtral-8x7B-Instruct-v0.1` -> `mixtral-8x7b-instruct-v0.1`;
    `Meta-Llama-3.1-8B-Instruct@hyperbolic` -> `llama-3.1-8b-instruct`."""
    # An organisation before `/` (or `__`, how some leaderboards flatten it into a file name),
    # and a serving provider after `@`, are not part of the model.
    n = re.split(r"/|__", name.strip())[-1].split("@", 1)[0].lower()
    # A lone version digit pair only: Meta-Llama-3_1 -> 3.1, but gpt4_1106 stays a date.
    n = re.sub(r"\b(\d)_(\d)\b", r"\1.\2", n)
    n = n.replace("_", "-").replace(" ", "-")
    n = re.sub(r"^gpt35(?=-|$)", "gpt-3.5", n)
    n = re.sub(r"^gpt4(?=-|$)", "gpt-4", n)
    n = re.sub(r"^meta-(?=llama)", "", n)
    n = _PACKAGING.sub("", n)
    return _ALIASES.get(n, n)


def model_class(name: str) -> str | None:
    """ "strong", "weak" or None for a model under any spelling."""
    normal = normalize_model_name(name)
    if normal in STRONG_CLASS:
        return "strong"
    if normal in WEAK_CLASS:
        return "weak"
    return None


def model_index(models: list[str], name: str) -> int:
    """Where `name` (any spelling) stands in a router's trained model list."""
    normal = normalize_model_name(name)
    if normal not in models:
        raise ValueError(
            f"model {name!r} was not in this router's training data; "
            f"choose among: {', '.join(models)}"
        )
    return models.index(normal)
