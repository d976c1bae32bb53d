"""The model-calling stage the batch jobs share: one backend per Ray Data actor (a vLLM engine
or an OpenAI-compatible API, through `backends.make_backend`), asked concurrently under the
job's request rate and concurrency limits, with the backend's own retry policy.

`ChatActor` holds the backend and the limits and turns conversations into `Reply` objects;
a failed call is a `Reply` with an `error`, never an exception, so one bad row never loses its
batch. `AnswerActor` answers one side's prompts; the generate job (`answered_by`, ...) and the
label job (`weak_response`, `strong_response`) only decide which rows it answers and where the
answers go. `chat_stage` puts any of these actors on a Ray Data dataset.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from backends import OpenAIBackendConfig, VLLMBackendConfig, make_backend
from routers.prices import ModelPrice, Prices

# An API client mostly waits on the network; a vLLM engine on a CPU needs its cores.
API_ACTOR_CPUS = 0.25


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_actors: int = Field(default=1, ge=1)
    batch_size: int = Field(default=64, ge=1, description="Rows handed to one actor call.")


class StrongStageConfig(StageConfig):
    requests_per_s: float = Field(default=10.0, gt=0, description="For the whole job.")
    concurrency: int = Field(default=16, ge=1, description="Requests in flight, whole job.")


@dataclass(frozen=True)
class Reply:
    """One chat call's outcome: the text and the tokens the model reported, or why it failed."""

    text: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    def cost(self, price: ModelPrice) -> float:
        return float(price.cost(self.input_tokens, self.output_tokens))


class ChatActor:
    """Base of the Ray Data actors that call a model. The backend's asyncio objects bind to one
    event loop, which runs on a thread for as long as the actor lives; each batch's calls go out
    together, at most `concurrency` at a time and `requests_per_s` a second."""

    def __init__(
        self,
        backend: dict[str, Any],
        requests_per_s: float | None = None,
        concurrency: int = 64,
        who: str = "model",
    ) -> None:
        from aiolimiter import AsyncLimiter

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.backend = make_backend(backend)
        self.model = backend["model"]
        self.who = who  # names the stage in row errors: "strong model gpt-4: HTTP 400 ..."
        self.limiter = AsyncLimiter(requests_per_s, 1.0) if requests_per_s else None
        self.concurrency = concurrency
        self._run(self.backend.start())

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _ask(
        self, messages: list[dict[str, str]], max_tokens: int, temperature: float, gate: Any
    ) -> Reply:
        request = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        async with gate:
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                body = await self.backend.complete(request)
                text = body["choices"][0]["message"].get("content") or ""
            except Exception as exc:  # BackendError, or a body without a message
                return Reply(error=f"{self.who} {self.model}: {exc}")
        usage = body.get("usage") or {}
        return Reply(
            text=text,
            model=body.get("model") or self.model,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
        )

    async def _ask_all(
        self, conversations: list[list[dict[str, str]]], max_tokens: int, temperature: float
    ) -> list[Reply]:
        gate = asyncio.Semaphore(self.concurrency)
        calls = (self._ask(c, max_tokens, temperature, gate) for c in conversations)
        return list(await asyncio.gather(*calls))

    def ask(
        self, conversations: list[list[dict[str, str]]], max_tokens: int, temperature: float
    ) -> list[Reply]:
        """One reply per conversation, in order."""
        if not conversations:
            return []
        return self._run(self._ask_all(conversations, max_tokens, temperature))


class AnswerActor(ChatActor):
    """Answers the prompts of the rows `rows_to_answer` picks with one side's model (`strong`
    or `weak`, priced as that side); `store` puts the replies into the table. Every other row
    passes through unchanged."""

    def __init__(
        self,
        side: str,
        backend: dict[str, Any],
        prompt_column: str,
        prices: dict[str, Any],
        max_tokens: int,
        temperature: float,
        requests_per_s: float | None = None,
        concurrency: int = 64,
    ) -> None:
        super().__init__(backend, requests_per_s, concurrency, who=f"{side} model")
        self.side = side
        self.prompt_column = prompt_column
        self.price: ModelPrice = getattr(Prices.model_validate(prices), side)
        self.max_tokens = max_tokens
        self.temperature = temperature

    def prepare(self, table: pa.Table) -> pa.Table:
        """The table with every column `store` writes (hook; the default adds nothing)."""
        return table

    def rows_to_answer(self, table: pa.Table) -> list[int]:
        raise NotImplementedError

    def store(self, table: pa.Table, rows: list[int], replies: list[Reply]) -> pa.Table:
        raise NotImplementedError

    def __call__(self, table: pa.Table) -> pa.Table:
        table = self.prepare(table)
        rows = self.rows_to_answer(table)
        if not rows:
            return table
        prompts = table.column(self.prompt_column).to_pylist()
        conversations = [[{"role": "user", "content": prompts[i]}] for i in rows]
        return self.store(table, rows, self.ask(conversations, self.max_tokens, self.temperature))


def set_columns(
    table: pa.Table, columns: dict[str, list[Any]], types: dict[str, pa.DataType] | None = None
) -> pa.Table:
    """`table` with these existing columns replaced by new values, of the type `types` gives
    (default: the column's own)."""
    for name, values in columns.items():
        kind = (types or {}).get(name) or table.schema.field(name).type
        table = table.set_column(table.column_names.index(name), name, pa.array(values, kind))
    return table


def chat_stage(
    dataset: Any,
    actor: type[ChatActor],
    backend: OpenAIBackendConfig | VLLMBackendConfig,
    stage: StageConfig,
    **kwargs: Any,
) -> Any:
    """`dataset` mapped through a pool of `actor`s calling `backend`; a stage with rate and
    concurrency limits (StrongStageConfig) splits them between its actors, since the limits
    are for the whole job."""
    import ray

    limits: dict[str, Any] = {}
    if isinstance(stage, StrongStageConfig):
        limits = {
            "requests_per_s": stage.requests_per_s / stage.num_actors,
            "concurrency": max(1, stage.concurrency // stage.num_actors),
        }
    engine = isinstance(backend, VLLMBackendConfig)
    return dataset.map_batches(
        actor,
        fn_constructor_kwargs={"backend": backend.model_dump(), **kwargs, **limits},
        batch_size=stage.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=stage.num_actors),
        num_cpus=backend.num_cpus if engine else API_ACTOR_CPUS,
        num_gpus=backend.num_gpus if engine else 0.0,
    )
