"""One state's latency and energy at every clock, kept for the next request that asks.

EcoRoute asks the same question for every candidate of every request: among the
clocks whose latency fits a budget, which costs the least energy. The tables it
asks about depend only on the instance's state (batch and KV, or queued tokens),
which repeats from request to request, while the budget changes every time. A
:class:`ClockRow` sorts one state's clocks by latency once and keeps the running
least-energy clock along that order, so each later question is one bisection.
Answers equal :func:`ecoroute.cheapest_rows` exactly (same floats compared).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
K = TypeVar("K", bound=Hashable)


class ClockRow:
    """Latency and energy of one state at every clock (ascending), as Python floats."""

    __slots__ = ("_by_first", "en", "lat", "top")

    def __init__(self, lat: list[float], en: list[float]) -> None:
        self.lat = lat
        self.en = en
        self.top = len(lat) - 1
        self._by_first: dict[int, tuple[list[float], list[int]]] = {}

    def _build(self, first: int) -> tuple[list[float], list[int]]:
        """Clocks from ``first`` up by latency, and the least-energy one among each prefix
        (ties go to the higher clock, as ``cheapest_rows``' argmin from the top)."""
        lat, en = self.lat, self.en
        order = sorted(range(first, len(lat)), key=lat.__getitem__)
        best: list[int] = []
        be, bj = float("inf"), -1
        for j in order:
            e = en[j]
            if e < be or (e == be and j > bj):
                be, bj = e, j
            best.append(bj)
        return [lat[j] for j in order], best

    def cheapest(self, budget: float, first: int = 0) -> tuple[int, bool]:
        """(clock index, feasible): the least-energy clock >= ``first`` within ``budget``;
        the top clock and False when none fits."""
        built = self._by_first.get(first)
        if built is None:
            built = self._by_first[first] = self._build(first)
        lats, best = built
        k = bisect_right(lats, budget) if budget == budget else 0  # NaN fits nowhere
        return (best[k - 1], True) if k else (self.top, False)


class RowCache(Generic[K]):
    """ClockRows by state key; misses are computed together in one call, then kept.

    ``compute(keys)`` returns (latency [m, clock], energy [m, clock]) for the missing
    keys; the cache forgets everything when it holds ``limit`` rows (states drift,
    so old ones rarely come back).
    """

    def __init__(
        self, compute: Callable[[list[K]], tuple[FloatArray, FloatArray]], limit: int = 4096
    ) -> None:
        self._compute = compute
        self._rows: dict[K, ClockRow] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, keys: Sequence[K]) -> list[ClockRow]:
        rows = self._rows
        missing = [k for k in dict.fromkeys(keys) if k not in rows]
        if missing:
            if len(rows) + len(missing) > self.limit:
                rows.clear()
                missing = list(dict.fromkeys(keys))
            lat, en = self._compute(missing)
            for k, la, e in zip(missing, lat.tolist(), en.tolist(), strict=True):
                rows[k] = ClockRow(la, e)
        return [rows[k] for k in keys]
