"""Faults in front of the loopback S3: a WSGI layer around moto's app that delays, fails (500,
503 SlowDown) or resets a chosen share of the requests, and counts what it did. The rules live
in the test's process; Ray workers meet them over HTTP like any S3 client would."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

FAULT_KINDS = ("500", "503", "reset")

_ERRORS = {
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
    "503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class FaultRule:
    """Requests whose object key starts with `key_prefix` (and whose method is in `methods`, if
    given) wait `delay_s`, then a `fraction` of them fail with one of `kinds`."""

    key_prefix: str = ""
    methods: tuple[str, ...] = ()
    delay_s: float = 0.0
    fraction: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS

    def matches(self, method: str, key: str) -> bool:
        return key.startswith(self.key_prefix) and (not self.methods or method in self.methods)


def object_key(path: str) -> str:
    """The key of a path-style request, `/bucket/key` -> `key` ('' for bucket-level calls)."""
    parts = unquote(path).lstrip("/").split("/", 1)
    return parts[1] if len(parts) == 2 else ""


class S3Faults:
    """The WSGI middleware. `rules(...)` installs rules for a `with` block; `injected` counts
    the faults given so far by kind, and `delayed` the requests held back."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seed: int = 0) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._rules: tuple[FaultRule, ...] = ()
        self.injected: Counter[str] = Counter()
        self.delayed = 0

    @contextlib.contextmanager
    def rules(self, *rules: FaultRule) -> Iterator[S3Faults]:
        for rule in rules:
            unknown = set(rule.kinds) - set(FAULT_KINDS)
            if unknown:
                raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        with self._lock:
            self._rules = rules
            self.injected.clear()
            self.delayed = 0
        try:
            yield self
        finally:
            with self._lock:
                self._rules = ()

    def _choose(self, method: str, key: str) -> tuple[float, str | None]:
        with self._lock:
            rule = next((r for r in self._rules if r.matches(method, key)), None)
            if rule is None:
                return 0.0, None
            fault = None
            if rule.fraction and self._random.random() < rule.fraction:
                fault = self._random.choice(rule.kinds)
                self.injected[fault] += 1
            if rule.delay_s:
                self.delayed += 1
            return rule.delay_s, fault

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        delay_s, fault = self._choose(environ["REQUEST_METHOD"], object_key(environ["PATH_INFO"]))
        if delay_s:
            time.sleep(delay_s)
        if fault is not None:
            # Read the body the failed request sent, so the connection stays in step.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length:
                environ["wsgi.input"].read(length)
        if fault == "reset":
            # The client sees its connection end with no answer, then (linger 0) a reset, as
            # from a load balancer dropping it. shutdown(), unlike close(), acts while the
            # server's file objects still hold the socket.
            sock: socket.socket = environ["werkzeug.socket"]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
            # The server's write of this answer then fails as a dropped connection, quietly.
            start_response("500 Internal Server Error", [("Content-Length", "0")])
            return []
        if fault is not None:
            status, code, message = _ERRORS[fault]
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>"
            ).encode()
            start_response(
                status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
            )
            return [body]
        return self._app(environ, start_response)
