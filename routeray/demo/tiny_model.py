"""A tiny random-weight Llama chat model, built locally.

No pretrained weights can be downloaded here (and CI has no model hub), yet the vLLM backend
must be exercised end to end. This builds a model that vLLM's CPU backend accepts in seconds:
its answers are noise, but the tokenizer, chat template, engine and serving path are real.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Written last, so its presence means every other file is complete.
_MARKER = "tiny_model.json"
# 2: the chat template renders tools, tool calls and tool results.
_FORMAT_VERSION = 2

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Role markers are single special tokens, so a templated prompt stays short and the markers
# never leak into decoded answers (vLLM skips special tokens when detokenizing). Tools, an
# assistant's tool calls and tool results are rendered too, as a real model's template does,
# so a request's tools reach the prompt instead of vanishing in the template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>\\nTools: ' + (tools | tojson) + eos_token + '\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\\n' + (message['content'] or '') }}"
    "{% if message['tool_calls'] %}{{ message['tool_calls'] | tojson }}{% endif %}"
    "{{ eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
# vLLM's CPU attention rejects head_dim 16; 128 / 4 = 32 is accepted.
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS
INTERMEDIATE_SIZE = 256
MAX_POSITION_EMBEDDINGS = 2048
TARGET_VOCAB_SIZE = 1024

_SYLLABLES = [
    "ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "de", "ba", "gu", "fe", "zo", "wi",
    "the", "and", "ing", "ion", "er", "an", "re", "on", "at", "en", "ed", "is", "it",
]  # fmt: skip
_WORDS = [
    "model", "route", "answer", "question", "strong", "weak", "prompt", "token", "cost",
    "quality", "fast", "slow", "serve", "request", "reply", "hello", "world", "what", "why",
    "how", "please", "explain", "code", "python", "number", "list", "write", "short",
]  # fmt: skip


def _corpus(seed: int, n_lines: int = 600) -> list[str]:
    """Generated text for BPE training: words, made-up words, digits, punctuation, chat turns."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_lines):
        words = []
        for _ in range(rng.randint(3, 14)):
            roll = rng.random()
            if roll < 0.5:
                words.append(rng.choice(_WORDS))
            elif roll < 0.85:
                words.append("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3))))
            else:
                words.append(str(rng.randint(0, 999)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ",", ":"])
        role = ROLE_TOKENS[i % 3]
        lines.append(f"{role}\n{sentence}{EOS}")
    return lines


def _build_tokenizer(seed: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Byte-level: every input string tokenizes, whatever characters it holds.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = [BOS, EOS, PAD, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )


def _make_tokenizer_config_portable(path: Path) -> None:
    """transformers 5 writes its own class name and a list-valued `extra_special_tokens`,
    which transformers 4 (still common beside CUDA vLLM builds) cannot load; the 4.x spelling
    loads in both."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    config.pop("extra_special_tokens", None)
    config["additional_special_tokens"] = ROLE_TOKENS
    config["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(config, indent=2) + "\n")


def _is_complete(directory: Path, seed: int) -> bool:
    marker = directory / _MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("seed") == seed and meta.get("format") == _FORMAT_VERSION


def build_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight Llama causal LM with a chat-templated fast tokenizer.

    Deterministic for a seed; about 1.3 MB; a few seconds. Returns the directory. If a complete
    model built with the same seed is already there, it is returned untouched.
    """
    directory = Path(directory)
    if _is_complete(directory, seed):
        return directory

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # vLLM runs bfloat16 on CPU anyway (it downcasts float32 with a warning per tensor);
        # storing it so also halves the file.
        dtype="bfloat16",
    )
    # Seed the global RNG only for the init, restoring it afterwards so callers' own
    # randomness is unaffected by building a model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    directory.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move files in, so a concurrent reader or a crash never
    # sees a half-written model with a marker.
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".tiny-model-") as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        _make_tokenizer_config_portable(staging / "tokenizer_config.json")
        for item in staging.iterdir():
            # save_pretrained leaves the weights owner-only; a Serve replica running as
            # another user must still read them.
            item.chmod(0o644)
        (directory / _MARKER).unlink(missing_ok=True)
        for item in sorted(staging.iterdir()):
            target = directory / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    (directory / _MARKER).write_text(
        json.dumps({"format": _FORMAT_VERSION, "seed": seed, "kind": "tiny-random-llama"})
    )
    return directory
