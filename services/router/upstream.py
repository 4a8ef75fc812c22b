"""Waiting on a worker while its prefill partner may fail: the helpers both halves of dispatch use.

A PD request has two upstream calls in flight. Whatever the router awaits on
the decode side, it must notice at once when the prefill side failed
(:func:`watch`), and a decode error is often only the echo of a prefill
failure (:func:`raise_if_prefill_failed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any

__all__ = ["PrefillFailed", "cancel", "raise_if_prefill_failed", "upstream_error", "watch"]


class PrefillFailed(Exception):
    """The prefill side failed; ``retryable`` when another worker could do it."""

    def __init__(
        self, message: str, *, status: int = 502, retryable: bool = True, body: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.body = body


def upstream_error(exc: BaseException) -> str:
    """A short description of a failed upstream call, for the client and the logs."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "upstream timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if still running) and wait until it has ended."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def watch(p_task: asyncio.Task[bytes], aw: Any) -> Any:
    """Await ``aw`` but raise PrefillFailed as soon as the prefill side fails.

    Runs on every upstream step of every request, so it waits on one future woken
    by either side's done-callback instead of ``asyncio.wait``'s sets and closures,
    and awaits ``aw`` directly (no task) once the prefill has already answered.
    """
    if p_task.done():
        try:
            p_task.result()  # raises PrefillFailed when it failed
        except BaseException:
            if inspect.iscoroutine(aw):
                aw.close()  # never started: nothing to cancel
            raise
        return await aw
    fut = asyncio.ensure_future(aw)
    waiter = fut.get_loop().create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(wake)
    p_task.add_done_callback(wake)
    try:
        await waiter
        if fut.done():
            return fut.result()
        p_task.result()  # the prefill ended first: raises PrefillFailed when it failed
        return await fut
    finally:
        fut.remove_done_callback(wake)
        p_task.remove_done_callback(wake)
        if not fut.done():
            fut.cancel()
            with contextlib.suppress(BaseException):
                await fut


async def raise_if_prefill_failed(p_task: asyncio.Task[bytes], wait_s: float = 1.0) -> None:
    """Before passing a decode error on, give the prefill a moment to show it failed."""
    await asyncio.wait({p_task}, timeout=wait_s)  # neither raises nor cancels it
    if p_task.done() and not p_task.cancelled():
        exc = p_task.exception()
        if isinstance(exc, PrefillFailed):
            raise exc


def prefill_error(p_task: asyncio.Task[bytes]) -> BaseException | None:
    """The prefill side's exception if it has already failed, else None."""
    return p_task.exception() if p_task.done() and not p_task.cancelled() else None
