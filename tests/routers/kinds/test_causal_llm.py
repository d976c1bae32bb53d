"""CausalLLMRouter on a tiny random-weight Llama (routeray.demo.tiny_model): prompt layout, the
five-score-token softmax, training (full and LoRA), checkpoints and long prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from routeray.demo.tiny_model import build_tiny_model
from routers.checkpoint import load_router, save_router
from routers.data.ratings import classifier_labels
from routers.kinds.causal_llm import (
    LABEL_TARGETS,
    SCORES,
    CausalLLMRouter,
    CausalLoadOptions,
    PromptLayout,
    load_tokenizer,
    prompt_targets,
)
from routers.protocol import OptionError

# A short instruction keeps the tiny model's prompts ~30 tokens, so training takes seconds;
# the default instruction is exercised by the layout test.
SHORT = {
    "system_prompt": "Rate how well the weak assistant answers, 1-5.",
    "user_template": "{query}",
}
_rng = np.random.default_rng(7)
_MATH = [
    "Compute {a} times {b}.",
    "What is {a} plus {b}?",
    "Solve for x: {a}x + {b} = 0.",
    "Calculate {a} squared minus {b}.",
]
_CHAT = [
    "Hello {n}, how are you today?",
    "Say something nice to {n}.",
    "Good morning {n}! Any fun plans?",
    "Tell {n} a joke about cats.",
]
_NAMES = ["Ana", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]


def _math(n: int) -> list[str]:
    return [
        _MATH[i % len(_MATH)].format(a=int(_rng.integers(10, 999)), b=int(_rng.integers(10, 999)))
        for i in range(n)
    ]


def _chat(n: int, offset: int = 0) -> list[str]:
    return [
        _CHAT[i % len(_CHAT)].format(n=_NAMES[(i // len(_CHAT) + offset) % len(_NAMES)] + str(i))
        for i in range(n)
    ]


TRAIN_MATH, HELD_MATH = _math(24), _math(6)
TRAIN_CHAT, HELD_CHAT = _chat(24), _chat(6, offset=5)


def synthetic_battles() -> pd.DataFrame:
    """Three models; on math the strong model wins, on chit-chat the weak one wins or ties."""
    rows = []
    for p in TRAIN_MATH:
        rows += [(p, "strong", "weak", "a"), (p, "weak", "strong", "b")]
        rows += [(p, "mid", "weak", "a"), (p, "strong", "mid", "a")]
    for p in TRAIN_CHAT:
        rows += [(p, "strong", "weak", "b"), (p, "weak", "strong", "a")]
        rows += [(p, "mid", "weak", "tie"), (p, "strong", "mid", "tie")]
    df = pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner"])
    df["source"], df["weight"] = "synthetic", 1.0
    return df


COMMON = dict(
    seed=0,
    batch_size=8,
    holdout=0.2,
    strong_model="strong",
    weak_model="weak",
    **SHORT,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """A tiny model gains nothing from threads, and on a busy 2-core machine they spin against
    each other (several times slower); restored so other modules keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("causal") / "tiny-llama", seed=0))


@pytest.fixture(scope="module")
def full_router(tiny) -> CausalLLMRouter:
    return CausalLLMRouter.train(
        synthetic_battles(), base_model=tiny, lora=False, lr=3e-3, epochs=4, **COMMON
    )


@pytest.fixture(scope="module")
def lora_router(tiny) -> CausalLLMRouter:
    # The CLI's --embedder arrives as embedder={"model_path": ...}: accepted as the base.
    return CausalLLMRouter.train(
        synthetic_battles(), embedder={"model_path": tiny}, lora="true", lr=2e-2, epochs=6, **COMMON
    )


def test_missing_base_model_is_a_clear_error():
    with pytest.raises(ValueError, match="base_model"):
        CausalLLMRouter.train(synthetic_battles())


