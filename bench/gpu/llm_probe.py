"""Latency, power, SM clock and energy of a Llama-3.1-8B-shaped model on one GPU, at default clocks.

Usage (on a GPU host; nothing here changes a GPU setting, NVML is only read):

    python bench/gpu/llm_probe.py --out bench/results/h100_llm_probe.json

Builds the model from its configuration with random bf16 weights (no download),
then measures prefill latency against batched tokens and decode step latency
against batch size and KV length, each in a CUDA graph (as serving engines run
decode), while a background thread samples power, SM clock, throttle reasons
and the energy counter through the project's telemetry source
(``voltana.gpu.nvml.NvmlDevice``). The GPU runs at whatever
clocks and power limit it was found with: a lent GPU gives default clocks only.

Check it on a CPU with ``--shape tiny --device cpu --telemetry synthetic --quick``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_info import nvml_info, torch_info
from llama_shape import (
    SHAPES,
    RandomLlama,
    attention_flops,
    describe,
    kv_pool,
    kv_view,
    self_check,
)
from power_sampler import COLUMNS, Sampler, open_source, summarize, timed_window
from probe_points import DECODE_POINTS, PREFILL_EAGER_TOKENS, PREFILL_TOKENS

_QUEUE_LAG = 32
"""Iterations the host may run ahead of the GPU inside a timed window."""
REPEATS = [("prefill", 4096, 0), ("decode", 64, 512), ("decode", 256, 512)]


class Probe:
    """Runs every measurement point and collects the records."""

    def __init__(self, args: argparse.Namespace, model: RandomLlama, sampler: Sampler | None):
        self.args = args
        self.model = model
        self.sampler = sampler
        self.cuda = model.device.type == "cuda"
        self.t_origin = time.monotonic()
        self.pool: torch.Tensor | None = None

    # -- plumbing --------------------------------------------------------------------------
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def graphed(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Capture ``fn`` into a CUDA graph (after two warm-up runs); return its replay."""
        if not self.cuda or self.args.no_graphs:
            return fn
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay

    def window(self, body: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
        t0, t1, result = timed_window(self.sampler, self.sync, body)
        rows = self.sampler.rows() if self.sampler else np.zeros((0, len(COLUMNS)))
        rec = summarize(rows, t0, t1)
        rec["t0_s"], rec["t1_s"] = t0 - self.t_origin, t1 - self.t_origin
        return rec, result

    def measure(self, step: Callable[[], Any]) -> dict[str, Any]:
        """Warm up, then time enough iterations to fill ``--point-seconds``."""
        a = self.args
        t_start, n_warm, last_s = time.perf_counter(), 0, 0.0
        while n_warm < 2 or time.perf_counter() - t_start < a.warmup_seconds:
            c0 = time.perf_counter()
            step()
            self.sync()
            last_s = time.perf_counter() - c0
            n_warm += 1
        iters = max(a.min_iters, min(a.max_iters, round(a.point_seconds / max(last_s, 1e-6))))

        def body() -> Callable[[], list[float]]:
            if self.cuda:
                events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
                events[0].record()
                for i in range(iters):
                    step()
                    events[i + 1].record()
                    if i >= _QUEUE_LAG:
                        # keep the host a bounded distance ahead, blocked outside the GIL,
                        # so the sampler thread keeps its rate (the GPU queue never empties)
                        events[i + 1 - _QUEUE_LAG].synchronize()
                return lambda: [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(iters)]
            times = []
            for _ in range(iters):
                c0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - c0)
            return lambda: times

        rec, get_times = self.window(body)
        times = np.array(get_times())
        rec.update(
            iters=iters,
            warmup_iters=n_warm,
            time_s_median=float(np.median(times)),
            time_s_mean=float(times.mean()),
            time_s_p10=float(np.quantile(times, 0.1)),
            time_s_p90=float(np.quantile(times, 0.9)),
        )
        if "energy_j" in rec:
            rec["energy_per_iter_j"] = rec["energy_j"] / iters
        return rec

    # -- points ----------------------------------------------------------------------------
    def idle(self, label: str, seconds: float) -> dict[str, Any]:
        rec, _ = self.window(lambda: time.sleep(seconds))
        rec["when"] = label
        return rec

    def prefill(self, tokens: int, graph: bool) -> dict[str, Any]:
        m, s = self.model, self.model.shape
        assert self.pool is not None
        ids = torch.randint(0, s.vocab, (tokens,), device=m.device)
        kv = kv_view(self.pool, s, 1, tokens)
        fn = lambda: m.prefill(ids, kv)  # noqa: E731
        step = self.graphed(fn) if graph else fn
        rec = {"tokens": tokens, "context_tokens": 0, "graph": graph and self.cuda}
        rec.update(self.measure(step))
        t = rec["time_s_median"]
        flops = s.linear_flops_per_token() * tokens + attention_flops(s, tokens, 0, True)
        rec["tflops"] = flops / t / 1e12
        if "energy_per_iter_j" in rec:
            rec["j_per_token"] = rec["energy_per_iter_j"] / tokens
        return rec

    def decode(self, batch: int, kv_tokens: int) -> dict[str, Any]:
        m, s = self.model, self.model.shape
        assert self.pool is not None
        ids = torch.randint(0, s.vocab, (batch,), device=m.device)
        kv = kv_view(self.pool, s, batch, kv_tokens + 1)
        step = self.graphed(lambda: m.decode(ids, kv, kv_tokens))
        rec = {
            "batch": batch,
            "kv_tokens": kv_tokens,
            "graph": self.cuda and not self.args.no_graphs,
        }
        rec.update(self.measure(step))
        t = rec["time_s_median"]
        bytes_moved = 2 * s.params + batch * (kv_tokens + 1) * s.kv_bytes_per_token
        rec["gbps"] = bytes_moved / t / 1e9
        if "energy_per_iter_j" in rec:
            rec["j_per_token"] = rec["energy_per_iter_j"] / batch
        return rec

    def microbench(self) -> list[dict[str, Any]]:
        """The two ceilings: a large device copy and a large bf16 matrix product."""
        dev, out = self.model.device, []
        n = 8192 if self.cuda else 256
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        rec: dict[str, Any] = {"what": f"bf16 matmul {n}^3"}
        rec.update(self.measure(lambda: a @ b))
        rec["tflops"] = 2 * n**3 / rec["time_s_median"] / 1e12
        out.append(rec)
        nbytes = (1 << 30) if self.cuda else (1 << 20)
        src = torch.randn(nbytes // 2, device=dev, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        rec = {"what": f"device copy {nbytes >> 20} MiB"}
        rec.update(self.measure(lambda: dst.copy_(src)))
        rec["gbps_read_plus_write"] = 2 * nbytes / rec["time_s_median"] / 1e9
        out.append(rec)
        return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _pairs(text: str) -> list[tuple[int, int]]:
    """``"1x512,64x2048"`` -> [(1, 512), (64, 2048)] (batch x KV tokens per sequence)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item:
            b, k = item.lower().split("x")
            out.append((int(b), int(k)))
    return out


def _repeats(text: str) -> list[tuple[str, int, int]]:
    """``"p:4096,d:64x512"`` -> [("prefill", 4096, 0), ("decode", 64, 512)]."""
    out: list[tuple[str, int, int]] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        kind, spec = item.split(":")
        if kind == "p":
            out.append(("prefill", int(spec), 0))
        else:
            ((b, k),) = _pairs(spec)
            out.append(("decode", b, k))
    return out


def _attempt(what: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One point; an error (e.g. out of memory) is recorded with the point, not fatal."""
    try:
        return fn()
    except (RuntimeError, ValueError) as exc:
        print(f"point {what} failed: {exc}", file=sys.stderr, flush=True)
        return {**what, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _run_points(
    probe: Probe,
    results: dict[str, Any],
    prefill_tokens: list[int],
    eager_tokens: list[int],
    decode_points: list[tuple[int, int]],
    repeats: list[tuple[str, int, int]],
) -> None:
    """Every measurement, in a fixed order; results land in ``results`` as they come."""
    model, shape = probe.model, probe.model.shape
    cuda = probe.cuda
    results["model"] = describe(shape)
    results["gqa_native_sdpa"] = model.probe_gqa()
    model.decode_attn = probe.args.decode_attn
    results["decode_attn"] = model.decode_attn
    results["self_check"] = self_check(model)
    print(f"self check: {results['self_check']}", flush=True)
    results["idle"] = [probe.idle("start, model loaded", 2.0 if cuda else 0.3)]
    results["microbench"] = [] if probe.args.no_microbench else probe.microbench()
    _free(cuda)
    need = max(
        [1, *prefill_tokens, *eager_tokens, *(b * (k + 1) for b, k in decode_points)]
        + [x if kind == "prefill" else x * (k + 1) for kind, x, k in repeats]
    )
    pool_tokens = int(probe.args.kv_pool_gib * 2**30 // shape.kv_bytes_per_token)
    probe.pool = kv_pool(shape, min(pool_tokens, need), model.device)
    results["kv_pool_tokens"] = probe.pool.numel() // (shape.kv_bytes_per_token // 2)
    results["prefill"], results["decode"], results["repeats"] = [], [], []
    for graph, toks in [(True, prefill_tokens), (False, eager_tokens)]:
        for t in toks:
            r = _attempt({"tokens": t, "graph": graph}, functools.partial(probe.prefill, t, graph))
            results["prefill"].append(r)
            if "error" not in r:
                print(_row("prefill", r), flush=True)
            _free(cuda)
    for b, k in decode_points:
        r = _attempt({"batch": b, "kv_tokens": k}, functools.partial(probe.decode, b, k))
        results["decode"].append(r)
        if "error" not in r:
            print(_row("decode", r), flush=True)
        _free(cuda)
    for kind, x, k in repeats:
        if kind == "prefill":
            r = _attempt({"tokens": x, "graph": True}, functools.partial(probe.prefill, x, True))
        else:
            r = _attempt({"batch": x, "kv_tokens": k}, functools.partial(probe.decode, x, k))
        r["kind"] = kind
        results["repeats"].append(r)
        if "error" not in r:
            print(_row(kind, r) + "  (repeat)", flush=True)
        _free(cuda)
    results["idle"].append(probe.idle("end, right after work", 3.0 if cuda else 0.3))


def _free(cuda: bool) -> None:
    """Drop the finished point's graph pool and activations before the next point."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _row(kind: str, r: dict[str, Any]) -> str:
    what = (
        f"T={r['tokens']}{'' if r.get('graph') else ' eager'}"
        if kind == "prefill"
        else f"B={r['batch']} K={r['kv_tokens']}"
    )
    p = r.get("avg_power_w")
    clk = r.get("sm_clock_mhz_median")
    jpt = r.get("j_per_token")
    return (
        f"{kind:8s} {what:18s} {1e3 * r['time_s_median']:9.2f} ms  "
        f"{p if p is not None else float('nan'):6.0f} W  "
        f"{clk if clk is not None else float('nan'):6.0f} MHz  "
        f"thr={r.get('throttle_reasons_or', '-')!s:4s} "
        f"{jpt if jpt is not None else float('nan'):8.4f} J/tok"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU torch uses")
    ap.add_argument("--telemetry", default="nvml", choices=["nvml", "synthetic", "none"])
    ap.add_argument("--sample-period-s", type=float, default=0.02)
    ap.add_argument("--point-seconds", type=float, default=2.0, help="timed span per point")
    ap.add_argument("--warmup-seconds", type=float, default=0.3)
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--max-iters", type=int, default=2000)
    ap.add_argument("--kv-pool-gib", type=float, default=40.0)
    ap.add_argument("--no-graphs", action="store_true", help="run decode/prefill eagerly")
    ap.add_argument("--quick", action="store_true", help="a few points only (dry runs)")
    ap.add_argument("--prefill-tokens", type=_ints, default=None, help="e.g. 128,1024")
    ap.add_argument("--prefill-eager-tokens", type=_ints, default=None, help="e.g. 128")
    ap.add_argument("--decode-points", type=_pairs, default=None, help="BxK list: 1x512,64x2048")
    ap.add_argument("--repeats", type=_repeats, default=None, help="p:4096,d:64x512")
    ap.add_argument("--no-microbench", action="store_true")
    ap.add_argument(
        "--decode-attn",
        default="sdpa",
        choices=["sdpa", "matmul"],
        help="decode attention: SDPA (flash) or two matmuls around a softmax (split over KV)",
    )
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--samples-out", default=None, help="raw telemetry samples JSON")
    args = ap.parse_args(argv)

    started = dt.datetime.now(dt.UTC)
    wall0 = time.monotonic()
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    info: dict[str, Any] = {"torch": torch_info()}
    if args.telemetry == "nvml":
        info["nvml"] = nvml_info(args.gpu)
    prefill_tokens, eager_tokens, decode_points, repeats = (
        PREFILL_TOKENS,
        PREFILL_EAGER_TOKENS,
        DECODE_POINTS,
        REPEATS,
    )
    if args.quick:
        prefill_tokens, eager_tokens = [128, 1024], [128]
        decode_points = [(1, 512), (16, 512), (4, 2048)]
        repeats = [("prefill", 1024, 0), ("decode", 16, 512)]
    prefill_tokens = prefill_tokens if args.prefill_tokens is None else args.prefill_tokens
    eager_tokens = eager_tokens if args.prefill_eager_tokens is None else args.prefill_eager_tokens
    decode_points = decode_points if args.decode_points is None else args.decode_points
    repeats = repeats if args.repeats is None else args.repeats
    max_pos = 2 + max(
        [1, *prefill_tokens, *eager_tokens, *(k + 1 for _, k in decode_points)]
        + [x if kind == "prefill" else k + 1 for kind, x, k in repeats]
    )

    sampler = None
    source_label = "none"
    if args.telemetry != "none":
        try:
            source, source_label = open_source(args.telemetry, args.gpu)
        except Exception as exc:  # GpuError from NVML, or a missing package: say which
            print(f"llm_probe: error: telemetry source: {exc}", file=sys.stderr)
            return 2
        sampler = Sampler(source, args.sample_period_s).start()
    print(f"telemetry: {source_label}", flush=True)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
    results: dict[str, Any] = {
        "schema": "voltana.llm_probe/1",
        "started_utc": started.isoformat(),
        "device": info.get("nvml", {}).get("name") or info["torch"].get("device_name") or "cpu",
        "driver": info.get("nvml", {}).get("driver"),
        "power_limit_w": info.get("nvml", {}).get("power_limit_w"),
        "settings_changed": False,
        "clocks": "default (as found: no lock, no power-limit change)",
        "telemetry_source": source_label,
        "sample_period_s": args.sample_period_s,
        "info": info,
        "args": vars(args),
    }
    probe: Probe | None = None
    try:
        with torch.inference_mode():
            probe = Probe(args, RandomLlama(shape, device, max_pos), sampler)
            _run_points(probe, results, prefill_tokens, eager_tokens, decode_points, repeats)
    except Exception as exc:  # keep what was measured, say what broke
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"llm_probe: error: {results['error']}", file=sys.stderr, flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
    if cuda:
        results["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results["info"]["nvml_end"] = nvml_info(args.gpu) if args.telemetry == "nvml" else None
    results["wall_s"] = time.monotonic() - wall0
    results["finished_utc"] = dt.datetime.now(dt.UTC).isoformat()
    if sampler is not None:
        results["sampler"] = {
            "n": int(sampler.rows().shape[0]),
            "call_ms_mean": 1e3 * float(np.mean(sampler.call_s)) if sampler.call_s else None,
            "call_ms_max": 1e3 * float(np.max(sampler.call_s)) if sampler.call_s else None,
            "errors": sampler.errors,
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    if args.samples_out and sampler is not None:
        rows = sampler.rows()
        rows[:, 0] -= probe.t_origin if probe is not None else wall0
        cols = {
            c: [None if np.isnan(v) else round(float(v), 4) for v in rows[:, i]]
            for i, c in enumerate(COLUMNS)
        }
        Path(args.samples_out).write_text(json.dumps({"columns": list(COLUMNS), **cols}))
    print(f"wrote {args.out} ({results['wall_s']:.0f} s)", flush=True)
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
