"""One job at a time on the Studio, with a bounded waiting line.

The models are shared by every user of the process, so the UI events and the /v1 API take turns
through one `Gate`. The Gradio queue already bounds the UI; `/v1` requests beyond `max_waiting`
get a `BusyError` (HTTP 429) at once instead of piling up threads.
"""
from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
import anyio.to_thread

from core.errors import BusyError, Stopped


class Gate:
    """A lock around the Studio plus a count of callers waiting for it."""

    def __init__(self, max_waiting: int = 16):
        self.max_waiting = max_waiting
        # the /v1 requests' worker threads: one a waiting request (each waits in a thread), the
        # take's, a streamed take's chunk and a few left by clients that hung up. Not anyio's
        # default pool of 40, shared with the page: with --max-queue near 40 the requests past it
        # would wait for a thread (never told "busy"), and while they waited the page had none
        self.threads = anyio.CapacityLimiter(max_waiting + 4)
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextmanager
    def turn(self, bounded: bool = True, stop=None) -> Iterator[None]:
        """Hold the Studio for the body. `bounded=False` waits however long the line is
        (the Gradio queue bounds the UI already). `stop`: None, or a callable asked while waiting;
        True leaves the line (raises `Stopped`): a /v1 client that hung up while it waited must
        not keep a place that the next client is then refused (429) for."""
        with self._count_lock:
            if bounded and self._waiting >= self.max_waiting:
                raise BusyError(
                    f"The studio is busy: {self._waiting} request{'s are' if self._waiting != 1 else ' is'} "
                    "already waiting.",
                    "Try again in a few seconds.",
                )
            self._waiting += 1
        try:
            while not self._lock.acquire(timeout=0.1 if stop is not None else -1):
                if stop():
                    raise Stopped("The request was withdrawn while it waited for its turn.")
        finally:
            with self._count_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


_DONE = object()


async def in_thread(fn, *args, limiter: anyio.CapacityLimiter | None = None):
    """fn(*args) in a worker thread (of `limiter`'s pool, else anyio's default), abandoned at a
    cancel: the awaiting task ends at once, the thread at its engine's next step (which its stop
    flag, set by the caller, asks for). The default would hold the cancel until the thread is
    done: a whole batch of sentences."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=limiter)


async def each_in_thread(items: Iterator, limiter: anyio.CapacityLimiter | None = None) -> AsyncIterator:
    """A sync iterator's items, each made by `in_thread`."""
    while (item := await in_thread(next, items, _DONE, limiter=limiter)) is not _DONE:
        yield item
