"""One private event loop in a background thread, where the Controller's backends live.

The backends are asyncio objects bound to the loop they first ran on (an HTTP client's
connection pool, a vLLM engine's output handler). Running every call on one loop of our own
lets a blocking caller use them from any thread, inside or outside a running loop, and lets
async callers on any loop (or several `asyncio.run`s in turn) share one set of backends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def _next(items: AsyncIterator[T]) -> T:
    # run_coroutine_threadsafe takes a coroutine, not the awaitable __anext__ returns.
    return await items.__anext__()


class LoopThread:
    """A lazily started event loop thread; `close()` stops it (a later call starts anew)."""

    def __init__(self, name: str = "routeray-controller") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    # Stopped by close(): finish what async generators hold, then release.
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.close()

                # A daemon: a program that forgets close() still exits.
                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            # Blocking on the loop from inside it would wait for itself forever.
            raise RuntimeError("a blocking Controller call cannot be made from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and block this thread until it returns."""
        return self.submit(coro).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and await it from the caller's loop (cancelling follows)."""
        return await asyncio.wrap_future(self.submit(coro))

    def next_item(self, items: AsyncIterator[T]) -> T:
        """The next item of an async iterator living on the loop (StopIteration at its end),
        blocking until it arrives."""
        try:
            return self.run(_next(items))
        except StopAsyncIteration:
            raise StopIteration from None

    async def anext_item(self, items: AsyncIterator[T]) -> T:
        """`next_item` for a caller on another event loop (StopAsyncIteration at the end)."""
        return await self.run_async(_next(items))

    def close(self) -> None:
        """Stop the loop and join its thread; call after the work on it has been closed."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
