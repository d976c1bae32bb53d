"""Causal-LLM classifier router (RouteLLM's `causal_llm`): a causal language model that is
asked, in an instruction prompt, how well a weak assistant would answer the query, and that
answers with a score token `[[1]]` .. `[[5]]`.

Scoring: the prompt ends with the answer's opening `[[`; the next-token logits at the last
position, restricted to the five score tokens and softmaxed over just those five, give
P(score = k), and P(strong wins) = 1 - P(score >= 4).

Labels (from battles, as the paper): every model is rated by Bradley-Terry, models are grouped
into tiers, and a battle between a tier-1 model and a lower tier counts as strong vs weak
(`ratings.strong_weak_labels`); battles of exactly the configured strong/weak pair count too,
whatever their tiers. A battle becomes a target over the five scores:

    strong won -> [[1]]        tie -> half [[3]], half [[4]]        weak won -> [[5]]

so the target P(strong wins) is 1, 1/2 and 0: a tie counts half a win, as in the
Bradley-Terry ratings and the MF router. Battles are grouped by prompt into one soft target
(their weighted mean) with the prompt's total battle weight, which is exactly the weighted
per-battle cross-entropy at a fraction of the forward passes. The loss is cross-entropy at the
answer position only, over the five score tokens (the same softmax that scoring uses).

Fine-tuning is LoRA (peft; the attention projections, found by name, else every Linear layer)
or full. A LoRA checkpoint holds only the adapter tensors and names the base model's path; a
full fine-tune holds the whole state dict and the HF model config. Either way the tokenizer is
read from the base path, which `base_model=` in `load_router` can point elsewhere.

Training on a real model, on a GPU host (the base model must be a local directory):

    routeray train --router causal_llm \\
        --param base_model=/models/Meta-Llama-3-8B-Instruct \\
        --param lora=true --param dtype=bfloat16 --output out/causal

Memory: a LoRA or full fine-tune of a large model needs a GPU host; with
`--param gradient_checkpointing=true` activations are recomputed instead of stored. bf16
weights lose small updates at lr 1e-5, so LoRA is the recommended way for large models; a full
fine-tune with epochs > 1 also keeps a copy of the best weights in host memory.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from routers.data.model_names import STRONG_MODEL, WEAK_MODEL, normalize_model_name
from routers.data.ratings import CLASS_LABELS, aggregate_labels, classifier_labels
from routers.protocol import BaseRouter, LoadOptions
from routers.text.batching import CAUSAL_LM_BATCH_SIZE
from routers.text.hf import (
    DeviceName,
    DtypeName,
    dtype_name,
    require_local_dir,
    resolve_device,
    resolve_dtype,
)
from routers.text.tokens import head_tail
from routers.training.loop import fit_epochs, seed_everything, warmup_decay_schedule
from routers.training.splits import grouped_split

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are an expert evaluator of AI assistants. Given a user's question, predict how good "
    "an answer a capable but weaker AI assistant would give, judged on helpfulness, "
    "relevance, accuracy, depth and detail. Think about how much knowledge, reasoning and "
    "skill the question needs. Rate on a scale from 1 to 5:\n"
    "1-2: the weaker assistant will struggle; a stronger model is needed.\n"
    "3: the weaker assistant's answer will be adequate but not strong.\n"
    "4-5: the weaker assistant will answer very well.\n"
    'Reply with your rating only, formatted as "[[rating]]", for example "[[3]]".'
)
USER_TEMPLATE = "[Question]\n{query}\n[End of question]\n\nYour rating:"
# The answer opens with this; the next token is the score.
ANSWER_PREFIX = "[["
SCORES = ("1", "2", "3", "4", "5")
# Scores at or above this mean the weak model is good enough: P(strong) = 1 - P(score >= 4).
WEAK_OK_SCORE = 4
# Learning-rate warm-up, as a fraction of all steps: the usual share for LLM fine-tuning.
WARMUP = 0.03
# Target distribution over scores 1..5 per strong-vs-weak label (see the module docstring).
LABEL_TARGETS: dict[str, tuple[float, ...]] = {
    "strong": (1.0, 0.0, 0.0, 0.0, 0.0),
    "tie": (0.0, 0.0, 0.5, 0.5, 0.0),
    "weak": (0.0, 0.0, 0.0, 0.0, 1.0),
}
# Stands in for the query while the prompt template is rendered, so the text around it can be
# tokenized once; no whitespace, because some chat templates trim message content.
_QUERY_SLOT = "ROUTERAYQUERYSLOT"
# Attention projections worth adapting, most specific first; the first group whose names all
# occur among a model's Linear layers is used (q/v as in the LoRA paper).
_LORA_TARGETS = (
    ("q_proj", "v_proj"),
    ("qkv_proj",),
    ("query_key_value",),
    ("c_attn",),
    ("Wqkv",),
    ("query", "value"),
)


def _flag(value: bool | str | int) -> bool:
    """A boolean option that may arrive as text from the command line."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _require_local(path: str | Path) -> str:
    return require_local_dir(path, "causal_llm")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_require_local(path), local_files_only=True)


