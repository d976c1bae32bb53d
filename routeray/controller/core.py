"""The in-process Controller's work, on its own event loop: validate a request as the endpoint
does, decide with the same routers and threshold rule, answer with the same backends and the
same fallback rule. The endpoint's behaviour is the reference (serve_app/ingress.py); what
differs is only that errors are raised, not answered, and the decision is returned with the
answer instead of in headers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from backends import BackendError, ChatBackend, make_backend
from backends.errors import may_fall_back
from routeray.controller.loop import LoopThread
from routeray.controller.types import ControllerError, Decision, Routing
from routers.checkpoint import load_router
from routers.decision.names import router_model_names
from routers.protocol import Router
from routers.shipped import router_path
from routers.thresholds import recorded_share_thresholds, resolve_threshold
from serve_app.config import ServeConfig
from serve_app.errors import APIError
from serve_app.requests import (
    ChatRequest,
    backend_request,
    parse_chat_request,
    parse_route_request,
    resolve_model,
    routing_text,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
Backend = Literal["strong", "weak"]


def from_api_error(exc: APIError) -> ControllerError:
    """The endpoint's validation error as the Controller's."""
    return ControllerError(exc.status, exc.message, type_=exc.type, param=exc.param, code=exc.code)


def backend_error(failure: BackendError, backend: str) -> ControllerError:
    """A backend failure as the endpoint reports it (its status, type and code), so that
    retry logic written for the endpoint or the OpenAI API reads it the same way."""
    message, retry_after = failure.message, failure.retry_after
    if failure.is_client_error:
        return ControllerError(
            failure.status or 400,
            f"{backend} model rejected the request: {message}",
            retry_after=retry_after,
        )
    if failure.is_rate_limited:
        return ControllerError(
            429,
            f"{backend} model is rate limited: {message}",
            type_="requests",
            code="rate_limit_exceeded",
            retry_after=retry_after,
        )
    return ControllerError(
        failure.status if failure.status in (503, 504) else 502,
        f"{backend} model unavailable: {message}",
        type_="api_error",
        code="backend_error",
        retry_after=retry_after,
        # A refused upstream key is the operator's to fix; retrying cannot.
        should_retry=False if failure.is_auth_error else None,
    )


def _jsonable(value: object) -> object:
    # Messages taken from an earlier answer (the SDK's pydantic objects) go back as JSON, as
    # the openai SDK would send them.
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def request_bytes(body: dict[str, Any]) -> bytes:
    """The request as the endpoint would receive it, so that it is validated by the same code
    (NaN, lone surrogates and nesting included)."""
    try:
        return json.dumps(body, default=_jsonable).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ControllerError(400, f"request body is not valid JSON: {exc}") from None


@dataclass
class Target:
    """Where a request goes: through a router at a threshold, or straight to a backend."""

    router: str | None = None
    threshold: float | None = None
    backend: Backend | None = None


@dataclass
class Plan:
    """A validated request and its decision, before any backend is called."""

    body: dict[str, Any]
    backend: Backend
    route: str  # "strong"/"weak" when a router decided, "direct" for a backend's own name
    routing: Routing
    stream: bool


class ControllerCore:
    """Routers, thresholds and backends of one Controller (and its async twin)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config.with_absolute_paths()
        self.models: dict[Backend, str] = {
            "strong": self.config.strong.model,
            "weak": self.config.weak.model,
        }
        self._routers: dict[str, Router] = {}
        self._defaults: dict[str, float] = {}
        self._shares: dict[str, dict[float, float]] = {}
        # As the service does: a router that cannot be served as configured fails here, before
        # any request.
        for spec in self.config.routers:
            path = router_path(spec.path)
            router = load_router(path, **spec.options)
            default = resolve_threshold(path, threshold=spec.threshold)
            shares = recorded_share_thresholds(path)
            for name in [spec.name, *spec.aliases]:
                self._routers[name] = router
                self._defaults[name] = default
                self._shares[name] = shares
        self._backends: dict[Backend, ChatBackend] = {
            "strong": make_backend(self.config.strong),
            "weak": make_backend(self.config.weak),
        }
        self._started: dict[str, asyncio.Task[None]] = {}
        self.loop = LoopThread()
        # Routers are scored one call at a time: tokenizers and torch modules are not all safe
        # to share between threads, and one scoring thread cannot crowd out the backends.
        self._scorer: ThreadPoolExecutor | None = None

    # -- names and thresholds ---------------------------------------------------------------

    def router_names(self) -> list[str]:
        return list(self._routers)

    def model_names(self) -> list[str]:
        """Every model name a request may give: the routers', then the two backends'."""
        return [*router_model_names(self._routers), self.models["strong"], self.models["weak"]]

    def default_model(self) -> str:
        return f"router-{self.config.routers[0].name}"

    def target(self, model: str) -> Target:
        """`router-<name>[-<threshold>|-<N>pct]` or a backend's own model name, read by the
        endpoint's own rule (`serve_app.requests.resolve_model`)."""
        try:
            found = resolve_model(
                model, self._defaults, self.models["strong"], self.models["weak"], self._shares
            )
        except APIError as exc:
            raise from_api_error(exc) from None
        return Target(router=found.router, threshold=found.threshold, backend=found.backend)

    # -- deciding ---------------------------------------------------------------------------

    async def score(self, router: str, texts: Sequence[str]) -> list[float]:
        if self.config.log_prompts:
            for text in texts:
                logger.info("routing prompt: %r", text)
        if self._scorer is None:
            self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routeray-score")
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self._scorer, self._routers[router].score, list(texts))
        return [float(s) for s in scores]

    async def route(self, prompts: Sequence[str], model: str) -> list[Decision]:
        """Decisions for each prompt, as `POST /v1/route` gives them."""
        raw = request_bytes({"model": model, "prompts": list(prompts)})
        try:
            model, texts = parse_route_request(
                raw, self.config.route_on, self.config.max_route_prompts
            )
        except APIError as exc:
            raise from_api_error(exc) from None
        target = self.target(model)
        if target.router is None:
            raise ControllerError(
                400,
                f"route() needs a router model, not the backend model {model!r}; available: "
                f"{', '.join(router_model_names(self._routers))}",
                param="model",
                code="router_model_required",
            )
        assert target.threshold is not None
        scores = await self.score(target.router, texts)
        decisions = []
        for score in scores:
            backend: Backend = "strong" if score >= target.threshold else "weak"
            decisions.append(
                Decision(
                    route=backend,
                    model=self.models[backend],
                    score=score,
                    threshold=target.threshold,
                )
            )
        return decisions

    async def plan(self, body: dict[str, Any]) -> Plan:
        """Validate a chat request as the endpoint does and decide where it goes."""
        try:
            chat: ChatRequest = parse_chat_request(request_bytes(body))
        except APIError as exc:
            raise from_api_error(exc) from None
        target = self.target(chat.model)
        if target.router is None:
            assert target.backend is not None
            backend, route = target.backend, "direct"
            routing = Routing(route=backend, model=self.models[backend])
        else:
            assert target.threshold is not None
            try:
                text = routing_text(chat, self.config.route_on)
            except APIError as exc:
                raise from_api_error(exc) from None
            score = (await self.score(target.router, [text]))[0]
            backend = "strong" if score >= target.threshold else "weak"
            route = backend
            routing = Routing(
                route=backend,
                model=self.models[backend],
                router=target.router,
                score=score,
                threshold=target.threshold,
            )
        return Plan(backend_request(chat), backend, route, routing, chat.stream)

    # -- answering --------------------------------------------------------------------------

    async def ready(self, backend: Backend) -> None:
        """Start a backend once, on first use (a vLLM engine takes tens of seconds)."""
        task = self._started.get(backend)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._started[backend] = asyncio.ensure_future(self._backends[backend].start())
        await asyncio.shield(task)

    async def _call(self, backend: Backend, call: Callable[[], Awaitable[T]]) -> T:
        """One backend call within `request_timeout_s`, as the endpoint bounds every wait."""
        timeout = self.config.request_timeout_s
        await self.ready(backend)
        try:
            return await asyncio.wait_for(call(), timeout)
        except asyncio.TimeoutError:
            raise BackendError(
                f"no answer from the {backend} model within {timeout:g} s",
                status=504,
                retryable=True,
            ) from None

    async def _answer(
        self, plan: Plan, attempt: Callable[[Backend], Awaitable[T]]
    ) -> tuple[T, Backend]:
        """`attempt` on the chosen backend, and on the weak one when a routed strong call
        fails and the fallback rule allows it; ControllerError when none answered."""
        backend = plan.backend
        try:
            return await attempt(backend), backend
        except BackendError as exc:
            failure = exc
        if may_fall_back(backend, plan.route, failure, enabled=self.config.fallback_to_weak):
            logger.warning("the strong model failed (%s); the weak model answers", failure.message)
            backend = "weak"
            plan.routing.route, plan.routing.model = backend, self.models[backend]
            plan.routing.fallback = True
            try:
                return await attempt(backend), backend
            except BackendError as exc:
                failure = exc
        raise backend_error(failure, backend)

    def _cost(self, backend: Backend, usage: dict[str, Any] | None) -> float | None:
        if not usage:
            return None
        price = self.config.prices.strong if backend == "strong" else self.config.prices.weak
        return float(price.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)))

    async def complete(self, plan: Plan) -> dict[str, Any]:
        async def attempt(name: Backend) -> dict[str, Any]:
            return await self._call(name, lambda: self._backends[name].complete(plan.body))

        result, backend = await self._answer(plan, attempt)
        plan.routing.cost_usd = self._cost(backend, result.get("usage"))
        return result

    async def open_stream(self, plan: Plan) -> AsyncIterator[dict[str, Any]]:
        """The answer's chunks. The first chunk is awaited here: a failure before it may still
        fall back, one after it ends the iteration with a ControllerError."""
        # Usage is always asked of the backend, so every stream is costed; the caller sees the
        # usage chunk only if it asked, as the OpenAI API would answer.
        options = plan.body.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        body = plan.body | {"stream_options": options | {"include_usage": True}}

        async def attempt(name: Backend) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
            chunks = aiter(self._backends[name].stream(body))
            first = await self._call(name, lambda: anext(chunks, None))
            if first is None:
                raise BackendError(f"{name} model sent an empty stream", status=502)
            return first, chunks

        (first, rest), backend = await self._answer(plan, attempt)
        return self._relay(plan, backend, first, rest, wants_usage)

    async def _relay(
        self,
        plan: Plan,
        backend: Backend,
        first: dict[str, Any],
        rest: AsyncIterator[dict[str, Any]],
        wants_usage: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        usage = None
        chunk: dict[str, Any] | None = first
        try:
            while chunk is not None:
                usage = chunk.get("usage") or usage
                if wants_usage:
                    yield chunk
                elif chunk.get("choices") or not chunk.get("usage"):
                    yield {k: v for k, v in chunk.items() if k != "usage"}
                try:
                    chunk = await anext(rest, None)
                except BackendError as exc:
                    raise backend_error(exc, backend) from None
        finally:
            closer = getattr(rest, "aclose", None)
            if closer is not None:
                await closer()
        plan.routing.cost_usd = self._cost(backend, usage)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(self.ready("strong"), self.ready("weak"))

    async def close_backends(self) -> None:
        started, self._started = self._started, {}
        for name in started:
            await self._backends[name].close()

    def close_loop(self) -> None:
        """Stop the loop thread and the scoring thread (both start again on the next call)."""
        self.loop.close()
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            scorer.shutdown(wait=True)
