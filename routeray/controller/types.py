"""What the in-process Controller reports: its routing of one request, a route-only decision,
and its errors (the endpoint's OpenAI-style error bodies, raised instead of answered)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Routing(BaseModel):
    """How one chat request was answered, as the endpoint's `x-routeray-*` headers say it.

    `route` is the backend that answered ("strong" or "weak"), after any fallback; `router`,
    `score` and `threshold` are set when a router decided (None for a backend's own model
    name); `fallback` is True when the strong API failed and the weak model answered instead;
    `cost_usd` is the estimate from the configured prices and the usage the model reported
    (None until a stream's usage has passed)."""

    route: Literal["strong", "weak"]
    model: str
    router: str | None = None
    score: float | None = None
    threshold: float | None = None
    fallback: bool = False
    cost_usd: float | None = None


class Decision(BaseModel):
    """One prompt's routing decision without generating (`Controller.route`), as one entry of
    the endpoint's `POST /v1/route` answer: `route` is "strong" when `score >= threshold`,
    and `model` the backend model that would answer."""

    route: Literal["strong", "weak"]
    model: str
    score: float
    threshold: float


class ControllerError(Exception):
    """A request the Controller refused or could not answer: what the endpoint would have
    answered as an HTTP error. `status_code` is that status; `body` the OpenAI error object
    (`message`, `type`, `param`, `code`, as the `openai` SDK's `APIStatusError.body` holds
    it); `retry_after` the seconds a rate-limited upstream asked to wait; `should_retry`
    False where only the operator can fix it (a refused upstream key)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.should_retry = (
            should_retry if should_retry is not None else status_code == 429 or status_code >= 500
        )

    @property
    def body(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def __str__(self) -> str:
        return f"Error code: {self.status_code} - {self.message}"