def test_prompt_layout_finds_the_score_tokens(tiny):
    tokenizer = load_tokenizer(tiny)
    # The tiny tokenizer splits "[[1]]" into five tokens; the score is the digit after "[[".
    assert len(tokenizer("[[1]]", add_special_tokens=False)["input_ids"]) > 1
    for chat in (True, False):
        layout = PromptLayout(tokenizer, use_chat_template=chat)
        assert tokenizer.convert_ids_to_tokens(layout.score_ids) == list(SCORES)
        (ids,) = layout.encode_queries(["What is 2 plus 2?"], budget=1024, head=64)
        text = tokenizer.decode(ids)
        assert "What is 2 plus 2?" in text and "Rate on a scale from 1 to 5" in text
        assert text.endswith("[[")
    templated = tokenizer.decode(PromptLayout(tokenizer).prefix_ids)
    assert templated.startswith("<s><|system|>")  # the tokenizer's own chat template


def test_labels_pair_battles_and_soft_targets():
    battles = synthetic_battles()
    # A model above `strong` puts it out of tier 1; its battles with `weak` still count.
    extra = pd.DataFrame(
        [(p, "top", m, "a", "synthetic", 1.0) for p in TRAIN_MATH for m in ("strong", "mid")],
        columns=battles.columns,
    )
    labels = classifier_labels(pd.concat([battles, extra]), "strong", "weak")
    is_pair = battles["model_a"].isin(["strong", "weak"]) & battles["model_b"].isin(
        ["strong", "weak"]
    )
    # Every strong-weak battle, plus top's (tier 1) over lower tiers; strong-mid no longer.
    assert len(labels) == is_pair.sum() + len(extra)
    assert (labels["label"] == "strong").sum() == 2 * len(TRAIN_MATH) + len(extra)
    labels = classifier_labels(battles, "strong", "weak")
    targets = prompt_targets(labels).set_index("prompt")
    # Math: strong beats weak twice and mid once -> all mass on [[1]], weight 3.
    np.testing.assert_allclose(targets.loc[TRAIN_MATH[0], "target"], LABEL_TARGETS["strong"])
    assert targets.loc[TRAIN_MATH[0], "weight"] == 3.0
    # Chit-chat: weak wins twice, ties mid once -> P(strong) target 1/6.
    chat = targets.loc[TRAIN_CHAT[0], "target"]
    np.testing.assert_allclose(chat, [0, 0, 1 / 6, 1 / 6, 2 / 3])
    assert 1 - chat[3:].sum() == pytest.approx(1 / 6)


def test_full_finetune_learns(full_router):
    hp = full_router.hyperparameters
    assert hp["finetune"] == "full" and hp["lr"] == 3e-3 and hp["validation_prompts"] > 0
    assert hp["train_loss"][-1] < hp["train_loss"][0]
    assert hp["best_validation_loss"] < 0.8 * hp["initial_validation_loss"]
    math, chat = full_router.score(HELD_MATH), full_router.score(HELD_CHAT)
    assert math.min() > chat.max()
    assert math.mean() - chat.mean() > 0.4


