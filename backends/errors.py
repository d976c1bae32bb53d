"""Typed backend failures. They cross process boundaries (Ray Serve handles, Ray Data actors)
as exceptions, so every class pickles with all of its fields."""

from __future__ import annotations

from typing import Any


class BackendError(Exception):
    """A model backend failed. `status` is the HTTP status that describes the failure (the
    upstream's own when there was one); `retryable` marks failures worth another try (429,
    5xx, timeouts, dropped connections); `retry_after` is the upstream's Retry-After in
    seconds."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args); keyword-only fields would be lost on the way.
        return (
            _rebuild,
            (type(self), self.message, self.status, self.retryable, self.retry_after),
        )

    @property
    def is_client_error(self) -> bool:
        """The request itself is at fault (4xx other than auth and rate limits)."""
        return (
            self.status is not None
            and 400 <= self.status < 500
            and self.status
            not in (
                401,
                403,
                429,
            )
        )

    @property
    def is_rate_limited(self) -> bool:
        return self.status == 429

    @property
    def is_auth_error(self) -> bool:
        """The upstream refused our credentials (a revoked or wrong key): the operator's to fix."""
        return self.status in (401, 403)


def service_failed(failure: BackendError) -> bool:
    """The model's service failed (429, 5xx, timeouts, dropped connections), as opposed to
    refusing the request (the client's to see) or our key (which must surface rather than
    quietly move every request to another model)."""
    return not (failure.is_client_error or failure.is_auth_error)


def may_fall_back(backend: str, route: str, failure: BackendError, *, enabled: bool) -> bool:
    """Whether a failed call may be answered by the weak model instead: `backend` is the
    backend that failed ("strong" or "weak"), `route` how the request reached it (the router's
    "strong"/"weak", or "direct" for a request that named a backend's model), `enabled` the
    deployment's `fallback_to_weak`. The one rule for the endpoint and the in-process
    Controller."""
    # Only a routed request may change model; naming a model explicitly means that model.
    return enabled and backend == "strong" and route != "direct" and service_failed(failure)


def _rebuild(
    cls: type[BackendError],
    message: str,
    status: int | None,
    retryable: bool,
    retry_after: float | None,
) -> BackendError:
    return cls(message, status=status, retryable=retryable, retry_after=retry_after)
