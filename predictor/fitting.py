"""One fitting routine for every prober: robust non-negative least squares per clock.

Each model (prefill latency/energy vs batched tokens; decode latency/energy vs
batch size and KV tokens per batch bucket) is linear in non-negative
coefficients. :func:`robust_nnls` fits it with exact NNLS (the features are few,
so every active set is tried), relative residuals, Huber reweighting, and a
final rejection of gross outliers: profiling runs on shared machines see
stragglers, and one 10x outlier must not tilt a whole clock's fit.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from voltana.predictor.buckets import bucket_index
from voltana.predictor.measurements import DecodeSample, Measurements, PrefillSample
from voltana.predictor.profile import Profile
from voltana.predictor.profile_format import (
    Accuracy,
    DecodeBucketFit,
    DecodeClockFit,
    IdlePoint,
    PrefillClockFit,
    ProfileFile,
)

__all__ = ["evaluate", "fit_profile", "nnls", "robust_nnls", "split_heldout"]

FloatArray = npt.NDArray[np.float64]


def nnls(x: FloatArray, y: FloatArray) -> FloatArray:
    """Exact non-negative least squares for a handful of columns.

    Tries the least-squares solution on every subset of columns and keeps the
    best one whose coefficients are all >= 0 (the optimum of the convex
    problem is one of them). Columns are scaled first for conditioning.
    """
    n_feat = x.shape[1]
    scale = np.max(np.abs(x), axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    best = np.zeros(n_feat)
    best_rss = float(np.sum(y * y))
    for k in range(1, n_feat + 1):
        for cols in itertools.combinations(range(n_feat), k):
            sub = xs[:, cols]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < 0):
                continue
            rss = float(np.sum((y - sub @ coef) ** 2))
            if rss < best_rss - 1e-18:
                best_rss = rss
                best = np.zeros(n_feat)
                best[list(cols)] = coef
    return best / scale


def robust_nnls(
    x: FloatArray,
    y: FloatArray,
    *,
    relative: bool = True,
    huber_k: float = 1.345,
    reject_sigma: float = 4.0,
    iters: int = 15,
) -> FloatArray:
    """Huber-reweighted NNLS with hard rejection of gross outliers.

    Args:
        x: design matrix [n, k] (k <= ~5).
        y: targets [n], > 0.
        relative: weight residuals by 1/y, i.e. fit relative error.
        huber_k: Huber threshold in robust standard deviations (MAD).
        reject_sigma: after reweighting, drop points beyond this many robust
            standard deviations and refit.
        iters: reweighting iterations.

    Returns:
        Coefficients [k], all >= 0.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros(x.shape[1])
    base_w = 1.0 / np.maximum(np.abs(y), 1e-12) if relative else np.ones_like(y)
    keep = np.ones_like(y, dtype=bool)
    coef = np.zeros(x.shape[1])
    for stage in range(2):
        w = base_w**2
        for _ in range(iters):
            sw = np.sqrt(w[keep])
            coef = nnls(x[keep] * sw[:, None], y[keep] * sw)
            r = (y - x @ coef) * base_w
            scale = 1.4826 * float(np.median(np.abs(r[keep] - np.median(r[keep])))) + 1e-12
            u = np.abs(r) / (huber_k * scale)
            w_new = base_w**2 * np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
            if np.allclose(w_new, w, rtol=1e-6, atol=0.0):
                break
            w = w_new
        if stage == 0:
            r = (y - x @ coef) * base_w
            scale = 1.4826 * float(np.median(np.abs(r - np.median(r)))) + 1e-12
            new_keep = np.abs(r) <= reject_sigma * scale
            if new_keep.sum() < max(x.shape[1] + 1, int(0.5 * len(y))) or new_keep.all():
                break
            keep = new_keep
    return coef


def _fit_cols(x: FloatArray, y: FloatArray, cols: list[int]) -> FloatArray:
    """Robust NNLS on a subset of the design's columns; the others get zero."""
    out = np.zeros(x.shape[1])
    out[cols] = robust_nnls(x[:, cols], y)
    return out


def _prefill_design(tokens: FloatArray) -> FloatArray:
    return np.column_stack([tokens, tokens * tokens, np.ones_like(tokens)])


def _decode_design(batch: FloatArray, kv: FloatArray) -> FloatArray:
    return np.column_stack([batch, kv, np.ones_like(batch)])


def _fit_coefficients(
    names: tuple[str, ...],
    x: FloatArray,
    samples: Sequence[PrefillSample] | Sequence[DecodeSample],
    cols: list[int],
) -> dict[str, float]:
    """Latency and energy fitted on one design, named in the fit type's ``COEFFICIENTS`` order.

    The design's columns are the terms of both models, latency's coefficients
    first, as ``PrefillClockFit``/``DecodeBucketFit`` list them.
    """
    lat = _fit_cols(x, np.array([s.latency_s for s in samples]), cols)
    en = _fit_cols(x, np.array([s.energy_j for s in samples]), cols)
    return dict(zip(names, (float(c) for c in (*lat, *en)), strict=True))


