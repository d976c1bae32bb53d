"""The OpenAI error body every routeray error must have, for the tests that send hostile or
generated requests (test_fuzz, test_hostile_inputs)."""

from __future__ import annotations

import json
from typing import Any


def openai_error_problems(status: int, body: bytes | str) -> list[str]:
    """What is wrong with an error response's body, measured against the OpenAI API's
    `{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}`; []
    when nothing is."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return [f"{status} body is not JSON: {body[:200]!r}"]
    if not isinstance(parsed, dict) or set(parsed) != {"error"}:
        return [f"{status} body is not {{'error': ...}}: {parsed!r:.200}"]
    error = parsed["error"]
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return [f"{status} error lacks message/type/param/code or has more: {error!r:.200}"]
    problems = [
        f"{status} error.{name} is not a non-empty string: {error[name]!r}"
        for name in ("message", "type")
        if not isinstance(error[name], str) or not error[name]
    ]
    problems += [
        f"{status} error.{name} is neither a string nor null: {error[name]!r}"
        for name in ("param", "code")
        if error[name] is not None and not isinstance(error[name], str)
    ]
    return problems


def assert_openai_error(status: int, body: bytes | str) -> dict[str, Any]:
    """The `error` object of an OpenAI error body; fails the test when the body is not one."""
    problems = openai_error_problems(status, body)
    assert not problems, problems
    return json.loads(body)["error"]