def _causal_lm_class(hf_config: Any) -> type[PreTrainedModel]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]


def load_base_model(path: str | Path, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    # device_map loads the weights straight onto the device instead of staging them on host.
    return AutoModelForCausalLM.from_pretrained(
        _require_local(path), local_files_only=True, dtype=dtype, device_map=str(device)
    )


class PromptLayout:
    """Token ids around the query: `prefix + query + suffix`, where the suffix ends with the
    answer's opening `[[` and `score_ids` are the five tokens that may come next.

    The template is rendered once with a placeholder and split there, so each prompt costs
    one tokenization of its query alone, and truncating the query never cuts the template.
    A score written as `[[3]]` need not be one token: for each digit the text `suffix + digit`
    is tokenized, the longest prefix shared by all five is the suffix, and the first token
    after it (which must differ between the five) is that score's token.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        system_prompt: str = SYSTEM_PROMPT,
        user_template: str = USER_TEMPLATE,
        use_chat_template: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        # str.replace, not format: braces in an instruction are text, not fields.
        user = user_template.replace("{query}", _QUERY_SLOT)
        special_prefix: list[int] = []
        self.chat_template = bool(use_chat_template and tokenizer.chat_template)
        if self.chat_template:
            text = _render_chat(tokenizer, system_prompt, user)
        else:
            text = f"{system_prompt}\n\n{user}\n\n"
            # Templated text carries its own BOS; plain text gets the tokenizer's usual ones.
            special_prefix = _special_prefix(tokenizer)
        text += ANSWER_PREFIX
        if text.count(_QUERY_SLOT) != 1:
            raise ValueError("the prompt template must contain {query} exactly once")
        before, after = text.split(_QUERY_SLOT)
        self.prefix_ids = special_prefix + self._encode(before)
        with_scores = [self._encode(after + score) for score in SCORES]
        shared = _common_prefix(with_scores)
        if any(len(ids) <= shared for ids in with_scores):
            raise ValueError("a score digit adds no token after the answer prefix")
        self.suffix_ids = with_scores[0][:shared]
        self.score_ids = [ids[shared] for ids in with_scores]
        if len(set(self.score_ids)) != len(SCORES):
            raise ValueError(
                "the tokenizer does not give the five scores distinct next tokens: "
                f"{tokenizer.convert_ids_to_tokens(self.score_ids)}"
            )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_queries(self, queries: Sequence[str], budget: int, head: int) -> list[list[int]]:
        """Full prompt ids per query, the query cut to `budget` tokens as head + tail."""
        # split_special_tokens: a query that contains e.g. "<|eot_id|>" as text must not be
        # able to close the user turn and write the rating itself.
        # verbose=False: a query over the model's window is expected (it is cut below), so
        # the tokenizer's "sequence too long" warning would only be noise.
        encoded = self.tokenizer(
            list(queries), add_special_tokens=False, split_special_tokens=True, verbose=False
        )["input_ids"]
        return [self.prefix_ids + head_tail(ids, budget, head) + self.suffix_ids for ids in encoded]

    @property
    def template_tokens(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def _render_chat(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja raises whatever the template's author chose
        # Some templates (Gemma, early Mistral) refuse a system turn: fold it into the user's.
        merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. BOS), read off one encoding."""
    bare = tokenizer("routing", add_special_tokens=False)["input_ids"]
    full = tokenizer("routing", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)
    return list(full[:at])


def _common_prefix(sequences: list[list[int]]) -> int:
    n = min(len(s) for s in sequences)
    for i in range(n):
        if len({s[i] for s in sequences}) > 1:
            return i
    return n


def find_lora_targets(model: torch.nn.Module) -> list[str]:
    """The attention projections' names if known, else every Linear layer but the output
    head (peft matches these as suffixes of module names)."""
    from transformers.pytorch_utils import Conv1D

    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }
    for group in _LORA_TARGETS:
        if all(name in linear for name in group):
            return list(group)
    output = model.get_output_embeddings()
    head = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is output}
    targets = sorted(linear - head)
    if not targets:
        raise ValueError("the model has no Linear layers for LoRA to adapt")
    return targets