def test_lora_learns(lora_router, tiny):
    hp = lora_router.hyperparameters
    assert hp["finetune"] == "lora" and lora_router.base_model == tiny
    assert hp["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert hp["best_validation_loss"] < 0.8 * hp["initial_validation_loss"]
    math, chat = lora_router.score(HELD_MATH), lora_router.score(HELD_CHAT)
    assert math.min() > chat.max()
    assert math.mean() - chat.mean() > 0.3


def test_score_is_one_minus_p_score_at_least_4(full_router):
    prompts = [HELD_MATH[0], HELD_CHAT[0], "x", "A much longer prompt " * 20]
    scores = full_router.score(prompts)
    assert scores.dtype == np.float64 and scores.shape == (4,)
    assert ((scores >= 0) & (scores <= 1)).all()
    model, ids = full_router.model, full_router.encode(prompts)
    expected = []
    with torch.no_grad():
        for row in ids:  # one prompt at a time: no padding at all
            logits = model(input_ids=torch.tensor([row])).logits[0, -1].double()
            p = torch.softmax(logits[full_router.layout.score_ids], dim=-1)
            expected.append(1.0 - float(p[3] + p[4]))
    # Batched with left padding equals one at a time.
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert full_router.route(prompts, 0.5).tolist() == (scores >= 0.5).tolist()
    assert full_router.score([]).shape == (0,)


def test_lora_checkpoint_is_adapter_only_and_roundtrips(lora_router, tiny, tmp_path):
    directory = save_router(lora_router, tmp_path / "lora")
    config = json.loads((directory / "config.json").read_text())["config"]
    assert config["finetune"] == "lora" and config["base_model"] == tiny
    assert "hf_config" not in config
    tensors = lora_router.tensors()
    assert tensors and all("lora_" in name for name in tensors)
    adapter = sum(t.numel() for t in tensors.values())
    base = sum(p.numel() for p in lora_router.model.parameters()) - adapter
    assert adapter < 0.05 * base
    base_bytes = sum(f.stat().st_size for f in Path(tiny).glob("*.safetensors"))
    assert (directory / "model.safetensors").stat().st_size < 0.2 * base_bytes

    prompts = HELD_MATH + HELD_CHAT
    loaded = load_router(directory)
    assert isinstance(loaded, CausalLLMRouter) and loaded.finetune == "lora"
    np.testing.assert_array_equal(loaded.score(prompts), lora_router.score(prompts))
    # A moved base model: point the checkpoint at the new place.
    moved = shutil.copytree(tiny, tmp_path / "moved-base")
    relocated = load_router(directory, base_model=str(moved), batch_size=3)
    # Other batches pad differently: equal up to float rounding.
    np.testing.assert_allclose(relocated.score(prompts), lora_router.score(prompts), atol=1e-6)
    # The adapter is what makes the difference: the bare base scores otherwise.
    bare = CausalLLMRouter.from_checkpoint(
        config, {k: torch.zeros_like(v) for k, v in tensors.items()}, CausalLoadOptions()
    )
    assert not np.allclose(bare.score(prompts), lora_router.score(prompts), atol=1e-3)


def test_full_checkpoint_roundtrips(full_router, tmp_path):
    directory = save_router(full_router, tmp_path / "full")
    config = json.loads((directory / "config.json").read_text())["config"]
    assert config["finetune"] == "full" and config["hf_config"]["model_type"] == "llama"
    assert len(full_router.tensors()) == len(full_router.model.state_dict())
    prompts = HELD_MATH + HELD_CHAT
    loaded = load_router(directory)
    np.testing.assert_array_equal(loaded.score(prompts), full_router.score(prompts))
    with pytest.raises(ValueError, match="trained for strong_model"):
        load_router(directory, strong_model="someone-else")
    with pytest.raises(OptionError, match="has no load option 'temperature'"):
        load_router(directory, temperature=0.5)


def test_long_prompt_reads_the_final_question(full_router):
    tokenizer = full_router.tokenizer
    filler = " ".join(f"Passage line {i} about routing models and tokens." for i in range(130))
    assert len(tokenizer(filler, add_special_tokens=False, verbose=False)["input_ids"]) > 2500
    math_q, chat_q = HELD_MATH[1], HELD_CHAT[1]
    prompts = [f"{filler}\n\n{math_q}", f"{filler}\n\n{chat_q}"]
    ids = full_router.encode(prompts)
    suffix = full_router.layout.suffix_ids
    assert len(ids[0]) == full_router.layout.template_tokens + full_router.max_query_tokens
    # The query keeps its head and its end: the question is read, right before the suffix.
    query = ids[0][len(full_router.layout.prefix_ids) : len(ids[0]) - len(suffix)]
    assert tokenizer.decode(query[:64]).startswith("Passage line 0 about routing")
    assert tokenizer.decode(query).endswith(math_q)
    long_math, long_chat = full_router.score(prompts)
    # Only the final question differs (a head-only cut would give equal scores). The model
    # was trained on short prompts only, so the gap is small here, but it is there.
    assert abs(long_math - long_chat) > 1e-4
    # The middle of the passage is cut away: editing it changes nothing.
    edited = filler.replace("Passage line 60 ", "Edited text 60 ")
    assert edited != filler
    edited_prompts = [f"{edited}\n\n{math_q}", prompts[1]]
    assert full_router.encode(edited_prompts) == ids
    assert full_router.score(edited_prompts)[0] == long_math
