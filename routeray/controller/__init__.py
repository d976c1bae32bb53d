"""routeray inside an application, without Ray: `Controller` (blocking) and `AsyncController`
(asyncio), with the `openai` SDK's surface (`chat.completions.create`) and the endpoint's
routing (the same routers, model names, threshold rule, backends and fallback rule).

    with Controller(strong={...}, weak={...}) as client:
        answer = client.chat.completions.create(model="router-default-30pct", messages=[...])
        answer.routeray.route, answer.routeray.score  # how it was routed

Both run their backends on one private event loop in a background thread (started on first
use, stopped by `close()`), so a blocking call works inside or outside a running event loop,
and `Controller.aio` is the async twin of the same controller (same routers, same backends).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import openai
import yaml
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from backends import OpenAIBackendConfig, VLLMBackendConfig, backend_config
from routeray.controller.core import ControllerCore, Plan
from routeray.controller.loop import LoopThread
from routeray.controller.types import ControllerError, Decision, Routing
from routers.prices import Prices
from routers.shipped import SHIPPED
from serve_app.config import RouterSpec, ServeConfig

BackendSpec = OpenAIBackendConfig | VLLMBackendConfig | Mapping[str, Any] | str | Path
RouterArg = str | Path | Mapping[str, str | Path]
# The openai SDK's transport options: there is no HTTP request here to apply them to.
_TRANSPORT_OPTIONS = ("extra_headers", "extra_query", "timeout")

__all__ = [
    "AsyncChatCompletionStream",
    "AsyncController",
    "ChatCompletionStream",
    "Controller",
    "ControllerError",
    "Decision",
    "Routing",
    "controller_config",
]


# -- configuration ---------------------------------------------------------------------------


def _backend(spec: BackendSpec) -> OpenAIBackendConfig | VLLMBackendConfig:
    """A backend config from a config object, its dict, or a YAML file holding that dict
    (relative paths in the file are relative to the file)."""
    if isinstance(spec, (str, Path)):
        document = yaml.safe_load(Path(spec).read_text()) or {}
        return backend_config(document).with_absolute_paths(Path(spec).resolve().parent)
    if isinstance(spec, Mapping):
        return backend_config(dict(spec))
    return backend_config(spec)


def _router_specs(router: RouterArg | None) -> list[RouterSpec]:
    """`router-<name>` for each router: a shipped router under its shipped names (`default`
    and `fast` are one router), a directory as `default`, a mapping under its own names."""
    if router is None:
        router = "default"
    if isinstance(router, Mapping):
        return [RouterSpec(name=name, path=str(path)) for name, path in router.items()]
    if isinstance(router, str) and router in SHIPPED:
        aliases = [n for n, p in SHIPPED.items() if p == SHIPPED[router] and n != router]
        return [RouterSpec(name=router, path=router, aliases=aliases)]
    return [RouterSpec(name="default", path=str(router))]


def _prices(prices: Prices | Mapping[str, Any] | str | Path | None) -> Prices:
    if prices is None:
        return Prices()
    if isinstance(prices, (str, Path)):
        return Prices.from_yaml(prices)
    return Prices.model_validate(prices)


def controller_config(
    router: RouterArg | None = None,
    *,
    strong: BackendSpec,
    weak: BackendSpec,
    routers: Iterable[RouterSpec | Mapping[str, Any]] | None = None,
    prices: Prices | Mapping[str, Any] | str | Path | None = None,
    fallback_to_weak: bool = True,
    route_on: Literal["last_user", "conversation"] = "last_user",
    log_prompts: bool = False,
    request_timeout_s: float = 120.0,
) -> ServeConfig:
    """The endpoint's own config (`serve_app.config.ServeConfig`) for these arguments: the
    Controller reads the same settings the service does. `routers` takes the serve config's
    `routers:` entries (name, path, threshold, options, aliases) instead of `router`."""
    if routers is not None and router is not None:
        raise ValueError("give router or routers, not both")
    specs = (
        [RouterSpec.model_validate(r) if isinstance(r, Mapping) else r for r in routers]
        if routers is not None
        else _router_specs(router)
    )
    return ServeConfig(
        routers=specs,
        strong=_backend(strong),
        weak=_backend(weak),
        prices=_prices(prices),
        fallback_to_weak=fallback_to_weak,
        route_on=route_on,
        log_prompts=log_prompts,
        request_timeout_s=request_timeout_s,
    )


def _given(value: object) -> bool:
    return value is not openai.NOT_GIVEN and not isinstance(value, openai.Omit)


def _request(model: str, messages: Iterable[Any], stream: bool, kwargs: dict[str, Any]) -> dict:
    """The chat request body for `create`'s arguments, as the openai SDK would send it."""
    kwargs = {name: value for name, value in kwargs.items() if _given(value)}
    for name in _TRANSPORT_OPTIONS:
        if kwargs.pop(name, None) is not None:
            raise TypeError(f"{name} is an HTTP option; the Controller makes no HTTP request")
    extra = kwargs.pop("extra_body", None) or {}
    return {"model": model, "messages": list(messages), "stream": stream, **kwargs, **extra}


