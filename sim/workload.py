"""Workloads for the simulator: trace files (format detected) and synthetic arrivals.

A workload is a time-ordered tuple of requests with arrival times in seconds
from the start of the workload (the first request of a trace arrives at 0).
Supported files:

- Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``),
- BurstGPT CSV (``Timestamp,Model,Request tokens,Response tokens,...``, seconds;
  rows with zero response tokens are failed requests and are dropped),
- Mooncake JSONL (``timestamp`` in ms, ``input_length``, ``output_length`` and,
  when present, ``hash_ids``: one id per 512-token block of the prompt, equal ids
  for equal prefixes; they become the requests' prefix identity for the cache).

To drive a bigger cluster, scale the arrival times (:func:`scale_rate`) rather
than inventing requests.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

import msgspec
import numpy as np
from voltana.common.errors import ConfigError
from voltana.groundtruth.prefix_cache import PrefixIdentity, chain_keys

__all__ = [
    "LengthDist",
    "SimRequest",
    "Workload",
    "load_trace",
    "prompt_token_ids",
    "scale_rate",
    "synthetic",
    "window",
]


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of a workload: arrival time (s), token counts, what its prompt is made of."""

    request_id: str
    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefix: PrefixIdentity | None = None  # None: shares nothing with any other request


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests sorted by arrival time, and where they came from."""

    name: str
    requests: tuple[SimRequest, ...]
    source: str = "synthetic"

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        if not self.requests:
            return 0.0
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate over the workload's span."""
        d = self.duration_s
        return len(self.requests) / d if d > 0 else 0.0

    def summary(self) -> dict[str, float | int | str]:
        """Counts and token statistics for reports."""
        n = len(self.requests)
        ins = np.array([r.input_tokens for r in self.requests], dtype=float) if n else np.zeros(1)
        outs = np.array([r.output_tokens for r in self.requests], dtype=float) if n else np.zeros(1)
        return {
            "name": self.name,
            "source": self.source,
            "requests": n,
            "duration_s": round(self.duration_s, 3),
            "rate_rps": round(self.rate_rps, 4),
            "input_tokens_mean": round(float(ins.mean()), 1),
            "output_tokens_mean": round(float(outs.mean()), 1),
        }


TraceFormat = Literal["azure", "burstgpt", "mooncake"]


def _open_text(path: Path) -> IO[str]:
    """The trace as text; a ``.gz`` file (the packaged trace is one) is decompressed on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _detect_format(path: Path) -> TraceFormat:
    with _open_text(path) as fh:
        first = fh.readline().strip()
    if not first:
        raise ConfigError(f"trace {path} is empty")
    if first.startswith("{"):
        return "mooncake"
    cols = {c.strip().lower() for c in first.split(",")}
    if {"timestamp", "contexttokens", "generatedtokens"} <= cols:
        return "azure"
    if {"timestamp", "request tokens", "response tokens"} <= cols:
        return "burstgpt"
    raise ConfigError(
        f"trace {path}: unknown format (header {first[:120]!r}); expected Azure CSV "
        "(TIMESTAMP,ContextTokens,GeneratedTokens), BurstGPT CSV (Timestamp,...,Request tokens,"
        "Response tokens,...) or Mooncake JSONL (timestamp, input_length, output_length)"
    )


def _parse_azure_ts(text: str) -> float:
    # "2023-11-16 18:15:46.6805900": seven fractional digits, more than fromisoformat takes.
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        frac = (frac + "000000")[:6]
        text = f"{head}.{frac}"
    return datetime.fromisoformat(text).timestamp()


Row = tuple[float, int, int]
"""One trace request: (arrival timestamp s, input tokens, output tokens)."""


def _csv_rows(path: Path, kind: str, parse: Callable[[dict[str, str]], Row | None]) -> list[Row]:
    """Rows of a CSV trace; ``parse`` gets each record with lower-case keys (None: skip it).

    Raises:
        ConfigError: a record ``parse`` cannot read (file and line in the message).
    """
    rows: list[Row] = []
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        for lineno, rec in enumerate(reader, start=2):
            try:
                row = parse({k.strip().lower(): v for k, v in rec.items() if k is not None})
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"trace {path}:{lineno}: bad {kind} row {rec!r}: {exc}") from exc
            if row is not None:
                rows.append(row)
    return rows


def _azure_row(rec: dict[str, str]) -> Row:
    return (
        _parse_azure_ts(rec["timestamp"]),
        int(rec["contexttokens"]),
        int(rec["generatedtokens"]),
    )


def _burstgpt_row(rec: dict[str, str]) -> Row | None:
    out = int(float(rec["response tokens"]))
    if out <= 0:
        return None  # a failed request in BurstGPT's log
    return (float(rec["timestamp"]), int(float(rec["request tokens"])), out)


MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` entry of the Mooncake trace (its README: blocks of 512 tokens)."""


