"""The decode batch each clock settles at, solved in closed form.

A decode instance runs iterations back to back. Its token throughput is the
current batch over the current iteration time, ``rate = b0 / ITL(cur, b0)``.
At another clock f the batch drifts until ``B = rate * ITL(f, B)`` (Little's
law): a slower clock lengthens iterations, requests finish later and the
batch grows; a faster one shrinks it. The fitted decode latency is linear in
B inside each CUDA-graph bucket (``ITL = A_j B + C_j`` with
``A_j = per-request + per-KV-token x KV tokens per request``) and steps between
buckets, so the settling point is found exactly. The batch walks from where
it is: a growing one stops at the first point above it where
``B >= rate * ITL`` (inside a segment, at the linear root
``B = rate C_j / (1 - rate A_j)``, or at a segment's start when ITL steps
down there); a shrinking one stops at the first point below it where
``B < rate * ITL`` (inside a segment, or at a segment's end when ITL steps
up above it). One pass over a [bucket, clock] table, no iteration: this
runs on every control decision.
"""

from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from voltana.predictor.profile import Profile

__all__ = ["DecodeSteadyState", "SteadyDecode"]

FloatArray = npt.NDArray[np.float64]
_MIN_LATENCY_S = 1e-6


class SteadyDecode(NamedTuple):
    """Per allowed clock: the settled batch and what it costs.

    ``batch`` is inf where the clock cannot sustain the current throughput
    (the batch grows past any bucket); ``itl_now_s`` is the (uncorrected) ITL of
    the current batch; ``power_w`` is the mean power at the settled batch (at
    the current batch where that is inf). ``seg_slope`` and ``seg_const`` give
    the uncorrected ITL of any batch in the settled batch's bucket:
    ``seg_slope * B + seg_const``.
    """

    batch: FloatArray
    itl_now_s: FloatArray
    power_w: FloatArray
    seg_slope: FloatArray
    seg_const: FloatArray


