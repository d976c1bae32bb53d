"""Validation of OpenAI chat requests, of route-only requests (`POST /v1/route`) and of the
`model` field that picks the routing."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from routers.decision.choice import ChoiceRule
from routers.decision.names import ModelNameError, parse_router_model, router_model_names
from routers.thresholds import ThresholdError, threshold_for_share
from serve_app.errors import APIError

# The most completions one chat request may ask for (`n`), as the OpenAI API allows: each is
# generated in full, so an unbounded `n` is unbounded work for one request.
MAX_N = 128
# The deepest nesting of objects and arrays a request body may have. OpenAI requests need a few
# levels (JSON schemas in tools and response_format a few more); the body is copied and
# serialised recursively on its way to a backend, which a deep one would crash.
MAX_JSON_DEPTH = 64


class _PassThrough(BaseModel):
    """A part of a request whose fields routeray does not read pass through to the backend."""

    model_config = ConfigDict(extra="allow")


# The content parts of the OpenAI chat API, each with the field its kind requires: the request
# document (GET /openapi.json) then calls valid only what a backend can read. Which models take
# images, audio or files is the deployment's to say; a text-only model refuses them with a 400.
class TextPart(_PassThrough):
    type: Literal["text"]
    text: StrictStr


class ImageURL(_PassThrough):
    url: StrictStr


class ImagePart(_PassThrough):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_PassThrough):
    data: StrictStr
    format: Literal["wav", "mp3"]


class AudioPart(_PassThrough):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_PassThrough):
    type: Literal["file"]
    file: dict[str, Any]


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


# What `_check_message_content` enforces, said in the request document too: non-null content.
# The one exception it allows, an assistant message that calls tools, is left out of the
# document, which would otherwise have to describe a valid tool call in full.
_CONTENT_REQUIRED = {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}


class Message(_PassThrough):
    model_config = ConfigDict(extra="allow", json_schema_extra={"allOf": [_CONTENT_REQUIRED]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content or [] if isinstance(p, TextPart))


class ChatRequest(_PassThrough):
    """The fields routeray reads; everything else passes through to the backend."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    # Strict, as the OpenAI API is: "yes" is not a boolean, nor "2" an integer (a number is
    # still a valid float).
    stream: bool = Field(default=False, strict=True)
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    n: int | None = Field(default=None, ge=1, le=MAX_N, strict=True)


_Body = TypeVar("_Body", bound=BaseModel)


def _not_a_number(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token} is out of range")
    return value


_TOO_DEEP = f"request body is nested more than {MAX_JSON_DEPTH} levels deep"


def _json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400. Strict JSON: no NaN or Infinity (nor a number that
    overflows to one), which no backend can send on; and nothing `_check_tree` refuses."""
    try:
        body = json.loads(raw, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise APIError(400, _TOO_DEEP) from None
    # JSONDecodeError, UnicodeDecodeError (not UTF-8), and integers over Python's digit limit.
    except ValueError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    _check_tree(body)
    return body


def _check_tree(body: dict[str, Any]) -> None:
    """Refuse what JSON parsing lets through but a backend cannot take: nesting deeper than
    MAX_JSON_DEPTH, and strings (keys too) with a lone surrogate, which a `\\ud800` escape
    makes: not Unicode text, so neither a tokenizer nor UTF-8 can take it."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400, "request body is not valid JSON: a string holds a lone surrogate"
                ) from None
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise APIError(400, _TOO_DEEP)
            children = [*value, *value.values()] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def _validate(model: type[_Body], body: dict[str, Any]) -> _Body:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # A value that fits no branch of a union fails in each; the deepest error is the one
        # about the branch the value was meant for (a list of parts, not a string).
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        param = ".".join(str(p) for p in _field_path(error["loc"]))
        raise APIError(400, f"invalid request: {param}: {error['msg']}", param=param) from exc


def _field_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """The fields of an error's location, without pydantic's names for union branches
    (`list[...]`) and with a tagged union's tag, which precedes its field of the same name,
    said once."""
    parts = [p for p in loc if not (isinstance(p, str) and "[" in p)]
    return [p for i, p in enumerate(parts) if i + 1 == len(parts) or p != parts[i + 1]]


def _check_message_content(request: ChatRequest) -> None:
    """Refuse a message without content as the OpenAI API does (400, missing required
    parameter), so both routes refuse the same bodies: vLLM would answer one. Only an assistant
    message that calls tools (or a function) may leave its content out."""
    for i, message in enumerate(request.messages):
        if message.content is not None:
            continue
        extra = message.model_extra or {}
        calls = extra.get("tool_calls") is not None or extra.get("function_call") is not None
        if message.role == "assistant" and calls:
            continue
        param = f"messages.{i}.content"
        raise APIError(
            400,
            f"missing required parameter: {param} (a {message.role} message needs content)",
            param=param,
            code="missing_required_parameter",
        )


def parse_chat_request(raw: bytes) -> ChatRequest:
    request = _validate(ChatRequest, _json_object(raw))
    _check_message_content(request)
    return request


class RouteRequest(BaseModel):
    """`POST /v1/route` for several prompts at once; each prompt is routed as it is."""

    # The examples are in the request document (GET /openapi.json) for clients, and a fuzzer
    # reading it sends them as they are: valid bodies it does not have to stumble upon.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "router-gap", "prompts": ["What is the capital of France?"]},
                {
                    "model": "router-gap",
                    "prompts": [
                        "What is the capital of France?",
                        "Prove that there are infinitely many primes.",
                    ],
                },
            ]
        },
    )
    model: str = Field(min_length=1)
    prompts: list[StrictStr] = Field(min_length=1)