def _fit_prefill(clock: int, samples: Sequence[PrefillSample]) -> PrefillClockFit:
    t = np.array([s.batched_tokens for s in samples], dtype=np.float64)
    x = _prefill_design(t)
    cols = [0, 1, 2] if len(set(t)) >= 3 else [0, 2]  # a curve needs three lengths
    eff = [s.effective_clock_mhz for s in samples if s.effective_clock_mhz is not None]
    return PrefillClockFit(
        clock_mhz=clock,
        **_fit_coefficients(PrefillClockFit.COEFFICIENTS, x, samples, cols),
        effective_clock_mhz=float(np.median(eff)) if eff else None,
        samples=len(samples),
    )


def _fit_context(fit: PrefillClockFit, samples: Sequence[PrefillSample]) -> PrefillClockFit:
    """Add the cached-context term: least squares of what the fresh-prompt fit leaves over,
    on T x C (new tokens times cached tokens), never negative."""
    if not samples:
        return fit
    t = np.array([s.batched_tokens for s in samples], dtype=np.float64)
    x = t * np.array([s.context_tokens for s in samples], dtype=np.float64)
    if not (x > 0).any():
        return fit
    base = _prefill_design(t)
    c = fit.coefficients()
    out = {}
    for name, y, coef in (
        ("latency_s_per_ctx_token", [s.latency_s for s in samples], c[:3]),
        ("energy_j_per_ctx_token", [s.energy_j for s in samples], c[3:]),
    ):
        rest = np.asarray(y, dtype=np.float64) - base @ np.asarray(coef)
        out[name] = max(float(x @ rest / (x @ x)), 0.0)
    return msgspec.structs.replace(fit, **out)


def _fit_decode_bucket(bucket: int, samples: Sequence[DecodeSample]) -> DecodeBucketFit:
    b = np.array([s.batch_size for s in samples], dtype=np.float64)
    k = np.array([s.kv_tokens for s in samples], dtype=np.float64)
    x = _decode_design(b, k)
    # A bucket measured at one batch size (1, 2) cannot tell a per-request cost from a
    # constant: fit the constant only, so a fractional batch in it is not extrapolated
    # along an arbitrary slope.
    cols = [c for c, v in ((0, b), (1, k)) if len(set(v)) >= 2] + [2]
    return DecodeBucketFit(
        bucket=bucket,
        **_fit_coefficients(DecodeBucketFit.COEFFICIENTS, x, samples, cols),
        samples=len(samples),
    )


def _fit_decode_clock(
    clock: int, samples: Sequence[DecodeSample], buckets: Sequence[int]
) -> DecodeClockFit:
    by_bucket: dict[int, list[DecodeSample]] = defaultdict(list)
    for s in samples:
        by_bucket[bucket_index(buckets, s.batch_size)].append(s)
    fitted = {i: _fit_decode_bucket(buckets[i], ss) for i, ss in by_bucket.items() if len(ss) >= 2}
    if not fitted:
        raise ValueError(f"decode at {clock} MHz: no bucket has two or more measurements")
    fits: list[DecodeBucketFit] = []
    for i, bk in enumerate(buckets):
        if i in fitted:
            fits.append(fitted[i])
            continue
        # An unmeasured bucket borrows the nearest measured one above (pessimistic), else below.
        above = [j for j in fitted if j > i]
        src = fitted[min(above)] if above else fitted[max(fitted)]
        fits.append(msgspec.structs.replace(src, bucket=bk, samples=0))
    eff = [s.effective_clock_mhz for s in samples if s.effective_clock_mhz is not None]
    return DecodeClockFit(
        clock_mhz=clock, buckets=fits, effective_clock_mhz=float(np.median(eff)) if eff else None
    )


_MIN_TRAIN = 4
"""Points a fit keeps at least (three coefficients plus one), per clock and bucket."""


