"""One state's latency and energy at every clock, kept for the next request that asks.

EcoRoute asks the same question for every candidate of every request: among the
clocks whose latency fits a budget, which costs the least energy. The tables it
asks about depend only on the instance's state (batch and KV, or queued tokens),
which often repeats from request to request, while the budget changes every
time. New states are computed and answered together in one vectorised step
(:func:`cheapest_rows`); a :class:`ClockRow` keeps each state's table, and once
the same question comes back for it, sorts its clocks by latency with the running
least-energy clock along that order, so each later answer is one bisection.
Every path gives what :func:`cheapest_rows` gives (the same floats compared).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IndexArray = np.ndarray[Any, np.dtype[np.intp]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
K = TypeVar("K", bound=Hashable)


def cheapest_rows(
    latency_s: FloatArray,
    energy_j: FloatArray,
    budget_s: FloatArray,
    first: IndexArray | None = None,
) -> tuple[IndexArray, BoolArray]:
    """Per row of [N, clock] tables: (clock index, feasible) of the least-energy fit.

    Among clocks at or above ``first[i]`` (default: all) whose latency fits
    ``budget_s[i]``, the one with the least energy; ties go to the higher clock
    (more slack for the same energy). When none fits, the top clock (fail safe
    toward the SLO) with feasible False.
    """
    n = latency_s.shape[1]
    ok = latency_s <= np.asarray(budget_s, dtype=np.float64)[:, None]
    if first is not None:
        ok &= np.arange(n) >= np.asarray(first)[:, None]
    masked = np.where(ok, energy_j, np.inf)
    # argmin from the top: ties go up, and a row with no fit (all inf) gets the top clock
    idx: IndexArray = n - 1 - np.argmin(masked[:, ::-1], axis=1)
    return idx, np.asarray(ok.any(axis=1))


BUILD_AFTER = 2  # scans of one state's table before its sorted tables pay off


class ClockRow:
    """Latency and energy of one state at every clock (ascending)."""

    __slots__ = ("_by_first", "en", "lat", "top")

    def __init__(self, lat: FloatArray, en: FloatArray) -> None:
        self.lat = lat
        self.en = en
        self.top = len(lat) - 1
        # per lowest clock index: how often scanned so far, or the sorted tables
        self._by_first: dict[int, int | tuple[list[float], list[int]]] = {}

    def _build(self, first: int) -> tuple[list[float], list[int]]:
        """Clocks from ``first`` up by latency, and the least-energy one among each prefix
        (ties go to the higher clock, as ``cheapest_rows``' argmin from the top)."""
        lat, en = self.lat.tolist(), self.en.tolist()
        order = sorted(range(first, len(lat)), key=lat.__getitem__)
        best: list[int] = []
        be, bj = float("inf"), -1
        for j in order:
            e = en[j]
            if e < be or (e == be and j > bj):
                be, bj = e, j
            best.append(bj)
        return [lat[j] for j in order], best

    def sorted_answer(self, budget: float, first: int) -> tuple[int, bool] | None:
        """The answer by bisection once this question came often enough, else None
        (the caller scans, with other rows at once, and this row counts the scan)."""
        built = self._by_first.get(first, 0)
        if isinstance(built, int):
            if built < BUILD_AFTER:
                self._by_first[first] = built + 1
                return None
            built = self._by_first[first] = self._build(first)
        lats, best = built
        k = bisect_right(lats, budget) if budget == budget else 0  # NaN fits nowhere
        return (best[k - 1], True) if k else (self.top, False)

    def cheapest(self, budget: float, first: int = 0) -> tuple[int, bool]:
        """(clock index, feasible): the least-energy clock >= ``first`` within ``budget``;
        the top clock and False when none fits."""
        return answer([self], [budget], [first])[0]


def answer(
    rows: Sequence[ClockRow], budgets: Sequence[float], firsts: Sequence[int] | None = None
) -> list[tuple[int, bool]]:
    """``ClockRow.cheapest`` of each row: kept tables bisected, the others in one scan."""
    out: list[tuple[int, bool] | None] = []
    scan: list[int] = []
    for qi, row in enumerate(rows):
        got = row.sorted_answer(budgets[qi], firsts[qi] if firsts else 0)
        if got is None:
            scan.append(qi)
        out.append(got)
    if scan:
        idx, ok = cheapest_rows(
            np.array([rows[qi].lat for qi in scan]),
            np.array([rows[qi].en for qi in scan]),
            np.array([budgets[qi] for qi in scan], dtype=np.float64),
            np.array([firsts[qi] for qi in scan]) if firsts else None,
        )
        for j, qi in enumerate(scan):
            out[qi] = (int(idx[j]), bool(ok[j]))
    return out  # type: ignore[return-value]  # every None was replaced by a scan


class RowCache(Generic[K]):
    """ClockRows by state key; new states are computed together in one call, then kept.

    ``compute(keys)`` returns (latency [m, clock], energy [m, clock]) of the new
    keys; the cache forgets everything when it would hold more than ``limit``
    rows (states drift, so old ones rarely come back).
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
        """The row of every key (new ones computed in one call; a bad state raises)."""
        rows = self._rows
        missing = [k for k in dict.fromkeys(keys) if k not in rows]
        if missing:
            lat, en = self._compute(missing)
            if len(rows) + len(missing) > self.limit:
                kept = {k: rows[k] for k in keys if k in rows}
                rows.clear()
                rows.update(kept)
            for i, k in enumerate(missing):
                rows[k] = ClockRow(lat[i], en[i])
        return [rows[k] for k in keys]
