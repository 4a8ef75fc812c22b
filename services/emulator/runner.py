"""The emulated worker's iterations, back to back, paced in real time by the GPU model.

``IterationLoop`` plans an iteration with the ``Engine``, asks the ``GpuModel`` how
long it takes at the GPUs' current clock, sleeps until then and applies it; when a
GPU's locked clock moves mid-iteration the work left runs at the new clock
(``groundtruth.timing``, as in the simulator). Engine events go to ``dispatch``;
each iteration is logged for the admin API.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from voltana.groundtruth.engine import BatchPlan, Engine, EngineEvent, iteration_cost
from voltana.groundtruth.gpu_model import GpuModel, IterCost
from voltana.groundtruth.timing import Stretch, retime
from voltana.services.emulator.gpu_device import EmulatedGpu

__all__ = ["IterationLoop"]

_SPIN_S = 0.0012  # asyncio timers have ms resolution: the last stretch is a precise sleep
_MAX_LAG_S = 0.05  # behind the model's timeline by more than this: restart it
_GEN_WINDOW_S = 5.0  # the window gen_throughput reads


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class IterationLoop:
    """Runs ``engine``'s iterations on ``gpus`` (one TP group) at the model's pace.

    Args:
        engine: the scheduler (shared with the request core, one event loop owns both).
        model: the ground-truth GPU model of the group.
        gpus: the emulated devices; the first one's locked clock is the group's.
        dispatch: receives the engine's events (tokens, finishes, KV allocations).
        time_scale: >1 runs faster than the model (demos); 1 is real time.
    """

    def __init__(
        self,
        engine: Engine,
        model: GpuModel,
        gpus: Sequence[EmulatedGpu],
        dispatch: Callable[[list[EngineEvent]], None],
        time_scale: float = 1.0,
    ) -> None:
        self.engine = engine
        self.model = model
        self.gpus = gpus
        self.time_scale = time_scale
        self.iterations: deque[dict[str, Any]] = deque(maxlen=4096)
        self.wall_offset_s = time.time() - time.monotonic()
        self._dispatch = dispatch
        self._seq = 0
        self._wake = asyncio.Event()
        self._clock_moved: asyncio.Future[bool] | None = None
        self._gen_log: deque[tuple[float, int]] = deque()

    async def prepare(self) -> None:
        """Get ready to run (nothing for the model; a torch backend builds its model)."""

    def close(self) -> None:
        """Release what ``prepare`` took (nothing here)."""

    def _record(self, entry: dict[str, Any]) -> None:
        """Keep one iteration's log entry (the admin API's /voltana/iterations)."""
        self.iterations.append(entry)

    def kick(self) -> None:
        """Work may have arrived (or left): an idle loop plans again."""
        self._wake.set()

    def clocks_changed(self) -> None:
        """A GPU's locked clocks changed: the iteration in flight continues at the new clock."""
        if self._clock_moved is not None:
            _resolve(self._clock_moved, True)

    def gen_throughput(self) -> float:
        """Decode tokens per second over the last five seconds (SGLang's gauge)."""
        self._forget_tokens_before(time.monotonic() - _GEN_WINDOW_S)
        return sum(n for _, n in self._gen_log) / _GEN_WINDOW_S

    def _forget_tokens_before(self, t: float) -> None:
        while self._gen_log and self._gen_log[0][0] < t:
            self._gen_log.popleft()

    async def run(self) -> None:
        """Iterations back to back on the model's timeline.

        Each iteration is planned to start where the previous one was planned to end, so
        a late wake-up (host busy, process preempted) delays token delivery but does not
        stretch the emulated GPU's timeline: the next sleep is shorter and catches up.
        When the host falls more than ``_MAX_LAG_S`` behind, the timeline restarts at
        "now" instead of bursting.
        """
        planned_end: float | None = None
        while True:
            now = time.monotonic()
            self._dispatch(self.engine.admit(now))
            plan = self.engine.next_batch(now)
            if plan is None:
                planned_end = None
                self._wake.clear()
                await self._wake.wait()
                continue
            start = now
            if planned_end is not None and now - planned_end < _MAX_LAG_S:
                start = planned_end
            clock = self.gpus[0].busy_clock_mhz
            cost = iteration_cost(self.model, plan, clock)
            planned_end, end_clock, energy_j, changes = await self._run_iteration(
                plan, start, clock, cost
            )
            end = time.monotonic()
            for g in self.gpus:
                g.end_busy(planned_end)
            self._seq += 1
            model_time_s = (planned_end - start) * self.time_scale
            self._record(
                {
                    "seq": self._seq,
                    "t_start_s": start + self.wall_offset_s,
                    "t_end_s": planned_end + self.wall_offset_s,
                    "late_s": end - planned_end,
                    "kind": plan.kind,
                    "batch_size": plan.batch_size,
                    "new_tokens": plan.new_tokens,
                    "kv_tokens": plan.kv_tokens,
                    "clock_mhz": clock,
                    "end_clock_mhz": end_clock,
                    "clock_changes": changes,
                    "effective_clock_mhz": cost.effective_clock_mhz,
                    "model_time_s": model_time_s,
                    "power_w": energy_j / model_time_s,
                    "energy_j": energy_j,
                }
            )
            if plan.kind != "prefill":  # mixed: the decode tokens are its (1, context) chunks
                n = plan.batch_size
                if plan.kind == "mixed":
                    n = sum(1 for k, _ in plan.chunks if k == 1)
                self._gen_log.append((end, n))
                self._forget_tokens_before(end - _GEN_WINDOW_S)
            self._dispatch(self.engine.complete(plan, end))

    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep to ``deadline``; True when woken early by a clock change (see ``clocks_changed``)."""
        left = deadline - time.monotonic()
        if left > _SPIN_S:
            loop = asyncio.get_running_loop()
            fut = self._clock_moved = loop.create_future()
            timer = loop.call_later(left - _SPIN_S, _resolve, fut, False)
            try:
                if await fut:
                    return True
            finally:
                timer.cancel()
                self._clock_moved = None
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(left)
        return False

    async def _run_iteration(
        self, plan: BatchPlan, start: float, clock: int, cost: IterCost
    ) -> tuple[float, int, float, int]:
        """Run ``plan`` from ``start``; -> (planned end, clock at the end, energy J, changes).

        A GPU changes clock within an iteration: when the locked clock moves while it
        runs, the work left runs at the new clock from then on (as the simulator does).
        """
        scale = self.time_scale
        stretch = Stretch(start, 1.0, cost.time_s / scale, cost.energy_j)
        changes = 0
        for g in self.gpus:
            g.begin_busy(start, cost)
        while await self._sleep_until(stretch.end_s):
            new_clock = self.gpus[0].busy_clock_mhz
            t_c = time.monotonic()
            if new_clock == clock or t_c >= stretch.end_s:
                continue
            cost = iteration_cost(self.model, plan, new_clock)
            stretch = retime(stretch, t_c, cost.time_s / scale, cost.energy_j)
            clock, changes = new_clock, changes + 1
            for g in self.gpus:
                g.switch_busy(t_c, cost, stretch.end_s)
        return stretch.end_s, clock, stretch.energy_j, changes