def split_heldout(
    m: Measurements,
    fraction: float,
    rng: np.random.Generator,
    buckets: Sequence[int] | None = None,
) -> tuple[Measurements, Measurements]:
    """Split into (train, held-out), stratified so every fit keeps enough points.

    Prefill points are grouped by clock, decode points by clock and batch
    bucket; each group holds out about ``fraction`` of its points but keeps at
    least four for the fit, so no held-out point is judged by a fit that never
    had the data to exist.
    """

    def split(items: Sequence[Any], key: Callable[[Any], Any]) -> tuple[list[Any], list[Any]]:
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, s in enumerate(items):
            groups[key(s)].append(i)
        held: set[int] = set()
        for idx in groups.values():
            n_hold = min(round(fraction * len(idx)), max(0, len(idx) - _MIN_TRAIN))
            if fraction > 0 and n_hold > 0:
                held.update(int(i) for i in rng.permutation(idx)[:n_hold])
        train = [s for i, s in enumerate(items) if i not in held]
        test = [s for i, s in enumerate(items) if i in held]
        return train, test

    bk = list(buckets) if buckets is not None else [2**31]
    p_tr, p_te = split(m.prefill, lambda s: s.clock_mhz)
    d_tr, d_te = split(m.decode, lambda s: (s.clock_mhz, bucket_index(bk, s.batch_size)))
    return (
        msgspec.structs.replace(m, prefill=p_tr, decode=d_tr),
        msgspec.structs.replace(m, prefill=p_te, decode=d_te, idle=[]),
    )


def _mae_pct(pred: FloatArray, obs: FloatArray) -> float:
    if len(obs) == 0:
        return float("nan")
    return float(np.mean(np.abs(pred - obs)) / max(float(np.mean(obs)), 1e-12) * 100.0)


def evaluate(profile: Profile, test: Measurements) -> Accuracy:
    """Mean absolute error of ``profile`` on ``test``, in % of the mean measured value."""
    pl = np.array([profile.prefill_latency_s(s.clock_mhz, s.batched_tokens) for s in test.prefill])
    pe = np.array([profile.prefill_energy_j(s.clock_mhz, s.batched_tokens) for s in test.prefill])
    dl = np.array(
        [profile.decode_latency_s(s.clock_mhz, s.batch_size, s.kv_tokens) for s in test.decode]
    )
    de = np.array(
        [profile.decode_energy_j(s.clock_mhz, s.batch_size, s.kv_tokens) for s in test.decode]
    )
    return Accuracy(
        prefill_latency_mae_pct=_mae_pct(pl, np.array([s.latency_s for s in test.prefill])),
        decode_latency_mae_pct=_mae_pct(dl, np.array([s.latency_s for s in test.decode])),
        prefill_energy_mae_pct=_mae_pct(pe, np.array([s.energy_j for s in test.prefill])),
        decode_energy_mae_pct=_mae_pct(de, np.array([s.energy_j for s in test.decode])),
        prefill_points=len(test.prefill),
        decode_points=len(test.decode),
    )


def fit_profile(
    m: Measurements,
    *,
    buckets: Sequence[int],
    prefill_max_batched_tokens: int | None = None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    created_t_ns: int | None = None,
    notes: str = "",
) -> ProfileFile:
    """Fit a profile from measurements; held-out accuracy is stored in ``accuracy``.

    A random ``heldout_fraction`` of the points is kept out of the fit and used
    only to measure accuracy, so the stored figures are honest.

    Raises:
        ValueError: a clock lacks the points a fit needs.
    """
    rng = np.random.default_rng(seed)
    train, test = split_heldout(m, heldout_fraction, rng, buckets)
    pre: dict[int, list[PrefillSample]] = defaultdict(list)
    for p in train.prefill:
        pre[p.clock_mhz].append(p)
    dec: dict[int, list[DecodeSample]] = defaultdict(list)
    for d in train.decode:
        dec[d.clock_mhz].append(d)
    if not pre or not dec or not train.idle:
        raise ValueError("need prefill, decode and idle measurements to fit a profile")
    hw = m.hardware
    idle_by_clock: dict[int, list[float]] = defaultdict(list)
    for i in train.idle:
        idle_by_clock[i.clock_mhz].append(i.power_w)
    max_tokens = prefill_max_batched_tokens or max(p.batched_tokens for p in m.prefill)
    pf = ProfileFile(
        gpu=hw.gpu,
        model=hw.model,
        tp=hw.tp,
        source=m.source,
        created_t_ns=time.time_ns() if created_t_ns is None else created_t_ns,
        notes=notes,
        supported_clocks_mhz=sorted(hw.supported_clocks_mhz),
        power_limit_w=hw.power_limit_w,
        decode_buckets=list(buckets),
        prefill_max_batched_tokens=int(max_tokens),
        prefill=[
            _fit_context(
                _fit_prefill(c, pre[c]), [s for s in m.prefill_context if s.clock_mhz == c]
            )
            for c in sorted(pre)
            if len(pre[c]) >= 2
        ],
        decode=[_fit_decode_clock(c, dec[c], buckets) for c in sorted(dec)],
        idle=[
            IdlePoint(clock_mhz=c, power_w=float(np.median(v)))
            for c, v in sorted(idle_by_clock.items())
        ],
    )
    acc = evaluate(Profile(pf), test)
    return msgspec.structs.replace(pf, accuracy=acc)
