"""Settings of `batch label`: the generate job's models, limits and prices, plus the judge.

strong: {model: gpt-4-1106-preview, base_url: https://api.openai.com/v1,
         api_key: {env: STRONG_API_KEY}}
weak: {kind: vllm, model: mixtral, model_path: /models/mixtral, num_gpus: 2}
judge: {model: gpt-4o}            # keys not given are the strong model's; default: strong
judge_mode: pairwise              # or single; --judge-mode overrides
judge_stage: {requests_per_s: 10, concurrency: 16, batch_size: 64, num_actors: 1}
prices: {strong: {...}, weak: {...}, judge: {input_per_million: 5, output_per_million: 15}}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from backends import BackendConfig, OpenAIBackendConfig
from batch_jobs.answers import StrongStageConfig
from batch_jobs.generate import GenerateConfig
from batch_jobs.judge import JudgeMode
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
        # key, retries and timeouts unless given.
        if isinstance(data, dict) and isinstance(data.get("strong"), dict):
            judge = data.get("judge")
            if isinstance(judge, dict):
                data = {**data, "judge": {**data["strong"], **judge}}
        return data

    @model_validator(mode="after")
    def _has_judge(self) -> LabelConfig:
        if self.judge is None and self.strong is None:
            raise ValueError("a label config needs a `judge` section, or a `strong` one to judge")
        return self

    @property
    def judge_backend(self) -> OpenAIBackendConfig:
        judge = self.judge or self.strong
        assert judge is not None  # _has_judge
        return judge

    def backend(self, side: str) -> Any:
        """The model that answers `side` (`strong` or `weak`), or None."""
        return self.strong if side == "strong" else self.weak