def add_lora(model: PreTrainedModel, lora: dict[str, Any]) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype keeps the adapter in float32 over a bf16 base, so that small
    # updates are not rounded away.
    return get_peft_model(model, config, autocast_adapter_dtype=True)


class CausalLoadOptions(LoadOptions):
    """Where, in what precision and at what batch size a loaded router scores, and where its
    base model is now. The pair is fixed at training time: naming it is allowed, naming
    another is an error."""

    base_model: str | None = Field(default=None, min_length=1)
    device: DeviceName | None = None
    dtype: DtypeName | None = None
    batch_size: int | None = Field(default=None, ge=1)
    strong_model: str | None = None
    weak_model: str | None = None


class CausalLLMRouter(BaseRouter):
    kind = "causal_llm"
    load_options: ClassVar[type[LoadOptions]] = CausalLoadOptions

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        base_model: str,
        finetune: str = "lora",
        lora: dict[str, Any] | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        user_template: str = USER_TEMPLATE,
        use_chat_template: bool = True,
        max_query_tokens: int = 1024,
        head_query_tokens: int = 64,
        batch_size: int = CAUSAL_LM_BATCH_SIZE,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
        hyperparameters: dict[str, Any] | None = None,
    ) -> None:
        if finetune not in {"lora", "full"}:
            raise ValueError(f"finetune must be 'lora' or 'full', got {finetune!r}")
        if finetune == "lora" and not lora:
            raise ValueError("a LoRA router needs its LoRA settings")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.base_model = str(base_model)
        self.finetune = finetune
        self.lora = dict(lora or {})
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.layout = PromptLayout(tokenizer, system_prompt, user_template, use_chat_template)
        self.use_chat_template = use_chat_template
        self.head_query_tokens = int(head_query_tokens)
        self.max_query_tokens = int(max_query_tokens)
        # A query longer than the model's positions would leave it reading garbage; the
        # template is fixed, so the query's budget is what is left.
        max_positions = getattr(self._hf_config, "max_position_embeddings", None)
        self._query_budget = self.max_query_tokens
        if max_positions:
            self._query_budget = min(
                self.max_query_tokens, int(max_positions) - self.layout.template_tokens
            )
        if self._query_budget <= 0:
            raise ValueError("the instruction template alone fills the model's context window")
        self.batch_size = int(batch_size)
        self.strong_model = normalize_model_name(strong_model)
        self.weak_model = normalize_model_name(weak_model)
        self.hyperparameters = dict(hyperparameters or {})
        pad = tokenizer.pad_token_id
        # Any id will do for padding: padded positions are masked out.
        self._pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._score_ids = torch.tensor(self.layout.score_ids, dtype=torch.long)
        # HF modules are not re-entrant across threads (Serve replicas may call concurrently).
        self._lock = threading.Lock()

    @property
    def _hf_config(self) -> Any:
        return self._base().config

    def _base(self) -> PreTrainedModel:
        """The transformers model, under any peft wrapper."""
        model = self.model
        get_base = getattr(model, "get_base_model", None)
        return get_base() if get_base is not None else model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pair(self) -> tuple[str, str]:
        return self.strong_model, self.weak_model

    # -- scoring ----------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Model input ids per prompt: template + head/tail-truncated query + `[[`."""
        return self.layout.encode_queries(prompts, self._query_budget, self.head_query_tokens)

    def score_logits(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Next-token logits of the five score tokens after each prompt, (n, 5) float32.

        Left padding puts every prompt's last token at the last position, so one slice reads
        them all; explicit position ids make a prompt's positions independent of its padding
        (as in `generate`), so a prompt scores the same in any batch.
        """
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            if ids:
                input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
                mask[row, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.device
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            # Only the last position's logits: a full (batch, length, vocab) tensor for a 128k
            # vocabulary would dwarf the model's activations.
            logits_to_keep=1,
            use_cache=False,
        )
        return out.logits[:, -1, :].index_select(-1, self._score_ids.to(device)).float()

    def score_distribution(self, prompts: Sequence[str]) -> np.ndarray:
        """P(score = 1..5) per prompt, (n, 5) float64: the softmax over the five score tokens."""
        if len(prompts) == 0:
            return np.zeros((0, len(SCORES)), dtype=np.float64)
        ids = self.encode(prompts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        # Sorted by length, so each batch pads little.
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(ids), len(SCORES)), dtype=np.float64)
        with self._lock, torch.inference_mode():
            self.model.eval()
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                logits = self.score_logits([ids[i] for i in rows]).double()
                out[rows] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        probs = self.score_distribution(prompts)
        weak_ok = probs[:, WEAK_OK_SCORE - 1 :].sum(axis=1)
        return np.clip(1.0 - weak_ok, 0.0, 1.0)

    # -- checkpoint -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "base_model": self.base_model,
            "finetune": self.finetune,
            "system_prompt": self.system_prompt,
            "user_template": self.user_template,
            "use_chat_template": self.use_chat_template,
            "max_query_tokens": self.max_query_tokens,
            "head_query_tokens": self.head_query_tokens,
            "batch_size": self.batch_size,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            # Checked on load: a different tokenizer at the base path would read other tokens.
            "score_token_ids": list(self.layout.score_ids),
            "label_targets": {k: list(v) for k, v in LABEL_TARGETS.items()},
            "hyperparameters": self.hyperparameters,
        }
        if self.finetune == "lora":
            config["lora"] = self.lora
        else:
            config["hf_config"] = self._hf_config.to_dict()
        return config

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.finetune == "lora":
            from peft import get_peft_model_state_dict

            # The adapter only: the base model stays where it is, referenced by path.
            return dict(get_peft_model_state_dict(self.model))
        # Tied weights (lm_head = embed_tokens) share storage, which safetensors refuses;
        # keep the first name, and loading re-ties the rest.
        seen: set[tuple[int, torch.device]] = set()
        out = {}
        for name, tensor in self._base().state_dict().items():
            key = (tensor.untyped_storage().data_ptr(), tensor.device)
            if key in seen:
                continue
            seen.add(key)
            out[name] = tensor
        return out

    @classmethod
    def from_checkpoint(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], options: CausalLoadOptions
    ) -> CausalLLMRouter:
        for side in ("strong_model", "weak_model"):
            wanted = getattr(options, side)
            if wanted and normalize_model_name(wanted) != config[side]:
                raise cls.option_error(
                    side,
                    wanted,
                    f"this causal_llm router was trained for {side}={config[side]!r} "
                    "(train one for that pair)",
                )
        base_model = options.base_model or config["base_model"]
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        tokenizer = load_tokenizer(base_model)
        if config["finetune"] == "lora":
            from peft import get_peft_model_state_dict, set_peft_model_state_dict

            model = add_lora(load_base_model(base_model, device, dtype), config["lora"])
            result = set_peft_model_state_dict(model, tensors)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"adapter tensors not in the model: {result.unexpected_keys}")
            expected = set(get_peft_model_state_dict(model))
            if expected != set(tensors):
                raise RuntimeError(
                    "adapter tensors do not match the LoRA layout: missing "
                    f"{sorted(expected - set(tensors))[:5]}"
                )
        else:
            from transformers import AutoConfig

            hf = dict(config["hf_config"])
            hf_config = AutoConfig.for_model(**hf)
            # from_pretrained with a state dict builds on the meta device (no random init of
            # billions of weights), restores non-persistent buffers and re-ties tied weights.
            model = _causal_lm_class(hf_config).from_pretrained(
                None, config=hf_config, state_dict=tensors, dtype=dtype, device_map=str(device)
            )
        router = cls(
            model,
            tokenizer,
            base_model=base_model,
            finetune=config["finetune"],
            lora=config.get("lora"),
            system_prompt=config["system_prompt"],
            user_template=config["user_template"],
            use_chat_template=config["use_chat_template"],
            max_query_tokens=config["max_query_tokens"],
            head_query_tokens=config["head_query_tokens"],
            batch_size=options.batch_size or config["batch_size"],
            strong_model=config["strong_model"],
            weak_model=config["weak_model"],
            hyperparameters=config.get("hyperparameters"),
        )
        if router.layout.score_ids != list(config["score_token_ids"]):
            raise ValueError(
                f"the tokenizer at {base_model} gives score tokens {router.layout.score_ids}, "
                f"not the trained {config['score_token_ids']}: is it the same base model?"
            )
        return router

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        battles: pd.DataFrame,
        *,
        seed: int = 0,
        embedder: dict[str, Any] | None = None,
        base_model: str | None = None,
        lora: bool | str = True,
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: str | Sequence[str] | None = None,
        epochs: int = 1,
        lr: float | None = None,
        weight_decay: float = 0.0,
        batch_size: int = CAUSAL_LM_BATCH_SIZE,
        max_query_tokens: int = 1024,
        head_query_tokens: int = 64,
        holdout: float = 0.1,
        max_examples: int | None = None,
        n_tiers: int = 10,
        system_prompt: str = SYSTEM_PROMPT,
        user_template: str = USER_TEMPLATE,
        use_chat_template: bool | str = True,
        gradient_checkpointing: bool | str = False,
        device: str | None = None,
        dtype: str | None = None,
        strong_model: str = STRONG_MODEL,
        weak_model: str = WEAK_MODEL,
    ) -> CausalLLMRouter:
        """Fine-tune `base_model` (a local causal LM directory) on the battles' strong-vs-weak
        labels; `lr` defaults to 1e-4 with LoRA and 1e-5 for full fine-tuning. With a
        validation split (`holdout` > 0) the epoch with the lowest validation loss is kept."""
        if base_model is None and embedder:
            # `routeray train --embedder PATH` arrives as embedder={"model_path": PATH}.
            base_model = embedder.get("model_path")
        if not base_model:
            raise ValueError(
                "causal_llm needs a base model: pass base_model=/path/to/local/causal-lm "
                "(CLI: --param base_model=/models/Meta-Llama-3-8B-Instruct)"
            )
        # Options may arrive as text from `--param key=value`; read them as their types.
        use_lora = _flag(lora)
        checkpointing = _flag(gradient_checkpointing)
        epochs, batch_size, n_tiers = int(epochs), int(batch_size), int(n_tiers)
        holdout, weight_decay = float(holdout), float(weight_decay)
        max_examples = int(max_examples) if max_examples is not None else None
        lr = float(lr) if lr is not None else (1e-4 if use_lora else 1e-5)
        seed_everything(seed)

        labels = classifier_labels(battles, strong_model, weak_model, n_tiers)
        counts = labels["label"].value_counts().to_dict()
        examples = prompt_targets(labels)
        if max_examples is not None and len(examples) > max_examples:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(len(examples), max_examples, replace=False))
            examples = examples.iloc[keep].reset_index(drop=True)
        logger.info(
            f"causal_llm: {len(labels)} strong-vs-weak battles ({counts}) over "
            f"{len(examples)} prompts"
        )
        if holdout > 0 and len(examples) > 1:
            train_mask, val_mask = grouped_split(examples["prompt"], holdout, seed)
        else:
            train_mask, val_mask = np.ones(len(examples), bool), np.zeros(len(examples), bool)

        run_device = resolve_device(device)
        run_dtype = resolve_dtype(dtype, run_device)
        logger.info(f"loading {base_model} on {run_device} as {dtype_name(run_dtype)}")
        model = load_base_model(base_model, run_device, run_dtype)
        lora_settings: dict[str, Any] | None = None
        if use_lora:
            if isinstance(lora_target_modules, str):
                targets = [t.strip() for t in lora_target_modules.split(",") if t.strip()]
            else:
                targets = list(lora_target_modules or find_lora_targets(model))
            lora_settings = {
                "rank": int(lora_rank),
                "alpha": float(lora_alpha),
                "dropout": float(lora_dropout),
                "target_modules": targets,
            }
            model = add_lora(model, lora_settings)
        router = cls(
            model,
            load_tokenizer(base_model),
            base_model=str(base_model),
            finetune="lora" if use_lora else "full",
            lora=lora_settings,
            system_prompt=system_prompt,
            user_template=user_template,
            use_chat_template=_flag(use_chat_template),
            max_query_tokens=int(max_query_tokens),
            head_query_tokens=int(head_query_tokens),
            batch_size=batch_size,
            strong_model=strong_model,
            weak_model=weak_model,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info(f"training {trainable:,} of {total:,} parameters ({router.finetune})")

        ids = router.encode(examples["prompt"].tolist())
        targets = torch.tensor(np.stack(examples["target"].to_numpy()), dtype=torch.float32)
        weights = torch.tensor(examples["weight"].to_numpy(), dtype=torch.float32)
        history = _fit(
            router,
            ids,
            targets,
            weights,
            np.flatnonzero(train_mask),
            np.flatnonzero(val_mask),
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed,
            gradient_checkpointing=checkpointing,
        )
        router.hyperparameters = {
            "finetune": router.finetune,
            "lora": lora_settings,
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "seed": seed,
            "holdout": holdout,
            "max_examples": max_examples,
            "n_tiers": n_tiers,
            "dtype": dtype_name(run_dtype),
            "gradient_checkpointing": checkpointing,
            "battles": len(labels),
            "label_counts": {str(k): int(v) for k, v in counts.items()},
            "train_prompts": int(train_mask.sum()),
            "validation_prompts": int(val_mask.sum()),
            **history,
        }
        return router


def prompt_targets(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt: the weighted mean target over scores 1..5 of its battles, and
    their total weight. Weighted cross-entropy is linear in the target, so this is exactly
    the per-battle loss with one forward pass per prompt (and the mean target is the
    prompt's label distribution mapped through `LABEL_TARGETS`)."""
    prompts, dist, weight = aggregate_labels(labels)
    target = dist @ np.array([LABEL_TARGETS[name] for name in CLASS_LABELS])
    return pd.DataFrame({"prompt": prompts, "target": list(target), "weight": weight})


def _batch_loss(
    router: CausalLLMRouter,
    ids: list[list[int]],
    targets: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted cross-entropy of the soft target over the five score tokens."""
    logp = torch.log_softmax(router.score_logits(ids), dim=-1)
    device = logp.device
    losses = -(targets.to(device) * logp).sum(-1)
    w = weights.to(device)
    return (losses * w).sum() / w.sum()


def _evaluate(
    router: CausalLLMRouter,
    ids: list[list[int]],
    targets: torch.Tensor,
    weights: torch.Tensor,
    rows: np.ndarray,
    batch_size: int,
) -> float:
    """Weighted mean loss over `rows`, batched by length."""
    order = rows[np.argsort([len(ids[i]) for i in rows], kind="stable")]
    total, weight = 0.0, 0.0
    router.model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            w = weights[batch]
            loss = _batch_loss(router, [ids[i] for i in batch], targets[batch], w)
            total += float(loss) * float(w.sum())
            weight += float(w.sum())
    return total / weight


def _fit(
    router: CausalLLMRouter,
    ids: list[list[int]],
    targets: torch.Tensor,
    weights: torch.Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    gradient_checkpointing: bool,
) -> dict[str, Any]:
    """AdamW with linear warm-up and decay and gradient clipping, the usual recipe for LLM
    fine-tuning; returns the loss history. With a validation split the best epoch's
    trainable weights are restored at the end."""
    model = router.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    schedule = warmup_decay_schedule(optimiser, steps_per_epoch * epochs, WARMUP)
    if gradient_checkpointing:
        base = router._base()
        base.gradient_checkpointing_enable()
        # With a frozen embedding (LoRA) checkpointed blocks would see no input needing grad.
        base.enable_input_require_grads()
    validate = len(val_rows) > 0
    history: dict[str, Any] = {"train_loss": [], "validation_loss": []}
    if validate:
        initial = _evaluate(router, ids, targets, weights, val_rows, batch_size)
        history["initial_validation_loss"] = initial
        logger.info(f"causal_llm epoch 0: validation loss {initial:.4f}")
    generator = torch.Generator().manual_seed(seed)

    def epoch_batches(_: int) -> list[np.ndarray]:
        order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def batch_loss(rows: np.ndarray) -> tuple[torch.Tensor, float]:
        w = weights[rows]
        return _batch_loss(router, [ids[i] for i in rows], targets[rows], w), float(w.sum())

    def validation() -> dict[str, float]:
        return {"val_loss": _evaluate(router, ids, targets, weights, val_rows, batch_size)}

    fit = fit_epochs(
        model,
        optimiser,
        epoch_batches,
        batch_loss,
        epochs=epochs,
        schedule=schedule,
        clip_norm=1.0,
        validate=validation if validate else None,
        keep_best=True,
        desc="causal_llm",
        unit="prompts",
    )
    if gradient_checkpointing:
        router._base().gradient_checkpointing_disable()
    history["train_loss"] = [record["train_loss"] for record in fit.history]
    history["validation_loss"] = fit.validation_losses
    history["best_epoch"] = fit.best_epoch
    if validate:
        history["best_validation_loss"] = fit.best_loss
    return history
