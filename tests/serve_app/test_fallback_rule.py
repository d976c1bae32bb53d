"""When the weak model may answer for a failed strong call: only for a routed request, only
when fallback is on, and only when the strong service failed rather than refused."""

from __future__ import annotations

import pytest

from backends import BackendError
from backends.errors import may_fall_back

SERVICE_FAILURES = [
    BackendError("rate limited", status=429, retryable=True),
    BackendError("upstream 500", status=500, retryable=True),
    BackendError("upstream 503", status=503, retryable=True),
    BackendError("timeout", status=504, retryable=True),
    BackendError("connection reset", status=502, retryable=True),
    BackendError("stream cut", retryable=False),
]
REFUSALS = [
    BackendError("bad request", status=400),
    BackendError("unprocessable", status=422),
    BackendError("key revoked", status=401),
    BackendError("forbidden", status=403),
]


@pytest.mark.parametrize("failure", SERVICE_FAILURES, ids=lambda f: f.message)
def test_a_routed_strong_service_failure_falls_back(failure):
    assert may_fall_back("strong", "strong", failure, enabled=True)


@pytest.mark.parametrize("failure", SERVICE_FAILURES, ids=lambda f: f.message)
def test_never_when_fallback_is_off(failure):
    assert not may_fall_back("strong", "strong", failure, enabled=False)


@pytest.mark.parametrize("failure", REFUSALS, ids=lambda f: f.message)
def test_never_for_a_request_or_key_the_strong_model_refused(failure):
    assert not may_fall_back("strong", "strong", failure, enabled=True)


def test_never_for_a_named_model_or_from_the_weak_one():
    failure = SERVICE_FAILURES[1]
    assert not may_fall_back("strong", "direct", failure, enabled=True)
    assert not may_fall_back("weak", "weak", failure, enabled=True)
