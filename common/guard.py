"""Loops that survive bad input, logs that cannot be flooded, tasks that cannot die silently.

Every service loop handles outside data (bus payloads, worker answers). One bad
item must cost that item only: the loop logs it and goes on. The log itself is
bounded: :class:`LogThrottle` lets one line through per key (subject and kind)
per interval and counts the rest, so 20,000 garbage messages make a handful of
lines. A loop task that still ends with an exception is a bug: :func:`supervise`
logs it as critical and ends the process through the shutdown path (exit
status 1), never leaving a half-working service behind.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from voltana.common.errors import VoltanaError
from voltana.common.shutdown import request_shutdown

__all__ = ["LogThrottle", "TaskDied", "died", "supervise"]


class LogThrottle:
    """At most one log line per key per ``interval_s``; keeps at most ``max_keys`` keys.

    ``allow(key)`` returns None to stay quiet, or the number of lines suppressed
    for that key since the last one let through (0 the first time).
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return 0 if last is None else last[1]


class TaskDied(VoltanaError):
    """A service's loop task ended with an exception it did not handle."""


_died: list[TaskDied] = []


def died() -> TaskDied | None:
    """The first loop task that died since the last call, if any (the runner re-raises it).

    Each death is reported once: the call forgets it.
    """
    first = _died[0] if _died else None
    _died.clear()
    return first


def supervise(task: asyncio.Task[Any], log: Any) -> asyncio.Task[Any]:
    """Watch a loop task: when it ends by an exception, log it loudly and end the process.

    The running service's shutdown event is set, as SIGTERM would, so its stop
    path (clock resets included) runs; :func:`voltana.services.runner.run_service`
    then raises :class:`TaskDied` and the command exits non-zero.
    """

    def on_done(t: asyncio.Task[Any]) -> None:
        if t.cancelled() or t.exception() is None:
            return
        exc = t.exception()
        _died.append(TaskDied(f"task {t.get_name()} died: {type(exc).__name__}: {exc}"))
        log.critical("task_died", task=t.get_name(), error=repr(exc), exc_info=exc)
        request_shutdown()

    task.add_done_callback(on_done)
    return task
