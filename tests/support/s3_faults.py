"""Faults in front of the loopback S3: a WSGI layer around moto's app that delays, fails (500,
503 SlowDown) or resets a chosen share of the requests, holds the requests for chosen keys until
the test releases them, and counts what it did. The rules live in the test's process; Ray
workers meet them over HTTP like any S3 client would."""

from __future__ import annotations

import contextlib
import random
import re
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
    """Requests whose object key starts with `key_prefix` (and whose method is in `methods`,
    and that are signed with `access_key`, if given) wait `delay_s`, then a `fraction` of them
    fail with one of `kinds`."""

    key_prefix: str = ""
    methods: tuple[str, ...] = ()
    delay_s: float = 0.0
    fraction: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    access_key: str | None = None

    def matches(self, method: str, key: str, signer: str = "") -> bool:
        return (
            key.startswith(self.key_prefix)
            and (not self.methods or method in self.methods)
            and (self.access_key is None or signer == self.access_key)
        )


# The access key id a request is signed with (SigV4 header or presigned query).
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def object_key(path: str) -> str:
    """The key of a path-style request, `/bucket/key` -> `key` ('' for bucket-level calls)."""
    parts = unquote(path).lstrip("/").split("/", 1)
    return parts[1] if len(parts) == 2 else ""


def access_key(environ: dict[str, Any]) -> str:
    """The access key id that signed a request ('' when unsigned)."""
    found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if found is None:
        found = re.search(r"X-Amz-Credential=([^/&%]+)", environ.get("QUERY_STRING", ""))
    return found.group(1) if found else ""


class Hold:
    """Requests for keys under one of `prefixes` (and signed with `access_key`, if given) wait
    until `release()`, then fail with 503 SlowDown: an alive client retries, and the upload of
    a client that died meanwhile never reaches the store. Requests that come after the release
    pass. A client that gives up waiting (the jobs' pyarrow client does after a few seconds)
    sends its request again, and that one is held too. `held` counts the requests it stopped."""

    def __init__(self, prefixes: tuple[str, ...], access_key: str | None) -> None:
        if not prefixes:
            raise ValueError("a hold needs at least one key prefix")
        self.prefixes = prefixes
        self.access_key = access_key
        self.held = 0
        self._released = threading.Event()

    def matches(self, key: str, signer: str) -> bool:
        if self._released.is_set() or not key.startswith(self.prefixes):
            return False
        return self.access_key is None or signer == self.access_key

    def release(self) -> None:
        self._released.set()

    def wait(self) -> None:
        self._released.wait()


class S3Faults:
    """The WSGI middleware. `rules(...)` installs rules for a `with` block; `matched` counts
    the requests they matched so far, `injected` the faults given by kind, `delayed` the
    requests held back, and `in_flight` the requests being answered now (see `answering`; a
    request whose client has died may still be, and may still write an object). `hold(...)`
    holds requests for a `with` block (see `Hold`), `holding` counts the requests waiting in a
    hold now, and `release()` ends every hold."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seed: int = 0) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._seed = seed
        self._random = random.Random(seed)
        self._rules: tuple[FaultRule, ...] = ()
        self._holds: list[Hold] = []
        self.injected: Counter[str] = Counter()
        self.matched = 0
        self.delayed = 0
        self.in_flight = 0
        self.holding = 0

    @contextlib.contextmanager
    def rules(self, *rules: FaultRule) -> Iterator[S3Faults]:
        for rule in rules:
            unknown = set(rule.kinds) - set(FAULT_KINDS)
            if unknown:
                raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        with self._lock:
            self._rules = rules
            self.injected.clear()
            self.matched = 0
            self.delayed = 0
            # Each block draws the same faults in the same order: the n-th request its rules
            # match meets the same fate in every run, whichever client sends it.
            self._random.seed(self._seed)
        try:
            yield self
        finally:
            with self._lock:
                self._rules = ()

    @contextlib.contextmanager
    def hold(self, *prefixes: str, access_key: str | None = None) -> Iterator[Hold]:
        """Hold the requests for keys under `prefixes` until `release()` or the block's end,
        whichever comes first; the end releases, so no request is left waiting."""
        hold = Hold(prefixes, access_key)
        with self._lock:
            self._holds.append(hold)
        try:
            yield hold
        finally:
            hold.release()
            with self._lock:
                self._holds.remove(hold)

    def release(self) -> None:
        """End every hold now in place: what they hold fails with 503 SlowDown."""
        with self._lock:
            for hold in self._holds:
                hold.release()

    def _hold_for(self, key: str, signer: str) -> Hold | None:
        with self._lock:
            hold = next((h for h in self._holds if h.matches(key, signer)), None)
            if hold is not None:
                hold.held += 1
                self.holding += 1
            return hold

    def _choose(self, method: str, key: str, signer: str) -> tuple[float, str | None]:
        with self._lock:
            rule = next((r for r in self._rules if r.matches(method, key, signer)), None)
            if rule is None:
                return 0.0, None
            self.matched += 1
            fault = None
            if rule.fraction and self._random.random() < rule.fraction:
                fault = self._random.choice(rule.kinds)
                self.injected[fault] += 1
            if rule.delay_s:
                self.delayed += 1
            return rule.delay_s, fault

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """The server's handler wraps each connection in this (the server answers one request
        per connection): counted from when the handler takes it until it is done with it,
        answered or dropped. Done there, not around the WSGI call: the server may fail while
        it discards what a dead client left unread, and then never close the call's answer."""
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        key, signer = object_key(environ["PATH_INFO"]), access_key(environ)
        hold = self._hold_for(key, signer)
        if hold is not None:
            hold.wait()
            with self._lock:
                self.holding -= 1
            return _error(environ, start_response, "503")
        delay_s, fault = self._choose(environ["REQUEST_METHOD"], key, signer)
        if delay_s:
            time.sleep(delay_s)
        if fault == "reset":
            _read_body(environ)
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
            return _error(environ, start_response, fault)
        return self._app(environ, start_response)


def _read_body(environ: dict[str, Any]) -> None:
    """Read the body a failed request sent, so the connection stays in step (a client that
    has gone sends less than it announced: then there is nothing to keep in step)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        with contextlib.suppress(OSError, ValueError):
            environ["wsgi.input"].read(length)


def _error(environ: dict[str, Any], start_response: Callable[..., Any], kind: str) -> list[bytes]:
    """An S3 error answer of `kind` ("500" or "503")."""
    _read_body(environ)
    status, code, message = _ERRORS[kind]
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()
    start_response(
        status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]
