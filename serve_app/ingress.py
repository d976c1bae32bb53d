"""OpenAI-compatible HTTP ingress: validates, routes, calls a backend, falls back, reports;
and the routing decision alone (`POST /v1/route`) for gateways."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve import metrics
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from backends import BackendError
from routers import Router, load_router, router_path
from routers.decision.choice import ChoiceRule, prompt_costs
from routers.prices import ModelPrice, Prices
from routers.protocol import is_multi
from routers.thresholds import (
    ThresholdError,
    recorded_share_thresholds,
    resolve_threshold,
    threshold_for_share,
)
from serve_app.config import RouterSpec, ServeConfig
from serve_app.errors import APIError
from serve_app.plans import Plan, direct_plan, multi_decisions, multi_plan, two_model_plan
from serve_app.requests import (
    ChatRequest,
    RouteRequest,
    Target,
    backend_request,
    parse_chat_request,
    parse_route_request,
    resolve_model,
    resolve_router,
    router_models,
    routing_text,
)
from serve_app.share_control import ControlClient

logger = logging.getLogger("ray.serve")
# A /v1/route list up to this long is scored by an in-ingress router on the event loop (a
# table lookup); a longer one in a thread.
INLINE_PROMPTS = 32
# A deployment that cannot answer a health probe in this long is reported unhealthy.
HEALTH_TIMEOUT_S = 5.0
# A deployment's replica failing, not the model behind it answering: it died under the request,
# is being replaced, or its queue is full.
REPLICA_FAILURES = (
    RayActorError,
    ActorUnavailableError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
    BackPressureError,
)
api = FastAPI(title="routeray", docs_url=None, redoc_url=None)

# The handlers read and validate their bodies themselves (for OpenAI-shaped errors and the body
# limit), so FastAPI sees no body models: the OpenAPI document (/openapi.json) declares them
# here, from the same pydantic models, with the bearer key the /v1 routes need.
_SCHEMA_REF = "#/components/schemas/{model}"
_BEARER = [{"bearerAuth": []}]


def _json_body(*models: type) -> dict[str, Any]:
    """`openapi_extra` for a route: a required JSON body (one of `models`) and the key."""
    refs = [{"$ref": _SCHEMA_REF.format(model=m.__name__)} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}, "security": _BEARER}


_fastapi_openapi = api.openapi


def _openapi() -> dict[str, Any]:
    """FastAPI's document with the body models (nested ones too) and the bearer scheme."""
    if api.openapi_schema is None:
        document = _fastapi_openapi()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (ChatRequest, RouteRequest):
            schema = model.model_json_schema(ref_template=_SCHEMA_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        document["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"}
        }
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (a path that does not exist, a method a route does not take) in
    the same OpenAI error body as every other error."""
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return error_response(APIError(exc.status_code, message), headers=exc.headers)


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in routeray ingress")
    return error_response(APIError(500, "internal error", type_="api_error"))


T = TypeVar("T")


def replica_failure(what: str, exc: BaseException) -> BackendError:
    """A deployment's replica failing (one of REPLICA_FAILURES) as the retryable 503 it is."""
    return BackendError(f"the {what} failed: {type(exc).__name__}", status=503, retryable=True)


def _initial_threshold(spec: RouterSpec) -> float | None:
    """Where a share controller starts: its own initial threshold, else the one the router
    records for the target share, else the router's default threshold."""
    assert spec.control is not None
    if spec.control.initial_threshold is not None:
        return spec.control.initial_threshold
    path = router_path(spec.path)
    if spec.control.strong_share is not None:
        with contextlib.suppress(ThresholdError):
            return threshold_for_share(
                recorded_share_thresholds(path), spec.control.strong_share, str(path)
            )
    return resolve_threshold(path)