def _completion(result: dict[str, Any], routing: Routing) -> ChatCompletion:
    # Built as the SDK builds its responses (no validation of what the model sent); the
    # routing rides along as an extra field, which the SDK's models keep and serialise.
    completion = ChatCompletion.construct(**result)
    completion.routeray = routing  # type: ignore[attr-defined]
    return completion


def _chunk(data: dict[str, Any], routing: Routing) -> ChatCompletionChunk:
    chunk = ChatCompletionChunk.construct(**data)
    chunk.routeray = routing  # type: ignore[attr-defined]
    return chunk


# -- streams ---------------------------------------------------------------------------------


class ChatCompletionStream:
    """The chunks of a streamed answer (`ChatCompletionChunk`s), each as it arrives, like the
    SDK's `Stream`. `routeray` is the decision, known before the first chunk (every chunk
    carries it too); its `cost_usd` is set once the stream has ended. Iterate it to the end,
    or `close()` it (or use `with`) to release the backend's stream early."""

    def __init__(
        self, loop: LoopThread, chunks: AsyncIterator[dict[str, Any]], routing: Routing
    ) -> None:
        self._loop, self._chunks = loop, chunks
        self.routeray = routing
        self._closed = False

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopIteration
        try:
            return _chunk(self._loop.next_item(self._chunks), self.routeray)
        except BaseException:
            self._closed = True  # ended, or failed: the relay has closed the backend's stream
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.run(self._chunks.aclose())  # type: ignore[attr-defined]

    def __enter__(self) -> ChatCompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncChatCompletionStream:
    """`ChatCompletionStream` for `async for`, like the SDK's `AsyncStream`."""

    def __init__(
        self, loop: LoopThread, chunks: AsyncIterator[dict[str, Any]], routing: Routing
    ) -> None:
        self._loop, self._chunks = loop, chunks
        self.routeray = routing
        self._closed = False

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            return _chunk(await self._loop.anext_item(self._chunks), self.routeray)
        except BaseException:
            self._closed = True
            raise

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._loop.run_async(self._chunks.aclose())  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncChatCompletionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- the OpenAI-shaped surface ---------------------------------------------------------------


class _Completions:
    def __init__(self, core: ControllerCore) -> None:
        self._core = core

    def create(
        self, *, model: str, messages: Iterable[Any], stream: bool = False, **kwargs: Any
    ) -> ChatCompletion | ChatCompletionStream:
        """As `OpenAI().chat.completions.create`: a `ChatCompletion`, or with `stream=True` a
        `ChatCompletionStream`. Both carry `.routeray` (a `Routing`). Raises ControllerError
        where the endpoint would answer an HTTP error."""
        core = self._core
        body = _request(model, messages, stream, kwargs)
        plan: Plan = core.loop.run(core.plan(body))
        if plan.stream:
            chunks = core.loop.run(core.open_stream(plan))
            return ChatCompletionStream(core.loop, chunks, plan.routing)
        return _completion(core.loop.run(core.complete(plan)), plan.routing)


class _AsyncCompletions:
    def __init__(self, core: ControllerCore) -> None:
        self._core = core

    async def create(
        self, *, model: str, messages: Iterable[Any], stream: bool = False, **kwargs: Any
    ) -> ChatCompletion | AsyncChatCompletionStream:
        """As `AsyncOpenAI().chat.completions.create` (see `Controller`'s)."""
        core = self._core
        body = _request(model, messages, stream, kwargs)
        plan: Plan = await core.loop.run_async(core.plan(body))
        if plan.stream:
            chunks = await core.loop.run_async(core.open_stream(plan))
            return AsyncChatCompletionStream(core.loop, chunks, plan.routing)
        return _completion(await core.loop.run_async(core.complete(plan)), plan.routing)


