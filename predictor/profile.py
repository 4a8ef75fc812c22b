"""The latency/energy predictor: a fitted profile with lookups for any clock and state.

Per profiled clock the file holds prefill and decode fits (see
:mod:`voltana.predictor.profile_format`); a lookup at a clock between
profiled ones interpolates linearly, outside the profiled range it clamps.
Decode batch sizes round UP to a bucket (never an exact match), prefill beyond
the largest profiled batch is split into chunks, so every valid state gets a
finite, positive prediction; predicted energy never falls below idle power
times latency (a busy GPU draws at least its idle power). Controllers use the ``*_table`` methods, which
predict for every clock of the table in one vectorised step.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from voltana.common.errors import ConfigError
from voltana.predictor.buckets import bucket_index
from voltana.predictor.profile_format import ProfileFile, validate_profile_file

__all__ = [
    "Profile",
    "default_profile",
    "load_profile",
    "packaged_profiles",
    "profile_path",
    "save_profile",
]

FloatArray = npt.NDArray[np.float64]
_MIN_LATENCY_S = 1e-6


def _prefill_rows(pf: ProfileFile) -> tuple[FloatArray, FloatArray]:
    clocks = np.array([p.clock_mhz for p in pf.prefill], dtype=np.float64)
    coef = np.array([p.coefficients() for p in pf.prefill], dtype=np.float64)
    return clocks, coef


def _decode_rows(pf: ProfileFile) -> tuple[FloatArray, FloatArray]:
    clocks = np.array([d.clock_mhz for d in pf.decode], dtype=np.float64)
    coef = np.array(
        [[b.coefficients() for b in d.buckets] for d in pf.decode], dtype=np.float64
    )  # [clock, bucket, 6]
    return clocks, np.transpose(coef, (1, 0, 2))  # [bucket, clock, 6]


def _interp_cols(x: FloatArray, xp: FloatArray, fp: FloatArray) -> FloatArray:
    """Interpolate every column of ``fp`` (rows at ``xp``) at ``x``, clamped at the ends."""
    return np.stack([np.interp(x, xp, fp[:, j]) for j in range(fp.shape[1])], axis=-1)


def _check(name: str, value: float) -> float:
    v = float(value)
    if math.isnan(v) or v < 0.0 or math.isinf(v):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


class Profile:
    """Predicts iteration latency (s), energy (J) and power (W) of one instance.

    Args:
        pf: a validated profile file.
    """

    def __init__(self, pf: ProfileFile) -> None:
        validate_profile_file(pf)
        self.file = pf
        self.gpu = pf.gpu
        self.model = pf.model
        self.tp = pf.tp
        self.buckets: tuple[int, ...] = tuple(pf.decode_buckets)
        self._bucket_arr = np.array(self.buckets, dtype=np.float64)
        self.clocks_mhz: tuple[int, ...] = tuple(pf.supported_clocks_mhz)
        self.max_clock_mhz = self.clocks_mhz[-1]
        self.min_clock_mhz = self.clocks_mhz[0]
        self.prefill_max_batched_tokens = pf.prefill_max_batched_tokens
        self._clock_index = {c: i for i, c in enumerate(self.clocks_mhz)}
        x = np.array(self.clocks_mhz, dtype=np.float64)
        self._p_clocks, self._p_coef = _prefill_rows(pf)
        self._d_clocks, self._d_coef = _decode_rows(pf)
        self._i_clocks = np.array([i.clock_mhz for i in pf.idle], dtype=np.float64)
        self._i_power = np.array([i.power_w for i in pf.idle], dtype=np.float64)
        # Coefficients at every clock of the table, for vectorised controller lookups.
        self._p_tab = _interp_cols(x, self._p_clocks, self._p_coef)  # [clock, 6]
        self._d_tab = np.stack(
            [_interp_cols(x, self._d_clocks, self._d_coef[b]) for b in range(len(self.buckets))]
        )  # [bucket, clock, 6]
        # Column-contiguous copies: a table lookup reads one coefficient across all clocks.
        self._p_tab = np.ascontiguousarray(self._p_tab.T).T
        self._d_tab = np.ascontiguousarray(self._d_tab.transpose(0, 2, 1)).transpose(0, 2, 1)
        self._i_tab = np.interp(x, self._i_clocks, self._i_power)
        ctx = np.array(
            [[p.latency_s_per_ctx_token, p.energy_j_per_ctx_token] for p in pf.prefill], float
        )
        self._ctx_tab = _interp_cols(x, self._p_clocks, ctx).T  # [2, clock]
        eff = [(p.clock_mhz, p.effective_clock_mhz) for p in pf.prefill if p.effective_clock_mhz]
        self._p_eff = (
            (np.array([c for c, _ in eff], float), np.array([e for _, e in eff], float))
            if eff
            else None
        )

    # -- coefficient access -------------------------------------------------------------

    def _prefill_coef(self, clock_mhz: float) -> FloatArray:
        i = self._clock_index.get(int(clock_mhz)) if float(clock_mhz).is_integer() else None
        if i is not None:
            return self._p_tab[i]
        c = _check("clock_mhz", clock_mhz)
        return _interp_cols(np.array([c]), self._p_clocks, self._p_coef)[0]

    def _decode_coef(self, clock_mhz: float, batch_size: float) -> FloatArray:
        b = bucket_index(self.buckets, _check("batch_size", batch_size))
        i = self._clock_index.get(int(clock_mhz)) if float(clock_mhz).is_integer() else None
        if i is not None:
            return self._d_tab[b, i]
        c = _check("clock_mhz", clock_mhz)
        return _interp_cols(np.array([c]), self._d_clocks, self._d_coef[b])[0]

    # -- prefill ------------------------------------------------------------------------

    def _chunks(self, batched_tokens: float) -> tuple[float, float]:
        """(number of full chunks of the largest profiled batch, remaining tokens)."""
        t = _check("batched_tokens", batched_tokens)
        cap = float(self.prefill_max_batched_tokens)
        if t <= cap:
            return 0.0, t
        full = math.floor(t / cap)
        return float(full), t - full * cap

    @staticmethod
    def _poly(coef: FloatArray, t: float | FloatArray, off: int) -> FloatArray:
        return coef[..., off] * t + coef[..., off + 1] * t * t + coef[..., off + 2]

    def _prefill_eval(self, coef: FloatArray, batched_tokens: float, off: int) -> FloatArray:
        full, rem = self._chunks(batched_tokens)
        if not full:
            return self._poly(coef, rem, off)
        out = full * self._poly(coef, float(self.prefill_max_batched_tokens), off)
        return out + self._poly(coef, rem, off) if rem > 0 else out

    def prefill_latency_s(self, clock_mhz: float, batched_tokens: float) -> float:
        """Time to prefill ``batched_tokens`` new tokens at ``clock_mhz``."""
        coef = self._prefill_coef(clock_mhz)
        return max(float(self._prefill_eval(coef, batched_tokens, 0)), _MIN_LATENCY_S)

    def prefill_energy_j(self, clock_mhz: float, batched_tokens: float) -> float:
        """Instance energy of that prefill."""
        coef = self._prefill_coef(clock_mhz)
        floor = self.idle_power_w(clock_mhz) * self.prefill_latency_s(clock_mhz, batched_tokens)
        return max(float(self._prefill_eval(coef, batched_tokens, 3)), floor)

    def prefill_power_w(self, clock_mhz: float, batched_tokens: float) -> float:
        """Mean instance power during that prefill."""
        return self.prefill_energy_j(clock_mhz, batched_tokens) / self.prefill_latency_s(
            clock_mhz, batched_tokens
        )

    def prefill_latency_table_s(self, batched_tokens: float) -> FloatArray:
        """Prefill latency at every clock of ``clocks_mhz`` (ascending)."""
        return np.maximum(self._prefill_eval(self._p_tab, batched_tokens, 0), _MIN_LATENCY_S)

    def prefill_energy_table_j(self, batched_tokens: float) -> FloatArray:
        """Prefill energy at every clock of ``clocks_mhz``."""
        floor = self._i_tab * self.prefill_latency_table_s(batched_tokens)
        return np.maximum(self._prefill_eval(self._p_tab, batched_tokens, 3), floor)

    def prefill_effective_clock_mhz(self, clock_mhz: float) -> float:
        """The SM clock prefill actually ran at when ``clock_mhz`` was requested.

        Below the power cap this is the requested clock; above it, the clock the
        GPU throttled to (as measured while profiling). Without measurements,
        the requested clock.
        """
        c = _check("clock_mhz", clock_mhz)
        if self._p_eff is None:
            return c
        return min(c, float(np.interp(c, self._p_eff[0], self._p_eff[1])))

    # -- decode -------------------------------------------------------------------------

    def decode_latency_s(self, clock_mhz: float, batch_size: float, kv_tokens: float) -> float:
        """One decode iteration of ``batch_size`` requests holding ``kv_tokens`` KV tokens."""
        c = self._decode_coef(clock_mhz, batch_size)
        k = _check("kv_tokens", kv_tokens)
        return max(float(c[0] * batch_size + c[1] * k + c[2]), _MIN_LATENCY_S)

    def decode_energy_j(self, clock_mhz: float, batch_size: float, kv_tokens: float) -> float:
        """Instance energy of that iteration."""
        c = self._decode_coef(clock_mhz, batch_size)
        k = _check("kv_tokens", kv_tokens)
        floor = self.idle_power_w(clock_mhz) * self.decode_latency_s(clock_mhz, batch_size, k)
        return max(float(c[3] * batch_size + c[4] * k + c[5]), floor)

    def decode_power_w(self, clock_mhz: float, batch_size: float, kv_tokens: float) -> float:
        """Mean instance power during that iteration."""
        return self.decode_energy_j(clock_mhz, batch_size, kv_tokens) / self.decode_latency_s(
            clock_mhz, batch_size, kv_tokens
        )

    def decode_coef_rows(self, batch_sizes: FloatArray, index: npt.NDArray[np.int64]) -> FloatArray:
        """Decode coefficients [n, 6] at clocks ``clocks_mhz[index]``, each in its own bucket.

        Row ``i`` holds (latency per request, per KV token, constant, energy per
        request, per KV token, constant) at clock ``index[i]`` for the bucket of
        ``batch_sizes[i]`` (rounded up, clamped to the table), for controllers that
        solve for a different batch size at each clock.
        """
        b = np.asarray(batch_sizes, dtype=np.float64)
        if not np.isfinite(b).all():
            raise ValueError("batch_sizes must be finite")
        size = np.maximum(1.0, np.ceil(b))
        bi = np.minimum(np.searchsorted(self._bucket_arr, size, side="left"), len(self.buckets) - 1)
        return self._d_tab[bi, index]

    def decode_latency_table_s(self, batch_size: float, kv_tokens: float) -> FloatArray:
        """Decode iteration latency at every clock of ``clocks_mhz``."""
        c = self._d_tab[bucket_index(self.buckets, _check("batch_size", batch_size))]
        k = _check("kv_tokens", kv_tokens)
        return np.maximum(c[:, 0] * batch_size + c[:, 1] * k + c[:, 2], _MIN_LATENCY_S)

    def decode_energy_table_j(self, batch_size: float, kv_tokens: float) -> FloatArray:
        """Decode iteration energy at every clock of ``clocks_mhz``."""
        c = self._d_tab[bucket_index(self.buckets, _check("batch_size", batch_size))]
        k = _check("kv_tokens", kv_tokens)
        floor = self._i_tab * np.maximum(
            c[:, 0] * batch_size + c[:, 1] * k + c[:, 2], _MIN_LATENCY_S
        )
        return np.maximum(c[:, 3] * batch_size + c[:, 4] * k + c[:, 5], floor)

    # -- many states at once ------------------------------------------------------------

    def decode_tables(
        self, batch_sizes: npt.ArrayLike, kv_tokens: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """(latency [N, clock], energy [N, clock]) of N decode states in one step.

        Row ``i`` equals ``decode_latency_table_s`` / ``decode_energy_table_j`` of
        ``(batch_sizes[i], kv_tokens[i])``, bit for bit (a router asks this for
        every candidate of a request).
        """
        b = np.asarray(batch_sizes, dtype=np.float64)
        k = np.asarray(kv_tokens, dtype=np.float64)
        if not (b.min() >= 0.0 and k.min() >= 0.0 and b.max() < np.inf and k.max() < np.inf):
            raise ValueError("batch_sizes and kv_tokens must be finite and >= 0")  # NaN too
        size = np.maximum(1.0, np.ceil(b))
        bi = np.minimum(np.searchsorted(self._bucket_arr, size, side="left"), len(self.buckets) - 1)
        c = self._d_tab[bi]  # [N, clock, 6]
        bb, kk = b[:, None], k[:, None]
        lat = np.maximum(c[..., 0] * bb + c[..., 1] * kk + c[..., 2], _MIN_LATENCY_S)
        energy = np.maximum(c[..., 3] * bb + c[..., 4] * kk + c[..., 5], self._i_tab * lat)
        return lat, energy

    def prefill_context_tables(
        self, new_tokens: npt.ArrayLike, context_tokens: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """(latency [N, clock], energy [N, clock]) that cached context adds to N prefills:
        each new token attends to the cached tokens too (zeros without such measurements)."""
        tc = np.asarray(new_tokens, dtype=np.float64) * np.asarray(context_tokens, np.float64)
        return tc[:, None] * self._ctx_tab[0], tc[:, None] * self._ctx_tab[1]

    def prefill_tables(self, batched_tokens: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(latency [N, clock], energy [N, clock]) of N prefills in one step.

        Row ``i`` equals ``prefill_latency_table_s`` / ``prefill_energy_table_j`` of
        ``batched_tokens[i]``, bit for bit.
        """
        t = np.asarray(batched_tokens, dtype=np.float64)
        if not (t.min() >= 0.0 and t.max() < np.inf):
            raise ValueError("batched_tokens must be finite and >= 0")  # NaN too
        cap = float(self.prefill_max_batched_tokens)
        if t.max() <= cap:  # no prompt spans several chunks (the usual case)
            lat = np.maximum(self._poly(self._p_tab, t[:, None], 0), _MIN_LATENCY_S)
            return lat, np.maximum(self._poly(self._p_tab, t[:, None], 3), self._i_tab * lat)
        full = np.where(t > cap, np.floor(t / cap), 0.0)
        rem = (t - full * cap)[:, None]
        chunked = (full > 0)[:, None]
        tail = (rem > 0) & chunked

        def evaluate(off: int) -> FloatArray:
            whole = self._poly(self._p_tab, cap, off)  # [clock]
            part = self._poly(self._p_tab, rem, off)  # [N, clock] (rem broadcasts)
            return np.where(chunked, full[:, None] * whole + np.where(tail, part, 0.0), part)

        lat = np.maximum(evaluate(0), _MIN_LATENCY_S)
        return lat, np.maximum(evaluate(3), self._i_tab * lat)

    # -- idle ---------------------------------------------------------------------------

    def idle_power_w(self, clock_mhz: float) -> float:
        """Instance power with nothing running at ``clock_mhz``."""
        c = _check("clock_mhz", clock_mhz)
        return float(np.interp(c, self._i_clocks, self._i_power))

    def idle_power_table_w(self) -> FloatArray:
        """Idle power at every clock of ``clocks_mhz``."""
        return self._i_tab.copy()

    def nearest_clock_mhz(self, clock_mhz: float) -> int:
        """The table clock closest to ``clock_mhz`` (ties: the higher, safer one)."""
        return min(self.clocks_mhz, key=lambda c: (abs(c - clock_mhz), -c))

    def to_json(self) -> bytes:
        """The profile file as indented JSON."""
        return msgspec.json.format(msgspec.json.encode(self.file), indent=2)

    def __repr__(self) -> str:
        return (
            f"Profile(gpu={self.gpu!r}, model={self.model!r}, tp={self.tp}, "
            f"clocks={self.min_clock_mhz}-{self.max_clock_mhz} MHz, source={self.file.source!r})"
        )


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file.

    Raises:
        ConfigError: the file is missing, not JSON, or not a valid profile.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read profile {p}: {exc}") from exc
    try:
        return Profile(msgspec.json.decode(data, type=ProfileFile))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid profile {p}: {exc}") from exc