def _rows_mooncake(path: Path, prefixes: list[PrefixIdentity | None]) -> list[Row]:
    rows: list[Row] = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                rows.append(
                    (
                        float(rec["timestamp"]) / 1000.0,
                        int(rec["input_length"]),
                        int(rec["output_length"]),
                    )
                )
                ids = rec.get("hash_ids")
                if ids is not None and not isinstance(ids, list):
                    raise TypeError(f"hash_ids must be a list of integers, got {ids!r}")
                keys = chain_keys(int(b) for b in ids) if ids else ()
                prefixes.append(PrefixIdentity(keys, MOONCAKE_BLOCK_TOKENS) if keys else None)
            except (KeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"trace {path}:{lineno}: bad Mooncake line: {exc}") from exc
    return rows


def load_trace(path: str | Path, *, name: str | None = None) -> Workload:
    """Read a trace file, detecting its format from the header/first line.

    Raises:
        ConfigError: missing file, unknown format or a malformed row (with its line).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"trace {p} not found")
    prefixes: list[PrefixIdentity | None] = []
    try:
        fmt = _detect_format(p)
        if fmt == "azure":
            rows = _csv_rows(p, "Azure", _azure_row)
        elif fmt == "burstgpt":
            rows = _csv_rows(p, "BurstGPT", _burstgpt_row)
        else:
            rows = _rows_mooncake(p, prefixes)
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # unreadable, not text, bad gzip
        raise ConfigError(f"trace {p}: cannot read it: {exc}") from exc
    if not rows:
        raise ConfigError(f"trace {p} has no requests")
    if any(prefixes):
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        t0 = rows[order[0]][0]
        reqs = tuple(
            SimRequest(
                f"r{k}", rows[i][0] - t0, max(1, rows[i][1]), max(1, rows[i][2]), prefixes[i]
            )
            for k, i in enumerate(order)
        )
        return Workload(name=name or p.stem, requests=reqs, source=f"{fmt}:{p.name}")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    reqs = tuple(
        SimRequest(f"r{i}", t - t0, max(1, inp), max(1, out))
        for i, (t, inp, out) in enumerate(rows)
    )
    stem = p.name.removesuffix(".gz").rsplit(".", 1)[0]
    return Workload(name=name or stem, requests=reqs, source=f"{fmt}:{p.name}")


def scale_rate(wl: Workload, factor: float) -> Workload:
    """Multiply the arrival rate by ``factor`` (arrival times divided by it)."""
    if not factor > 0 or not math.isfinite(factor):
        raise ConfigError(f"rate scale must be a positive number, got {factor}")
    if factor == 1.0:
        return wl
    reqs = tuple(dataclasses.replace(r, arrival_s=r.arrival_s / factor) for r in wl.requests)
    return Workload(name=f"{wl.name}x{factor:g}", requests=reqs, source=wl.source)


def window(wl: Workload, start_s: float, duration_s: float | None) -> Workload:
    """Keep the requests arriving in [start_s, start_s + duration_s), re-based to 0."""
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ConfigError(f"bad window start={start_s} duration={duration_s}")
    end = math.inf if duration_s is None else start_s + duration_s
    reqs = tuple(
        dataclasses.replace(r, arrival_s=r.arrival_s - start_s)
        for r in wl.requests
        if start_s <= r.arrival_s < end
    )
    if not reqs:
        raise ConfigError(f"window [{start_s}, {end}) s of {wl.name} holds no request")
    return Workload(name=wl.name, requests=reqs, source=wl.source)


class LengthDist(msgspec.Struct, frozen=True):
    """A token-length distribution.

    ``lognormal``: mean ``mean`` and shape ``sigma`` (log-space std); ``fixed``:
    always ``mean``; ``uniform``: integers in [lo, hi]. Samples are clipped to
    [lo, hi].
    """

    kind: Literal["lognormal", "fixed", "uniform"] = "lognormal"
    mean: float = 1000.0
    sigma: float = 1.0
    lo: int = 1
    hi: int = 32768

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            x = np.full(n, self.mean)
        elif self.kind == "uniform":
            x = rng.integers(self.lo, self.hi + 1, size=n).astype(float)
        elif self.kind == "lognormal":
            mu = math.log(max(self.mean, 1.0)) - 0.5 * self.sigma**2
            x = rng.lognormal(mu, self.sigma, size=n)
        else:  # pragma: no cover - Literal guards this
            raise ConfigError(f"unknown length distribution {self.kind}")
        return np.clip(np.rint(x), self.lo, self.hi).astype(np.int64)


def synthetic(
    *,
    rate_rps: float,
    duration_s: float,
    arrival: Literal["poisson", "gamma"] = "poisson",
    cv: float = 2.0,
    input_len: LengthDist | None = None,
    output_len: LengthDist | None = None,
    seed: int = 0,
) -> Workload:
    """Synthetic arrivals: Poisson, or bursty Gamma inter-arrivals with coefficient of variation ``cv``.

    Defaults resemble the Azure conversation trace (input mean ~1155, output ~211).
    """
    if rate_rps <= 0 or duration_s <= 0:
        raise ConfigError(f"rate ({rate_rps}) and duration ({duration_s}) must be positive")
    rng = np.random.default_rng(seed)
    mean_gap = 1.0 / rate_rps
    n_est = int(rate_rps * duration_s * 1.5) + 16
    if arrival == "poisson":
        gaps = rng.exponential(mean_gap, size=n_est)
    elif arrival == "gamma":
        if cv <= 0:
            raise ConfigError(f"gamma cv must be positive, got {cv}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, mean_gap / shape, size=n_est)
    else:
        raise ConfigError(f"unknown arrival process {arrival!r} (poisson|gamma)")
    times = np.cumsum(gaps) - gaps[0]
    times = times[times < duration_s]
    n = len(times)
    ins = (input_len or LengthDist("lognormal", 1155.0, 0.9, 16, 16384)).sample(rng, n)
    outs = (output_len or LengthDist("lognormal", 211.0, 1.0, 1, 4096)).sample(rng, n)
    reqs = tuple(SimRequest(f"s{i}", float(times[i]), int(ins[i]), int(outs[i])) for i in range(n))
    return Workload(name=f"{arrival}-{rate_rps:g}rps", requests=reqs, source="synthetic")


def prompt_token_ids(req: SimRequest, vocab: int = 32000) -> list[int]:
    """The token ids a live client sends for ``req``: its prompt shares with other
    prompts exactly the prefix blocks the workload says it shares, nothing more.

    A real engine's prefix cache matches token ids: sending one fixed sequence (or
    prefixes of one) for every request turns each prefill into a cache hit that the
    simulator, which follows the workload, never sees. Block ``i`` of the request's
    prefix identity gets ids drawn from its key (equal keys, equal ids); the rest of the
    prompt is drawn from the request's id, so it matches no other request's.
    """
    if vocab < 2:
        raise ValueError(f"vocab must be at least 2, got {vocab}")
    out: list[np.ndarray] = []
    done = 0
    if req.prefix is not None:
        bt = req.prefix.block_tokens
        for key in req.prefix.keys:
            n = min(bt, req.input_tokens - done)
            if n <= 0:
                break
            rng = np.random.default_rng([1, key & 0xFFFFFFFFFFFFFFFF])
            out.append(rng.integers(1, vocab, n))
            done += n
    if done < req.input_tokens:
        digest = hashlib.blake2b(req.request_id.encode(), digest_size=16).digest()
        rng = np.random.default_rng([2, int.from_bytes(digest, "little")])
        out.append(rng.integers(1, vocab, req.input_tokens - done))
    return np.concatenate(out).tolist() if out else []
