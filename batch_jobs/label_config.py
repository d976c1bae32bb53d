"""Settings of `batch label`: the generate job's models, limits and prices, plus the judge.

strong: {model: gpt-4-1106-preview, base_url: https://api.openai.com/v1,
         api_key: {env: STRONG_API_KEY}}
weak: {kind: vllm, model: mixtral, model_path: /models/mixtral, num_gpus: 2}
judge: {model: gpt-4o}            # keys not given are the strong model's; default: strong
judge_mode: pairwise              # or single; --judge-mode overrides
judge_stage: {requests_per_s: 10, concurrency: 16, batch_size: 64, num_actors: 1}
prices: {strong: {...}, weak: {...}, judge: {input_per_million: 5, output_per_million: 15}}

Or, to label for an N-model router (batch_jobs.label_models), list the models under `backends:`
(as `batch generate` and the serve config do) instead of a strong and a weak one: every listed
model answers every prompt and the judge grades each answer alone (judge_mode single):

backends:                         # one or more; `kind` defaults to openai here
  - {model: gpt-4o, base_url: https://api.openai.com/v1, api_key: {env: OPENAI_API_KEY}}
  - {model: gpt-4o-mini, base_url: https://api.openai.com/v1, api_key: {env: OPENAI_API_KEY}}
  - {kind: vllm, model: llama-3.1-8b-instruct, model_path: /models/llama-3.1-8b, num_gpus: 1}
judge: {model: gpt-4o}            # keys not given are the listed API model's of that name
                                  # (else the first listed API's)
api_stage: {requests_per_s: 10, concurrency: 16, batch_size: 64}   # each API model's stage
engine_stage: {num_actors: 1, batch_size: 64}                      # each vLLM model's stage
prices: {models: {gpt-4o: {...}, gpt-4o-mini: {...}, llama-3.1-8b-instruct: {...}},
         judge: {...}}                # every listed model priced; the judge under judge or models
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from backends import BackendConfig, OpenAIBackendConfig, VLLMBackendConfig
from batch_jobs.answers import StageConfig, StrongStageConfig
from batch_jobs.generate import GenerateConfig
from batch_jobs.judge import JudgeMode
from routers.data.model_names import normalize_model_name
from routers.prices import ModelPrice, Prices


class LabelPrices(Prices):
    """The generate job's prices plus the judge's (default: the strong model's)."""

    judge: ModelPrice | None = None

    @property
    def judge_price(self) -> ModelPrice:
        return self.judge or self.strong


class LabelConfig(GenerateConfig):
    """Both answering models are optional here: a side whose answers are all in the input
    (`weak_response`, `strong_response`) needs no model. The judge is an OpenAI-compatible
    API; its section defaults to the strong model's, key by key."""

    strong: OpenAIBackendConfig | None = None
    weak: BackendConfig | None = None
    judge: OpenAIBackendConfig | None = None
    prices: LabelPrices = LabelPrices()
    judge_mode: JudgeMode = "pairwise"
    judge_max_tokens: int = Field(
        default=512, ge=1, description="Room for the judge's justification and verdict."
    )
    judge_stage: StrongStageConfig = StrongStageConfig()

    @model_validator(mode="before")
    @classmethod
    def _judge_from_strong(cls, data: Any) -> Any:
        # `judge: {model: gpt-4o}` means the strong API with another model: same base URL,
        # key, retries and timeouts unless given. With `backends`, the listed API model of the
        # judge's name (else the first listed API) plays the strong model's part.
        if not isinstance(data, dict):
            return data
        judge = data.get("judge")
        if data.get("backends"):
            if data.get("judge_mode", "single") != "single":
                raise ValueError(BACKENDS_JUDGE_MODE)
            listed = [
                {"kind": "openai", **b} if isinstance(b, dict) else b for b in data["backends"]
            ]
            data = {**data, "backends": listed, "judge_mode": "single"}
            apis = [b for b in listed if isinstance(b, dict) and b["kind"] == "openai"]
            if isinstance(judge, dict):
                named = [b for b in apis if b.get("model") == judge.get("model")]
                data["judge"] = {**(named or apis or [{}])[0], **judge}
        elif isinstance(data.get("strong"), dict) and isinstance(judge, dict):
            data = {**data, "judge": {**data["strong"], **judge}}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> LabelConfig:
        # Replaces the generate job's check of the same name: here a side may have no model
        # (its answers are in the input), and one listed backend is enough (labels for a
        # model the router lacks).
        if self.backends:
            self._check_backends()
        elif self.judge is None and self.strong is None:
            raise ValueError("a label config needs a `judge` section, or a `strong` one to judge")
        return self

    def _check_backends(self) -> None:
        if self.strong is not None or self.weak is not None:
            raise ValueError(
                "a label config lists its models under `backends:` or names a `strong` and a "
                "`weak` one, not both"
            )
        if self.judge is None:
            raise ValueError(
                "a label config with `backends:` needs a `judge` section (e.g. `judge: {model: "
                "gpt-4o}` to judge with a listed API model's settings)"
            )
        names = [normalize_model_name(m) for m in self.models]
        if len(set(names)) < len(names):
            raise ValueError(f"`backends` names one model twice: {self.models}")
        self.prices.for_models(self.models)  # each one priced, or a ValueError saying how
        self.backends_judge_price  # noqa: B018 (raises when the judge has no price)

    def stage_for(self, backend: OpenAIBackendConfig | VLLMBackendConfig) -> StageConfig:
        """A listed model's answering stage: `api_stage` for an API, `engine_stage` for vLLM."""
        return self.engine_stage if isinstance(backend, VLLMBackendConfig) else self.api_stage

    @property
    def backends_judge_price(self) -> ModelPrice:
        """The judge's price when labelling `backends`: `prices.judge`, else its model's price
        under `prices.models`."""
        if self.prices.judge is not None:
            return self.prices.judge
        try:
            return self.prices.for_model(self.judge_backend.model)
        except ValueError as exc:
            raise ValueError(f"the judge has no price: give `prices.judge`, or ({exc})") from exc

    @property
    def judge_backend(self) -> OpenAIBackendConfig:
        judge = self.judge or self.strong
        assert judge is not None  # _has_judge
        return judge

    def backend(self, side: str) -> Any:
        """The model that answers `side` (`strong` or `weak`), or None."""
        return self.strong if side == "strong" else self.weak


BACKENDS_JUDGE_MODE = (
    "a label config with `backends:` grades each answer alone: judge_mode single (pairwise "
    "compares two answers, the two-model job's `strong` and `weak`)"
)
