"""Rate-limited logs and supervised loop tasks (common/guard.py)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs
from voltana.common.guard import LogThrottle, died, supervise
from voltana.common.logs import get_logger
from voltana.common.shutdown import shutdown_event


def test_one_line_per_key_per_interval_and_bounded_keys() -> None:
    now = [0.0]
    t = LogThrottle(10.0, max_keys=3, clock=lambda: now[0])
    assert t.allow(("s", "decode")) == 0
    assert [t.allow(("s", "decode")) for _ in range(5)] == [None] * 5
    assert t.allow(("s", "validation")) == 0  # another kind: its own line
    now[0] = 10.0
    assert t.allow(("s", "decode")) == 5  # the next line says how many were left out
    for i in range(100):
        t.allow(("flood", i))
    assert len(t._seen) == 3


async def test_a_dead_loop_task_stops_the_service_loudly() -> None:
    stop = shutdown_event()

    async def loop() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad input nobody handled")

    with capture_logs() as logs:
        task = supervise(asyncio.create_task(loop(), name="demo-loop"), get_logger("test"))
        await asyncio.wait_for(stop.wait(), 2)
    assert task.done()
    assert any(e["event"] == "task_died" and e["log_level"] == "critical" for e in logs)
    dead = died()
    assert dead is not None and "demo-loop" in str(dead) and died() is None


async def test_cancelled_or_finished_tasks_are_not_deaths() -> None:
    stop = shutdown_event()
    t1 = supervise(asyncio.create_task(asyncio.sleep(10)), get_logger("test"))
    t2 = supervise(asyncio.create_task(asyncio.sleep(0)), get_logger("test"))
    t1.cancel()
    await asyncio.gather(t1, t2, return_exceptions=True)
    await asyncio.sleep(0)
    assert not stop.is_set() and died() is None
