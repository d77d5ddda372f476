"""Run a coroutine to the end from plain code: in a script, and inside Jupyter (notebook 04).

``asyncio.run`` refuses to start while an event loop runs in the calling thread, as one
always does in Jupyter. :func:`run_sync` then runs the coroutine on a fresh loop in a thread
of its own and waits for it in short steps, so that "Interrupt kernel" (a
``KeyboardInterrupt`` in the calling thread) **cancels the coroutine's task**: its
``async with`` blocks close their connections, its thread ends, and the interrupt goes on.
A thread pool would not do: leaving its ``with`` block waits for the whole sweep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from typing import Any, Coroutine, TypeVar

from ..cli_args import Terminated

T = TypeVar("T")

#: Name of the thread that runs the coroutine when the caller's thread has a loop running.
THREAD_NAME = "helpers-bench-loop"
#: How often the caller's thread wakes up while it waits (it is interruptible throughout).
POLL_S = 0.1
#: How long an interrupted caller waits for the cancelled coroutine to close what it opened.
CANCEL_JOIN_S = 10.0


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, or, when this thread already runs a loop, the same in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(coro)
    return _run_in_own_thread(coro)


def _run_here(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, where SIGTERM (in the main thread) cancels the task as Ctrl+C does, then
    raises :class:`~helpers.cli_args.Terminated`. Raised from a plain signal handler inside the
    loop instead, it would leave a task whose exception asyncio later prints as a traceback."""
    terminated: list[bool] = []

    async def main() -> T:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm() -> None:
            terminated.append(True)
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread: keep as is
            return await coro
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)   # asyncio resets it to the default

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated() from None
        raise


def _run_in_own_thread(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)  # created before the loop runs: cancellable from the start
    outcome: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome.set_result(loop.run_until_complete(task))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.set_exception(exc)
        finally:
            try:
                _finish(loop)
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    thread = threading.Thread(target=run, name=THREAD_NAME, daemon=True)
    thread.start()
    try:
        while True:
            try:
                return outcome.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                continue
    except BaseException:  # KeyboardInterrupt, or SystemExit from a SIGTERM handler
        if not outcome.done():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed in between: nothing left to cancel
                pass
        thread.join(CANCEL_JOIN_S)
        raise


def _finish(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does on the way out: cancel leftover tasks, close generators and executor."""
    leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for leftover in leftovers:
        leftover.cancel()
    if leftovers:
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
