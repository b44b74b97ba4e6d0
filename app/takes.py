"""A take in progress on the page: its Stop request (`TakeControl`, kept in gr.State) and the
wrapper that stops it when Gradio cancels its event (`stop_when_cancelled`)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass

from app.gate import each_in_thread, in_thread

log = logging.getLogger("vallex.ui")


@dataclass
class TakeControl:
    """One user's take (kept in gr.State, which hands the same object to every event of the
    session). Speak marks it `queued` at the click, before the take waits for its turn; Stop sets
    `stop`: a queued take never starts, a running one ends at once (the engine asks between steps)."""

    queued: bool = False
    running: bool = False
    stop: bool = False

    def busy(self) -> bool:
        return self.queued or self.running

    def stopped_in_queue(self) -> bool:
        """Whether Stop came while this take waited for its turn (then it is not made)."""
        stopped = self.stop
        self.queued = self.stop = False
        return stopped

    @contextlib.contextmanager
    def take(self):
        """Speak's body runs inside."""
        self.running = True
        try:
            yield
        finally:
            self.running = self.stop = False


def stop_when_cancelled(handler):
    """`handler` (a take's: its arguments carry a TakeControl) as Gradio should run it so that a
    cancelled event stops the engine. Gradio cancels an event (gradio_client's `job.cancel()`) by
    cancelling its asyncio task; a plain handler runs in a worker thread that would go on to the end
    of the take. Here each step runs in a worker thread awaited by an async wrapper: the cancel
    reaches the wrapper at once, which asks the take to stop (the engine checks between steps).
    The handler itself stays a plain function, which the tests call directly."""

    def control_of(args, kwargs) -> TakeControl | None:
        return next((a for a in (*args, *kwargs.values()) if isinstance(a, TakeControl)), None)

    def stop(control: TakeControl | None) -> None:
        if control is not None and control.busy():
            log.info("%s was cancelled by its caller: stopping it", handler.__name__)
            control.stop = True

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        async def steps(*args, **kwargs):
            control, made, finished = control_of(args, kwargs), handler(*args, **kwargs), False
            try:
                async for item in each_in_thread(made):
                    yield item
                finished = True
            finally:
                if not finished:  # cancelled (or failed: then the take is over and this does nothing)
                    stop(control)
                    if not made.gi_running:
                        made.close()
        return steps

    @functools.wraps(handler)
    async def call(*args, **kwargs):
        control = control_of(args, kwargs)
        try:
            return await in_thread(functools.partial(handler, *args, **kwargs))
        except BaseException:
            stop(control)
            raise
    return call