class _Chat:
    def __init__(self, completions: _Completions | _AsyncCompletions) -> None:
        self.completions = completions


class _Base:
    """What both twins share: construction, names, and the core they run on."""

    def __init__(
        self,
        router: RouterArg | None = None,
        *,
        strong: BackendSpec | None = None,
        weak: BackendSpec | None = None,
        routers: Iterable[RouterSpec | Mapping[str, Any]] | None = None,
        prices: Prices | Mapping[str, Any] | str | Path | None = None,
        fallback_to_weak: bool = True,
        route_on: Literal["last_user", "conversation"] = "last_user",
        log_prompts: bool = False,
        request_timeout_s: float = 120.0,
        _core: ControllerCore | None = None,
    ) -> None:
        if _core is None:
            if strong is None or weak is None:
                raise TypeError("a Controller needs a strong and a weak backend config")
            config = controller_config(
                router,
                strong=strong,
                weak=weak,
                routers=routers,
                prices=prices,
                fallback_to_weak=fallback_to_weak,
                route_on=route_on,
                log_prompts=log_prompts,
                request_timeout_s=request_timeout_s,
            )
            _core = ControllerCore(config)
        self._core = _core

    @classmethod
    def from_config(cls, config: ServeConfig | str | Path):
        """A controller for a serve config (`serve_config.yaml`, or a ServeConfig): its
        routers, backends, prices, fallback and routing text; the HTTP settings are unused."""
        if not isinstance(config, ServeConfig):
            config = ServeConfig.from_yaml(config)
        return cls(_core=ControllerCore(config))

    @property
    def models(self) -> list[str]:
        """The model names requests may give (as `GET /v1/models` lists them)."""
        return self._core.model_names()

    @property
    def config(self) -> ServeConfig:
        return self._core.config


class Controller(_Base):
    """Routes and answers chat requests in this process, blocking the caller.

    `router`: a shipped router's name (default `"default"`, also served as `router-fast`), a
    router directory (served as `router-default`), or {name: name or directory}; `routers`:
    the serve config's router entries instead. `strong`, `weak`: backend configs
    (`backends.OpenAIBackendConfig`, `backends.VLLMBackendConfig`, their dicts, or a YAML
    file of one). `prices`: for `Routing.cost_usd`. `fallback_to_weak`, `route_on`,
    `log_prompts`, `request_timeout_s`: as in the serve config.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat = _Chat(_Completions(self._core))

    @property
    def aio(self) -> AsyncController:
        """The async twin of this controller: the same routers, backends and event loop."""
        return AsyncController(_core=self._core)

    def route(self, prompts: str | Iterable[str], model: str | None = None) -> list[Decision]:
        """Decisions only, one per prompt, nothing generated (`POST /v1/route`); `model` is
        a router model name (default: `router-<first router>`)."""
        core = self._core
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        return core.loop.run(core.route(texts, model or core.default_model()))

    def start(self) -> None:
        """Start both backends now instead of on first use (a vLLM engine takes a while)."""
        self._core.loop.run(self._core.start())

    def close(self) -> None:
        """Release the backends and stop the event loop thread."""
        core = self._core
        if core.loop.running:
            core.loop.run(core.close_backends())
        core.close_loop()

    def __enter__(self) -> Controller:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncController(_Base):
    """`Controller` for asyncio callers: the same arguments, every call awaitable, streams
    for `async for`. Usable from any event loop (its backends live on its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat = _Chat(_AsyncCompletions(self._core))

    async def route(self, prompts: str | Iterable[str], model: str | None = None) -> list[Decision]:
        """As `Controller.route`."""
        core = self._core
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        return await core.loop.run_async(core.route(texts, model or core.default_model()))

    async def start(self) -> None:
        await self._core.loop.run_async(self._core.start())

    async def close(self) -> None:
        core = self._core
        if core.loop.running:
            await core.loop.run_async(core.close_backends())
        core.close_loop()

    async def __aenter__(self) -> AsyncController:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
