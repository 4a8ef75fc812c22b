"""In-flight accounting shared by several router processes on one port (``--processes N``).

Each router process keeps its own :class:`~voltana.services.router.accounting.InstanceLoad`
per worker, as a single process does. With ``--processes N`` it also mirrors those
counters into one row of a shared block, and the views its policies see are the sums
over all rows, so least-load, power-of-two, ecoroute and cache-aware's balance check
decide on the whole router's load, not one process's share of it.

The block: ``float64[processes][workers][4]`` in one shared mapping (a memfd the
supervisor creates and hands to every process). A cell holds in-flight requests,
in-flight tokens, queued prefill tokens and the dispatch time (``time.monotonic()``,
the same clock in every process on Linux) of the oldest request still waiting there
(``inf``: none). Every row has one writer, its process, which rewrites its cell after
each change; readers add the rows up. No locks: aligned 8-byte stores are atomic on
the CPUs Python runs on, so a reader sees each number either before or after a change;
it may see one change's request count before its token count (off by one request for
a moment), never a torn value. A row whose process died is zeroed by the supervisor
before the slot's next process starts.

Workers are fixed at start-up (the router has no dynamic worker list): the columns are
the configured workers in configuration order, the same in every process.
"""

from __future__ import annotations

import math
import mmap
from typing import Any

from voltana.schemas.base import Role
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.policies.base import InstanceView
from voltana.services.router.state import ClusterState

__all__ = ["FIELDS", "LoadBlock", "SharedInstanceLoad", "share_load"]

FIELDS = 4  # in-flight requests, in-flight tokens, queued prefill tokens, oldest waiting since
CELL_BYTES = FIELDS * 8
INF = math.inf


class LoadBlock:
    """The shared ``float64[processes][workers][FIELDS]`` block over one file descriptor.

    Args:
        fd: a file (memfd) of at least :meth:`size` bytes, shared by every process.
        processes / workers: the block's shape.
    """

    def __init__(self, fd: int, processes: int, workers: int) -> None:
        if processes < 1 or workers < 1:
            raise ValueError("a load block needs at least one process and one worker")
        self.processes, self.workers = processes, workers
        self._map = mmap.mmap(fd, self.size(processes, workers))
        self.cells = memoryview(self._map).cast("d")

    @staticmethod
    def size(processes: int, workers: int) -> int:
        return processes * workers * CELL_BYTES

    def base(self, slot: int, column: int) -> int:
        """Index of the first field of one process's cell for one worker."""
        if not (0 <= slot < self.processes and 0 <= column < self.workers):
            raise IndexError(f"no cell ({slot}, {column}) in a {self.processes}x{self.workers}")
        return (slot * self.workers + column) * FIELDS

    def clear_row(self, slot: int) -> None:
        """Zero one process's row (no requests, nothing waiting): its process is gone."""
        for column in range(self.workers):
            b = self.base(slot, column)
            self.cells[b] = self.cells[b + 1] = self.cells[b + 2] = 0.0
            self.cells[b + 3] = INF

    def clear(self) -> None:
        for slot in range(self.processes):
            self.clear_row(slot)

    def totals(self, column: int) -> tuple[float, float, float, float]:
        """(requests, tokens, queued prefill tokens, oldest waiting since) over all processes."""
        c = self.cells
        req = tok = queued = 0.0
        oldest = INF
        for slot in range(self.processes):
            b = (slot * self.workers + column) * FIELDS
            req += c[b]
            tok += c[b + 1]
            queued += c[b + 2]
            if c[b + 3] < oldest:
                oldest = c[b + 3]
        return req, tok, queued, oldest

    def close(self) -> None:
        self.cells.release()
        self._map.close()


class SharedInstanceLoad(InstanceLoad):
    """An :class:`InstanceLoad` that mirrors its counters into its process's cell and whose
    :meth:`view` shows the sums over every process's cell."""

    __slots__ = ("_base", "_block", "_column")

    def __init__(self, block: LoadBlock, slot: int, column: int) -> None:
        super().__init__()
        self._block, self._column = block, column
        self._base = block.base(slot, column)
        self._sync()

    def _sync(self) -> None:
        c, b = self._block.cells, self._base
        c[b] = self.in_flight_requests
        c[b + 1] = self.in_flight_tokens
        c[b + 2] = self.queued_prefill_tokens
        ws = self.waiting_since
        c[b + 3] = next(iter(ws.values())) if ws else INF

    def prefill_dispatched(self, request_id: str, input_tokens: int, now: float) -> None:
        super().prefill_dispatched(request_id, input_tokens, now)
        self._sync()

    def decode_dispatched(
        self, request_id: str, input_tokens: int, out_tokens: int, now: float
    ) -> None:
        super().decode_dispatched(request_id, input_tokens, out_tokens, now)
        self._sync()

    def prefill_done(self, request_id: str, input_tokens: int) -> bool:
        done = super().prefill_done(request_id, input_tokens)
        if done:
            self._sync()
        return done

    def first_token(self, request_id: str) -> None:
        super().first_token(request_id)
        self._sync()

    def decode_done(self, request_id: str, input_tokens: int, out_tokens: int) -> None:
        super().decode_done(request_id, input_tokens, out_tokens)
        self._sync()

    def unified_dispatched(
        self, request_id: str, input_tokens: int, out_tokens: int, now: float
    ) -> None:
        super().unified_dispatched(request_id, input_tokens, out_tokens, now)
        self._sync()

    def view(self, instance: str, role: Role, now: float, **telemetry: Any) -> InstanceView:
        """The view of the whole router: every process's requests on this worker."""
        req, tok, queued, oldest = self._block.totals(self._column)
        return InstanceView(
            instance=instance,
            role=role,
            in_flight_requests=int(req),
            in_flight_tokens=int(tok),
            queued_prefill_tokens=int(queued),
            oldest_wait_s=max(now - oldest, 0.0) if oldest != INF else 0.0,
            **telemetry,
        )


def share_load(state: ClusterState, block: LoadBlock, slot: int) -> None:
    """Make ``state``'s workers keep their load in ``block``'s row ``slot`` (before serving).

    Raises:
        ValueError: the block's worker count is not the state's, or a worker already has load.
    """
    if block.workers != len(state.workers):
        raise ValueError(f"load block has {block.workers} workers, router has {len(state.workers)}")
    for column, w in enumerate(state.workers.values()):
        if w.load.in_flight_requests or w.load.waiting_since:
            raise ValueError(f"worker {w.name} already has requests in flight")
        w.load = SharedInstanceLoad(block, slot, column)