class DecodeSteadyState:
    """Decode coefficients of every bucket at the allowed clocks, and the solver.

    Args:
        profile: the fitted profile.
        index: positions of the allowed clocks in ``profile.clocks_mhz``.
    """

    def __init__(self, profile: Profile, index: npt.NDArray[np.int64]) -> None:
        n = len(index)
        rows = np.stack(
            [profile.decode_coef_rows(np.full(n, float(bk)), index) for bk in profile.buckets]
        )  # [bucket, clock, 6]
        # One contiguous [bucket, clock] matrix per coefficient, and its flat view for
        # gathering one bucket per clock with ``take``.
        self._coef = [np.ascontiguousarray(rows[:, :, j]) for j in range(6)]
        self._flat = [c.ravel() for c in self._coef]
        self.buckets = tuple(int(b) for b in profile.buckets)
        self._upper = np.array(self.buckets, dtype=np.float64)
        self._lower = np.concatenate([[0.0], self._upper[:-1]])
        # ITL at each bucket's upper end is end_const + end_kv * (KV tokens per request).
        col = self._upper[:, None]
        self._end_const = self._coef[0] * col + self._coef[2]
        self._end_kv = self._coef[1] * col
        low = self._lower_col = self._lower[:, None]  # ... and at its start (past the one below)
        self._start_const = self._coef[0] * low + self._coef[2]
        self._start_kv = self._coef[1] * low
        self._idle_w = profile.idle_power_table_w()[index]
        self._pos = np.arange(n, dtype=np.int64)
        self.n = n

    def idle_w(self, i: int) -> float:
        """Idle power at allowed clock ``i``."""
        return float(self._idle_w[i])

    def power_now_w(self, i: int, b0: float, k0: float) -> float:
        """Mean power of one iteration of the current batch at allowed clock ``i``."""
        j, c = self.bucket_of(b0), self._coef
        itl = max(float(c[0][j, i] * b0 + c[1][j, i] * k0 + c[2][j, i]), _MIN_LATENCY_S)
        e = max(float(c[3][j, i] * b0 + c[4][j, i] * k0 + c[5][j, i]), float(self._idle_w[i]) * itl)
        return e / itl

    def bucket_of(self, batch: float) -> int:
        """Row of the bucket ``batch`` runs in (rounded up; the last beyond the table)."""
        i = bisect.bisect_left(self.buckets, max(1, math.ceil(batch)))
        return min(i, len(self.buckets) - 1)

    def solve(self, b0: float, k0: float, itl_cur_s: float | None) -> SteadyDecode:
        """Settled batch at every allowed clock for ``b0`` requests holding ``k0`` KV tokens.

        ``itl_cur_s`` is the predicted ITL of the current batch at the clock that
        runs it now; None (unknown clock, unified instance) assumes the current
        batch everywhere. A correction factor on ITL cancels out of the rate, so
        the solve takes uncorrected predictions.
        """
        c, f, n = self._coef, self._flat, self.n
        kv_per = k0 / b0 if b0 > 0 else 0.0
        j0 = self.bucket_of(b0)
        itl_now = np.maximum(c[0][j0] * b0 + c[1][j0] * k0 + c[2][j0], _MIN_LATENCY_S)
        if itl_cur_s is None or b0 <= 0:
            batch = np.full(n, float(b0))
            slope = c[0][j0] + c[1][j0] * kv_per
            return self._priced(batch, itl_now, j0 * n + self._pos, slope, c[2][j0], kv_per)
        k = b0 / itl_cur_s
        # The batch grows where this clock is slower than today's throughput needs.
        grows = itl_now > (1.0 + 1e-9) * itl_cur_s
        upper = self._upper
        end_itl = self._end_const + self._end_kv * kv_per  # ITL at each segment's end
        cap = 2.0 * b0
        if cap > upper[-1]:  # the last segment runs on to twice the current batch
            upper = upper.copy()
            upper[-1] = cap
            end_itl[-1] = (c[0][-1] + c[1][-1] * kv_per) * cap + c[2][-1]
        # Where B >= rate * ITL (the batch stops growing) at each segment's end and start.
        end_ok = end_itl <= upper[:, None] / k
        start_ok = self._start_const + self._start_kv * kv_per <= self._lower_col / k
        # Growing: the first segment from the current one up whose end settles, or (above
        # the current one) whose start already does. Shrinking: the first from the current
        # one down whose start does not settle, or (below it) whose end does not.
        up = end_ok[j0:]
        up[1:] |= start_ok[j0 + 1 :]
        down = ~start_ok[j0::-1]
        down[1:] |= ~end_ok[j0 - 1 :: -1] if j0 > 0 else False
        first = np.where(grows, j0 + up.argmax(axis=0), j0 - down.argmax(axis=0))
        at = first * n + self._pos
        slope = f[0].take(at) + f[1].take(at) * kv_per
        const = f[2].take(at)
        lo = np.maximum(self._lower.take(first), grows * b0)
        hi = np.minimum(upper.take(first), b0 + grows * 1e300)  # shrinking: up to b0
        start_settled = (slope * lo + const) * k <= lo
        end_settled = (slope * hi + const) * k <= hi
        den = 1.0 - k * slope
        root = np.divide(k * const, den, out=hi.copy(), where=den > 0)
        # Inside the segment at the linear root, else at the step the walk stops on.
        at_lo = start_settled & (grows | end_settled)
        root = np.where(at_lo, lo, np.where(end_settled, root, hi))
        # Batches hold whole requests: a running batch never settles below one.
        batch = np.maximum(np.minimum(np.maximum(root, lo), hi), min(b0, 1.0))
        # A growing batch with no segment to stop in outgrows every bucket.
        ok = start_settled | end_settled | ~grows
        if np.count_nonzero(ok) == n:
            return self._priced(batch, itl_now, at, slope, const, kv_per)
        # Unsustainable (the batch outgrows every bucket): inf, priced at the current batch.
        at0 = j0 * n + self._pos
        out = self._priced(
            np.where(ok, batch, b0),
            itl_now,
            np.where(ok, at, at0),
            np.where(ok, slope, c[0][j0] + c[1][j0] * kv_per),
            np.where(ok, const, c[2][j0]),
            kv_per,
        )
        return out._replace(batch=np.where(ok, batch, np.inf))

    def _priced(
        self,
        batch: FloatArray,
        itl_now: FloatArray,
        at: npt.NDArray[np.int64],
        slope: FloatArray,
        const: FloatArray,
        kv_per: float,
    ) -> SteadyDecode:
        """Mean power at ``batch`` in the buckets at flat positions ``at``."""
        f = self._flat
        itl = np.maximum(slope * batch + const, _MIN_LATENCY_S)
        energy = (f[3].take(at) + f[4].take(at) * kv_per) * batch + f[5].take(at)
        power = np.maximum(energy, self._idle_w * itl) / itl
        return SteadyDecode(batch, itl_now, power, slope, const)