@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        config: dict[str, Any],
        router: DeploymentHandle | None,
        strong: DeploymentHandle,
        weak: DeploymentHandle,
        others: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self.config = ServeConfig.model_validate(config)
        # Backends by key: "strong", "weak", and every other one by its model name.
        self.router = router
        self.backends = {"strong": strong, "weak": weak, **(others or {})}
        self.models = {key: c.model for key, c in self.config.backend_configs().items()}
        self._load_local_routers()
        self.prices: Prices = self.config.prices
        # N-model routers' configured rules, by every name and alias (None: the default rule).
        self._rules: dict[str, ChoiceRule | None] = {
            name: spec.rule for spec in self.config.routers for name in [spec.name, *spec.aliases]
        }
        self.keys = [k.encode() for k in self.config.auth.api_key_list()]
        self._thresholds: dict[str, float] | None = None
        # N-model routers by name: (models, their backend keys, their prices); see thresholds().
        self._multi: dict[str, tuple[list[str], list[str], list[ModelPrice]]] = {}
        self._share_tables: dict[str, dict[float, float]] = {}
        self._requests = metrics.Counter(
            "routeray_requests",
            description="Chat requests by route and answering model.",
            tag_keys=("route", "model"),
        )
        self._decisions = metrics.Counter(
            "routeray_route_decisions",
            description="Route-only decisions (POST /v1/route), one per prompt, by route and "
            "the model that would answer.",
            tag_keys=("route", "model"),
        )
        self._strong_share = metrics.Gauge(
            "routeray_strong_share",
            description="Share of routing decisions (chat and route-only) for the strong model.",
        )
        self._cost = metrics.Counter(
            "routeray_estimated_cost_usd",
            description="Estimated cost from configured prices.",
            tag_keys=("model",),
        )
        self._errors = metrics.Counter(
            "routeray_backend_errors", description="Backend failures.", tag_keys=("backend",)
        )
        self._fallbacks = metrics.Counter(
            "routeray_fallbacks",
            description="Failed calls answered by another model: a strong failure by the weak "
            "one, or an N-model router's choice by the next model by its rule.",
        )
        self._auth_failures = metrics.Counter(
            "routeray_upstream_auth_failures",
            description="Requests a backend refused our credentials for (401/403): a revoked "
            "or wrong upstream key.",
            tag_keys=("backend",),
        )
        self._router_latency = metrics.Histogram(
            "routeray_router_latency_seconds",
            description="Seconds from request to routing decision.",
            boundaries=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
        )
        self._routed = {"strong": 0, "weak": 0}
        self._control_threshold = metrics.Gauge(
            "routeray_threshold",
            description="The threshold a share controller routes `router-<name>` at.",
            tag_keys=("router",),
        )
        self._observed_share = metrics.Gauge(
            "routeray_observed_strong_share",
            description="Share of a controlled router's recent decisions (its window) that "
            "went to the strong model.",
            tag_keys=("router",),
        )
        self.control = self._control_client()

    def _control_client(self) -> ControlClient | None:
        """The share controllers of routers with `control:`, shared by every ingress replica
        of this app through one actor (serve_app.share_control)."""
        targets = {}
        for spec in self.config.routers:
            if spec.control is not None:
                entry = (spec.name, spec.control, _initial_threshold(spec))
                targets |= {name: entry for name in [spec.name, *spec.aliases]}
        if not targets:
            return None
        return ControlClient(
            serve.get_replica_context().app_name, targets, self.prices, self._exported
        )

    def _exported(self, name: str, figures: dict[str, Any]) -> None:
        if figures.get("threshold") is not None:
            self._control_threshold.set(figures["threshold"], tags={"router": name})
        if figures.get("observed_share") is not None:
            self._observed_share.set(figures["observed_share"], tags={"router": name})

    def _controlled(self, target: Target) -> bool:
        """Whether a share controller sets this target's threshold: a bare router-<name> of
        a router with `control:` (a name with a threshold or a share keeps its own)."""
        return bool(
            self.control is not None
            and target.router
            and not target.pinned
            and self.control.controls(target.router)
        )

    def _report(
        self, target: Target, scores: list[float], routes: list[str], texts: list[str]
    ) -> None:
        """Decisions at a controller's threshold go back to it (queued, not awaited)."""
        if self._controlled(target):
            strong = [r == "strong" for r in routes]
            self.control.record(target.router, scores, strong, texts)

    def _load_local_routers(self) -> None:
        """Load the routers placed in the ingress (`placement: ingress`): their scoring is a
        table lookup, cheaper than the call to another replica it replaces."""
        self.local_routers: dict[str, Router] = {}
        self._local_thresholds: dict[str, float] = {}
        self._local_tables: dict[str, dict[float, float]] = {}
        self._local_models: dict[str, list[str]] = {}
        for spec in self.config.routers:
            if spec.placement != "ingress":
                continue
            path = router_path(spec.path)
            router = load_router(path, **spec.options)
            router.score(["warm up"])  # ready only once it answers at full speed
            names = [spec.name, *spec.aliases]
            for name in names:
                self.local_routers[name] = router
            if is_multi(router):
                self._local_models |= {name: list(router.models) for name in names}
                continue
            threshold = resolve_threshold(path, threshold=spec.threshold)
            table = recorded_share_thresholds(path)
            for name in names:
                self._local_thresholds[name] = threshold
                self._local_tables[name] = table

    async def thresholds(self) -> dict[str, float]:
        """Every two-model router name's default threshold (and, once read, its share table
        and every N-model router's models)."""
        if self._thresholds is None:
            thresholds, tables = dict(self._local_thresholds), dict(self._local_tables)
            multi = dict(self._local_models)
            if self.router is not None:
                remote, remote_tables, remote_multi = await asyncio.gather(
                    self.router.describe.remote(),
                    self.router.share_tables.remote(),
                    self.router.multi_models.remote(),
                )
                thresholds |= remote
                tables |= remote_tables
                multi |= remote_multi
            self._share_tables = tables
            self._multi = {name: self._multi_backends(name, m) for name, m in multi.items()}
            self._thresholds = thresholds
        return self._thresholds

    def _multi_backends(
        self, router: str, models: list[str]
    ) -> tuple[list[str], list[str], list[ModelPrice]]:
        """An N-model router's (models, their backend keys, their prices); its models are the
        configured backends' names (serve_app.app.check_routers pinned them)."""
        keys = []
        for model in models:
            key = self.config.backend_for(model)
            if key is None:
                raise ValueError(f"router {router!r}: model {model!r} has no backend")
            keys.append(key)
        return models, keys, [self.config.price_of(k) for k in keys]

    async def resolve(self, model: str, *, route_only: bool = False) -> Target:
        """The request's target from its `model` (see `serve_app.requests.resolve_model`)."""
        thresholds = await self.thresholds()
        resolve = resolve_router if route_only else resolve_model
        target = resolve(
            model,
            thresholds,
            self.models["strong"],
            self.models["weak"],
            self._share_tables,
            multi={name: self._rules.get(name) for name in self._multi},
            others=[m for key, m in self.models.items() if key not in ("strong", "weak")],
        )
        # A bare router-<name> of a controlled router routes at the controller's threshold.
        if self._controlled(target):
            threshold = await self.control.threshold(target.router)
            if threshold is not None:
                target = dataclasses.replace(target, threshold=threshold)
        return target

    async def scores(self, router: str, texts: list[str]) -> list[Any]:
        """Each text's score by the router named `router` (for an N-model router, its row of
        qualities): in this process for a router placed in the ingress, else from the router
        deployment, where each text joins the batching queue."""
        local = self.local_routers.get(router)
        if local is not None:
            multi = router in self._local_models
            scorer = local.qualities if multi else local.score
            if len(texts) <= INLINE_PROMPTS:
                scores = scorer(texts)
            else:
                # A long /v1/route list off the event loop, so other requests keep moving.
                scores = await asyncio.to_thread(scorer, texts)
            return (
                [[float(q) for q in row] for row in scores] if multi else [float(s) for s in scores]
            )
        if len(texts) == 1:
            return [await self._decide(self.router.score.remote((router, texts[0])))]
        return await self._decide(self.router.score_many.remote([(router, t) for t in texts]))

    def check_auth(self, request: Request) -> None:
        if not self.keys:
            return
        # Two Authorization headers are ambiguous (which did a proxy in front check?): no key.
        values = request.headers.getlist("authorization")
        header = values[0] if len(values) == 1 else ""
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare against every key, always, so timing does not reveal which prefix matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise APIError(
                401,
                "invalid or missing API key",
                type_="authentication_error",
                code="invalid_api_key",
            )

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            # Checked while reading: a client that lies in Content-Length is cut off early.
            if len(body) > limit:
                raise APIError(413, f"request body is larger than {limit} bytes")
        return bytes(body)

    def _routed_now(self, started: float, routes: Counter[str]) -> None:
        """Record decisions just made: router latency since `started`, the strong share (of
        two-model decisions; an N-model router's are counted by model in the requests)."""
        self._router_latency.observe(time.perf_counter() - started)
        two_model = {r: n for r, n in routes.items() if r in self._routed}
        if not two_model:
            return
        for route, n in two_model.items():
            self._routed[route] += n
        self._strong_share.set(self._routed["strong"] / sum(self._routed.values()))

    def _price(self, backend: str) -> ModelPrice:
        try:
            return self.config.price_of(backend)
        except ValueError:
            # A backend only ever named directly may go unpriced: its answers cost nothing here.
            return ModelPrice(input_per_million=0.0, output_per_million=0.0)

    def _account(self, backend: str, response: dict[str, Any]) -> None:
        usage = response.get("usage") or {}
        price = self._price(backend)
        cost = price.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        self._cost.inc(float(cost), tags={"model": self.models[backend]})

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """Await a deployment within the request deadline. Its replica failing (dying under
        the request, being replaced, a full queue) is a retryable 503 and the deadline passing
        a 504, as BackendErrors, so that clients get an error they can act on, not a 500 or a
        wait for a replica that takes minutes to come back."""
        timeout = self.config.request_timeout_s
        try:
            return await asyncio.wait_for(call, timeout)
        except asyncio.TimeoutError:
            raise BackendError(
                f"no answer from the {what} within {timeout:g} s", status=504, retryable=True
            ) from None
        except REPLICA_FAILURES as exc:
            raise replica_failure(what, exc) from None

    async def _decide(self, call: Awaitable[T]) -> T:
        """A router call (`score` or `score_many`); its failure is the request's 503/504."""
        try:
            return await self._call("router", call)
        except BackendError as exc:
            raise APIError(
                exc.status or 503,
                f"routing failed: {exc.message}",
                type_="api_error",
                code="router_unavailable",
            ) from None

    @api.post("/v1/chat/completions", openapi_extra=_json_body(ChatRequest))
    async def chat(self, request: Request) -> Response:
        started = time.perf_counter()
        self.check_auth(request)
        chat = parse_chat_request(await self.read_body(request))
        target = await self.resolve(chat.model)
        if target.router is not None:
            text = routing_text(chat, self.config.route_on)
            if self.config.log_prompts:
                logger.info("routing prompt: %r", text)
            (score,) = await self.scores(target.router, [text])
            if target.rule is not None:
                models, keys, prices = self._multi[target.router]
                costs = prompt_costs(prices, [text])[0]
                plan = multi_plan(models, keys, score, costs, target.rule)
            else:
                plan = two_model_plan(score, target.threshold)
                self._report(target, [score], [plan.route], [text])
            self._routed_now(started, Counter([plan.route]))
        else:
            plan = direct_plan(target.backend)
        headers = plan.headers | {"x-routeray-route": plan.route}
        if plan.route == "direct":
            headers["x-routeray-route"] = plan.order[0]
        body = backend_request(chat)
        if chat.stream:
            return await self._stream(body, plan, headers)
        return await self._complete(body, plan, headers)

    @api.post("/v1/route", openapi_extra=_json_body(RouteRequest, ChatRequest))
    async def route(self, request: Request) -> Response:
        """The routing decision alone, for gateways: one per prompt, nothing is generated."""
        started = time.perf_counter()
        self.check_auth(request)
        model, texts = parse_route_request(
            await self.read_body(request), self.config.route_on, self.config.max_route_prompts
        )
        target = await self.resolve(model, route_only=True)
        if self.config.log_prompts:
            for text in texts:
                logger.info("routing prompt: %r", text)
        scores = await self.scores(target.router, texts)
        if target.rule is not None:
            return self._route_many(started, target, texts, scores)
        routes = ["strong" if s >= target.threshold else "weak" for s in scores]
        counts = Counter(routes)
        self._routed_now(started, counts)
        self._report(target, scores, routes, texts)
        for r, n in counts.items():
            self._decisions.inc(n, tags={"route": r, "model": self.models[r]})
        data = [
            {"route": r, "model": self.models[r], "score": s, "threshold": target.threshold}
            for r, s in zip(routes, scores, strict=True)
        ]
        headers: dict[str, str] = {}
        if len(data) == 1:
            headers = two_model_plan(scores[0], target.threshold).headers
            headers["x-routeray-route"] = routes[0]
        return JSONResponse({"object": "route", "data": data}, headers=headers)

    def _route_many(
        self, started: float, target: Target, texts: list[str], rows: list[list[float]]
    ) -> JSONResponse:
        """`POST /v1/route` for an N-model router: each prompt's chosen model, every model's
        predicted quality, the chosen one's estimated cost, and the rule."""
        models, _, prices = self._multi[target.router]
        qualities = np.asarray(rows, dtype=np.float64).reshape(len(texts), len(models))
        costs = prompt_costs(prices, texts)
        data = multi_decisions(models, qualities, costs, target.rule)
        counts = Counter(str(d["route"]) for d in data)
        self._routed_now(started, counts)
        for model, n in counts.items():
            self._decisions.inc(n, tags={"route": model, "model": model})
        headers: dict[str, str] = {}
        if len(data) == 1:
            headers = multi_plan(models, models, rows[0], costs[0], target.rule).headers
            headers["x-routeray-route"] = str(data[0]["route"])
        return JSONResponse({"object": "route", "data": data}, headers=headers)

    async def _answer(
        self, attempt: Callable[[str], Awaitable[Any]], plan: Plan, headers: dict[str, str]
    ) -> tuple[Any, str, Response | None]:
        """Run `attempt` on the plan's backends in order while a failure allows the next one
        (a routed strong call's failure: the weak model; an N-model router's: the next model
        by its rule): (value, backend that answered, None), or an error response when the
        last one tried failed. `headers` gain x-routeray-model (who answered) and, after a
        failure, x-routeray-fallback (who failed, in order)."""
        failed: list[str] = []

        def name(backend: str) -> str:
            # A two-model decision names the pair "strong"/"weak", as it always has; an
            # N-model one names every model by its configured name.
            return self.models[backend] if plan.multi else backend

        for backend in plan.order:
            if failed:
                self._fallbacks.inc()
                headers["x-routeray-fallback"] = ",".join(f"{name(b)}-failed" for b in failed)
                if not plan.multi:
                    headers["x-routeray-route"] = backend  # today's two-model header
            try:
                value = await attempt(backend)
            except BackendError as exc:
                failure = exc
            else:
                headers["x-routeray-model"] = self.models[backend]
                return value, backend, None
            if failure.is_auth_error:
                self._auth_failures.inc(tags={"backend": backend})
            self._errors.inc(tags={"backend": backend})
            failed.append(backend)
            if not plan.may_try_next(
                backend,
                failure,
                fallback_to_weak=self.config.fallback_to_weak,
                fallback_to_next=self.config.fallback_to_next,
            ):
                break
        error, error_headers = self._backend_error(failure, name(backend))
        return None, backend, error_response(error, headers | error_headers)

    async def _complete(
        self, body: dict[str, Any], plan: Plan, headers: dict[str, str]
    ) -> Response:
        async def attempt(name: str) -> dict[str, Any]:
            return await self._call(f"{name} model", self.backends[name].complete.remote(body))

        result, backend, failed = await self._answer(attempt, plan, headers)
        if failed is not None:
            return failed
        self._requests.inc(tags={"route": plan.route, "model": self.models[backend]})
        self._account(backend, result)
        return JSONResponse(result, headers=headers)

    async def _stream(self, body: dict[str, Any], plan: Plan, headers: dict[str, str]) -> Response:
        # Usage is always asked of the backend, so every stream is costed; the client gets it
        # only if it asked, as the OpenAI API would answer it.
        options = body.get("stream_options") or {}
        wants_usage = bool(options.get("include_usage"))
        body = body | {"stream_options": options | {"include_usage": True}}

        def for_client(chunk: dict[str, Any]) -> dict[str, Any] | None:
            if wants_usage:
                return chunk
            if not chunk.get("choices") and chunk.get("usage"):
                return None  # the usage-only chunk that ends the stream
            return {k: v for k, v in chunk.items() if k != "usage"}

        async def attempt(name: str) -> tuple[dict[str, Any], Any]:
            # The first chunk decides: a failure before it can still fall back, after it not.
            chunks = self.backends[name].options(stream=True).stream.remote(body)
            first = await self._call(f"{name} model", anext(chunks, None))
            if first is None:
                raise BackendError(f"{name} model sent an empty stream", status=502)
            return first, chunks

        opened, backend, failed = await self._answer(attempt, plan, headers)
        if failed is not None:
            return failed
        first, chunks = opened
        self._requests.inc(tags={"route": plan.route, "model": self.models[backend]})

        async def sse() -> AsyncIterator[bytes]:
            usage = None

            async def all_chunks() -> AsyncIterator[dict[str, Any]]:
                yield first
                async for chunk in chunks:
                    yield chunk

            try:
                async for chunk in all_chunks():
                    usage = chunk.get("usage") or usage
                    shown = for_client(chunk)
                    if shown is not None:
                        yield f"data: {json.dumps(shown)}\n\n".encode()
            except (BackendError, *REPLICA_FAILURES) as exc:
                # Headers are gone; an OpenAI-style error event is all a client can get now.
                self._errors.inc(tags={"backend": backend})
                if not isinstance(exc, BackendError):
                    exc = replica_failure(f"{backend} model", exc)
                error, _ = self._backend_error(exc, backend)
                yield f"data: {json.dumps(error.body())}\n\n".encode()
                return
            if usage:
                self._account(backend, {"usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    def _backend_error(
        self, failure: BackendError, backend: str
    ) -> tuple[APIError, dict[str, str]]:
        """The client's view of a backend failure: the status and headers an OpenAI client's
        retry logic reads (it retries 429 and 5xx, waits Retry-After, obeys x-should-retry)."""
        # Ray re-raises a replica's exception as a subclass that prefixes the remote
        # traceback to str(); the message field is the backend's own words.
        message = failure.message
        headers: dict[str, str] = {}
        if failure.retry_after is not None:
            headers["retry-after"] = str(math.ceil(failure.retry_after))
        if failure.is_client_error:
            error = APIError(failure.status, f"{backend} model rejected the request: {message}")
        elif failure.is_rate_limited:
            error = APIError(
                429,
                f"{backend} model is rate limited: {message}",
                type_="requests",
                code="rate_limit_exceeded",
            )
        else:
            # 504 for a timeout and 503 for a backend that cannot serve now, as the upstream
            # (or vLLM) said; anything else it did wrong is a bad gateway.
            status = failure.status if failure.status in (503, 504) else 502
            error = APIError(
                status,
                f"{backend} model unavailable: {message}",
                type_="api_error",
                code="backend_error",
            )
            if failure.is_auth_error:
                # Our upstream key is refused: the client's retries cannot fix that.
                headers["x-should-retry"] = "false"
        return error, headers

    async def check_deployments(self) -> dict[str, str]:
        """Each deployment's state as this ingress reaches it: "ok" or why not."""
        probes = {name: handle.check_health.remote() for name, handle in self.backends.items()}
        if self.router is not None:
            probes = {"router": self.router.describe.remote(), **probes}

        async def probe(call: Any) -> str:
            try:
                await asyncio.wait_for(call, HEALTH_TIMEOUT_S)
            except asyncio.TimeoutError:
                return f"no answer within {HEALTH_TIMEOUT_S:.0f} s"
            except BackendError as exc:
                return exc.message
            except Exception as exc:  # a dead replica, a deployment being replaced: unhealthy
                return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return "ok"

        states = await asyncio.gather(*(probe(c) for c in probes.values()))
        return dict(zip(probes, states, strict=True))

    @api.get("/v1/models", openapi_extra={"security": _BEARER})
    async def list_models(self, request: Request) -> dict[str, Any]:
        self.check_auth(request)
        names = router_models([*await self.thresholds(), *self._multi])
        names += list(self.models.values())
        now = int(time.time())
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": now, "owned_by": "routeray"} for n in names
            ],
        }

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every deployment answers, else 503 (for load balancers and probes); no key
        needed, and only deployment states are shown."""
        deployments = await self.check_deployments()
        healthy = all(state == "ok" for state in deployments.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "deployments": deployments},
            status_code=200 if healthy else 503,
        )