def parse_route_request(raw: bytes, route_on: str, max_prompts: int) -> tuple[str, list[str]]:
    """(model, texts to score) of a `POST /v1/route` body: a chat request (its routing text, as
    /v1/chat/completions would route it) or `{"model": ..., "prompts": [...]}`."""
    body = _json_object(raw)
    if "prompts" not in body:
        if "messages" not in body:
            raise APIError(
                400,
                "request needs messages (a chat request) or prompts (a list of strings)",
                param="messages",
            )
        chat = _validate(ChatRequest, body)
        return chat.model, [routing_text(chat, route_on)]
    if "messages" in body:
        raise APIError(400, "give messages or prompts, not both", param="prompts")
    request = _validate(RouteRequest, body)
    if len(request.prompts) > max_prompts:
        raise APIError(
            400,
            f"{len(request.prompts)} prompts in one request; at most {max_prompts}",
            param="prompts",
        )
    for i, prompt in enumerate(request.prompts):
        if not prompt.strip():
            raise APIError(400, "prompt has no text to route on", param=f"prompts.{i}")
    return request.model, request.prompts


def routing_text(request: ChatRequest, route_on: str) -> str:
    """What the router reads: the last user message (as the paper does) or the conversation."""
    if route_on == "conversation":
        text = "\n\n".join(f"{m.role}: {m.text()}" for m in request.messages if m.text())
    else:
        users = [m for m in request.messages if m.role == "user"]
        text = users[-1].text() if users else ""
    if not text.strip():
        raise APIError(400, "messages contain no user text to route on", param="messages")
    return text


def router_models(routers: Collection[str]) -> list[str]:
    """The model names that route: `router-<name>` for every router name and alias."""
    return router_model_names(routers)


@dataclass(frozen=True)
class Target:
    """Where a request goes: through a router (a two-model one with a threshold, an N-model
    one with a rule) or straight to a backend ("strong", "weak" or another backend's model
    name). `pinned`: the model name itself fixed the threshold (a number or a share) or the
    rule, so nothing that adjusts the router's default applies."""

    router: str | None
    threshold: float | None
    backend: str | None
    pinned: bool = False
    rule: ChoiceRule | None = None


def resolve_model(
    model: str,
    thresholds: Mapping[str, float],
    strong: str,
    weak: str,
    share_tables: Mapping[str, Mapping[float, float]] | None = None,
    *,
    multi: Mapping[str, ChoiceRule | None] | None = None,
    others: Collection[str] = (),
) -> Target:
    """`router-<name>-<threshold>`, `router-<name>-<N>pct` (the threshold recorded for N %
    strong calls in `share_tables`), `router-<name>`, or a backend's own model name. `multi`
    holds the N-model routers' names with their configured rules (they take
    `router-<name>-lambda<L>` / `-margin<M>` instead of a threshold), `others` the model names
    of backends besides the strong and weak ones."""
    multi = multi or {}
    if model == strong:
        return Target(None, None, "strong")
    if model == weak:
        return Target(None, None, "weak")
    if model in others:
        return Target(None, None, model)
    try:
        asked = parse_router_model(model, [*thresholds, *multi])
    except ModelNameError as exc:
        if exc.unknown:
            raise APIError(404, str(exc), param="model", code="model_not_found") from None
        raise APIError(400, str(exc), param="model") from None
    if asked is None:
        raise APIError(
            404,
            f"model {model!r} not found; use router-<name>[-<threshold>|-<N>pct], "
            + ", ".join(repr(m) for m in [strong, weak, *others]),
            param="model",
            code="model_not_found",
        )
    if asked.router in multi:
        if asked.threshold is not None or asked.strong_share is not None:
            raise APIError(
                400,
                f"model {model!r}: router {asked.router!r} chooses among N models by a rule, "
                f"not at a threshold or a share; use router-{asked.router}-lambda<L> (quality "
                f"points per US dollar) or router-{asked.router}-margin<M>",
                param="model",
            )
        if asked.rule is not None:
            return Target(asked.router, None, None, pinned=True, rule=asked.rule)
        return Target(asked.router, None, None, rule=multi[asked.router] or ChoiceRule())
    if asked.rule is not None:
        raise APIError(
            400,
            f"model {model!r}: router {asked.router!r} chooses between two models at a "
            f"threshold; use router-{asked.router}-<threshold> or -<N>pct, not a lambda or a "
            "margin",
            param="model",
        )
    if asked.threshold is not None:
        return Target(asked.router, asked.threshold, None, pinned=True)
    if asked.strong_share is not None:
        table = (share_tables or {}).get(asked.router, {})
        try:
            threshold = threshold_for_share(table, asked.strong_share, f"router {asked.router!r}")
        except ThresholdError as exc:
            raise APIError(400, f"model {model!r}: {exc}", param="model") from None
        return Target(asked.router, threshold, None, pinned=True)
    return Target(asked.router, thresholds[asked.router], None)


def resolve_router(
    model: str,
    thresholds: Mapping[str, float],
    strong: str,
    weak: str,
    share_tables: Mapping[str, Mapping[float, float]] | None = None,
    *,
    multi: Mapping[str, ChoiceRule | None] | None = None,
    others: Collection[str] = (),
) -> Target:
    """Like `resolve_model`, for `POST /v1/route`: only a router model makes a decision."""
    target = resolve_model(
        model, thresholds, strong, weak, share_tables, multi=multi, others=others
    )
    if target.router is None:
        known = ", ".join(router_models([*thresholds, *(multi or {})]))
        raise APIError(
            400,
            f"/v1/route needs a router model, not the backend model {model!r}; available: {known}",
            param="model",
            code="router_model_required",
        )
    return target


def backend_request(request: ChatRequest) -> dict[str, Any]:
    return request.model_dump(exclude_none=True)