def save_profile(profile: Profile | ProfileFile, path: str | Path) -> Path:
    """Write a profile as indented JSON (validating it first); returns the path."""
    prof = profile if isinstance(profile, Profile) else Profile(profile)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(prof.to_json() + b"\n")
    return p


def profile_path(gpu: str, model: str) -> str:
    """File name of a packaged profile, e.g. ``h100-llama-3.1-8b.json``."""
    return f"{gpu}-{model}.json"


def packaged_profiles() -> list[tuple[str, str]]:
    """The (gpu, model) pairs with a packaged profile: the choices of ``--gpu``/``--model``."""
    folder = resources.files("voltana.predictor").joinpath("profiles")
    names = sorted(f.name for f in folder.iterdir() if f.name.endswith(".json"))
    return [tuple(n.removesuffix(".json").split("-", 1)) for n in names]  # type: ignore[misc]


@functools.cache
def default_profile(gpu: str = "h100", model: str = "llama-3.1-8b") -> Profile:
    """The packaged profile for ``gpu`` and ``model`` (fitted from profiling runs).

    Raises:
        ConfigError: no packaged profile for that pair.
    """
    res = resources.files("voltana.predictor").joinpath("profiles", profile_path(gpu, model))
    if not res.is_file():
        raise ConfigError(f"no packaged profile for gpu={gpu!r} model={model!r}")
    try:
        return Profile(msgspec.json.decode(res.read_bytes(), type=ProfileFile))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"packaged profile {profile_path(gpu, model)} is invalid: {exc}") from exc
