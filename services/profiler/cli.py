"""``voltana profile``: measure a worker (or the simulated hardware), fit, write a profile.

Subcommands:

- ``simulate``: profile the emulator's ground-truth GPU model with noise (how the
  packaged default profiles are made);
- ``live``: drive running prefill/decode workers (emulated or SGLang) through a
  clock backend, reading energy from the GPUs' cumulative counters;
- ``fit``: refit a profile from saved measurements;
- ``show``: print a profile's clocks, accuracy and a few predictions.

Each prints the held-out accuracy (MAE as % of the mean) of the fit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from voltana.groundtruth.gpu_specs import GPUS, MODELS
from voltana.predictor.profile import packaged_profiles

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``voltana profile`` and its subcommands."""
    p = subparsers.add_parser(
        "profile", help="measure latency/energy across GPU clocks and fit a profile"
    )
    sub = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, help="profile JSON to write")
        sp.add_argument("--save-measurements", help="also write the raw measurements (JSON)")
        sp.add_argument("--heldout", type=float, default=0.2, help="held-out fraction (0.2)")
        sp.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
        sp.add_argument(
            "--max-batch-size", type=int, default=512, help="largest decode batch profiled"
        )
        sp.add_argument(
            "--max-prefill-tokens",
            type=int,
            default=8192,
            help="largest prefill batch profiled (the engine's chunk size)",
        )
        sp.add_argument("--quick", action="store_true", help="a smaller plan (live runs)")
        sp.add_argument("--repeats", type=int, default=1, help="samples per point")
        sp.add_argument("--clocks", help="explicit clocks to profile, e.g. 1980,1410,990")
        sp.add_argument("--batch-sizes", help="explicit decode batch sizes, e.g. 1,8,9,16")
        sp.add_argument("--context-tokens", help="decode context lengths per request")
        sp.add_argument("--prefill-tokens", help="prefill lengths, e.g. 256,1024,4096")
        sp.add_argument(
            "--prefill-context",
            help="prefills over a cached prefix as NEW:CACHED pairs, e.g. 256:4096,1024:16384, "
            "or 'none' (default: five points up to 2048 new over 16384 cached)",
        )

    s = sub.add_parser("simulate", help="profile the simulated hardware (ground-truth model)")
    s.add_argument("--gpu", default="h100", choices=list(GPUS), help="simulated GPU")
    s.add_argument(
        "--gpu-spec",
        default=None,
        metavar="FILE",
        help="the GPU's constants from a JSON spec file instead of the built-in --gpu's",
    )
    s.add_argument("--model", default="llama-3.1-8b", choices=list(MODELS), help="model shape")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs")
    s.add_argument("--noise", type=float, default=0.03, help="relative noise per iteration")
    s.add_argument("--hw-seed", type=int, default=1, help="seed of the simulated hardware")
    common(s)
    s.set_defaults(func=_cmd_simulate)

    lv = sub.add_parser("live", help="profile running workers through a clock backend")
    lv.add_argument("--gpu", required=True, help="GPU kind written into the profile")
    lv.add_argument("--model", required=True, help="model name written into the profile")
    lv.add_argument("--prefill-url", required=True, help="prefill worker base URL")
    lv.add_argument("--prefill-gpus", required=True, help="its node-global GPU indices, e.g. 0")
    lv.add_argument("--decode-url", required=True, help="decode worker base URL")
    lv.add_argument("--decode-gpus", required=True, help="its GPU indices, e.g. 1")
    lv.add_argument(
        "--backend",
        choices=["emulated", "nvml"],
        default="emulated",
        help="clock backend and energy source (emulated: the workers' admin HTTP)",
    )
    lv.add_argument(
        "--clock-stride",
        type=int,
        default=None,
        help="profile every Nth supported clock (default: 12 quick, 6 full)",
    )
    lv.add_argument(
        "--decode-tokens", type=int, default=32, help="tokens generated per decode request"
    )
    lv.add_argument(
        "--unified",
        action="store_true",
        help="workers are not PD-disaggregated (no bootstrap fields)",
    )
    common(lv)
    lv.set_defaults(func=_cmd_live, max_batch_size=256)

    f = sub.add_parser("fit", help="fit a profile from saved measurements")
    f.add_argument("measurements", help="measurements JSON written by --save-measurements")
    f.add_argument("--out", required=True, help="profile JSON to write")
    f.add_argument("--heldout", type=float, default=0.2, help="share held out to score the fit")
    f.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    f.add_argument("--max-batch-size", type=int, default=512, help="largest decode batch")
    f.set_defaults(func=_cmd_fit)

    sh = sub.add_parser("show", help="summarise a profile file (or a packaged one)")
    sh.add_argument("path", nargs="?", help="profile JSON (default: the packaged one)")
    pairs = packaged_profiles()
    sh.add_argument(
        "--gpu", default="h100", choices=sorted({g for g, _ in pairs}), help="packaged profile GPU"
    )
    sh.add_argument(
        "--model",
        default="llama-3.1-8b",
        choices=sorted({m for _, m in pairs}),
        help="packaged profile model",
    )
    sh.set_defaults(func=_cmd_show)


def _progress() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _override(args: argparse.Namespace, plan: Any, supported: list[int]) -> Any:
    """Replace parts of the default plan with explicit lists from the command line."""
    import msgspec
    from voltana.common.errors import ConfigError

    changes: dict[str, list[int]] = {}
    for flag, field in (
        ("clocks", "clocks_mhz"),
        ("batch_sizes", "decode_batch_sizes"),
        ("context_tokens", "decode_context_tokens"),
        ("prefill_tokens", "prefill_tokens"),
    ):
        text = getattr(args, flag, None)
        if text:
            changes[field] = sorted(set(_indices(text)))
    bad = sorted(set(changes.get("clocks_mhz", [])) - set(supported))
    if bad:
        raise ConfigError(f"--clocks: {bad} not supported by the GPU")
    ctx = getattr(args, "prefill_context", None)
    if ctx:
        plan = msgspec.structs.replace(plan, prefill_context_points=_pairs(ctx))
    return msgspec.structs.replace(plan, **changes) if changes else plan


def _pairs(text: str) -> list[tuple[int, int]]:
    """``NEW:CACHED,...`` (or ``none``) as (new tokens, cached tokens) pairs."""
    from voltana.common.errors import ConfigError

    if text.strip().lower() == "none":
        return []
    try:
        out = [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ConfigError(f"--prefill-context: bad NEW:CACHED list {text!r}") from exc
    if not out or any(len(p) != 2 or p[0] < 1 or p[1] < 1 for p in out):
        raise ConfigError(f"--prefill-context: bad NEW:CACHED list {text!r}")
    return [(p[0], p[1]) for p in out]


def _run_plan(args: argparse.Namespace, prober: Any, plan: Any, notes: str) -> int:
    import msgspec
    from voltana.predictor.profile import Profile, save_profile
    from voltana.services.profiler.core import profile_from_prober

    try:
        plan = _override(args, plan, prober.hardware().supported_clocks_mhz)
    except BaseException:
        prober.close()
        raise
    with _progress() as prog:
        task = prog.add_task("profiling", total=plan.size())

        def tick(done: int, total: int, what: str) -> None:
            prog.update(task, completed=done, description=what)

        try:
            pf, m = profile_from_prober(
                prober,
                plan,
                heldout_fraction=args.heldout,
                seed=args.seed,
                progress=tick,
                notes=notes,
            )
        finally:
            prober.close()
    if args.save_measurements:
        from pathlib import Path

        Path(args.save_measurements).write_bytes(
            msgspec.json.format(msgspec.json.encode(m), indent=1) + b"\n"
        )
    path = save_profile(pf, args.out)
    _print_summary(Profile(pf), str(path))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from voltana.common.errors import ConfigError
    from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
    from voltana.groundtruth.spec_file import load_gpu_spec
    from voltana.services.profiler.core import SimulatedProber, default_plan

    if args.gpu not in GPUS or args.model not in MODELS:
        raise ConfigError(
            f"unknown --gpu {args.gpu!r} or --model {args.model!r} "
            f"(gpus: {', '.join(GPUS)}; models: {', '.join(MODELS)})"
        )
    spec = load_gpu_spec(args.gpu_spec) if args.gpu_spec else GPUS[args.gpu]
    gm = GpuModel(spec, MODELS[args.model], tp=args.tp, noise=args.noise, seed=args.hw_seed)
    prober = SimulatedProber(gm, args.gpu, args.model, seed=args.hw_seed)
    plan = default_plan(
        prober.hardware(),
        quick=args.quick,
        max_batch_size=args.max_batch_size,
        max_kv_tokens=prober.max_kv_tokens(),
        max_prefill_tokens=args.max_prefill_tokens,
        repeats=args.repeats,
    )
    notes = (
        f"voltana profile simulate --gpu {args.gpu} --model {args.model} --tp {args.tp} "
        f"--noise {args.noise} --hw-seed {args.hw_seed} --seed {args.seed} "
        f"--repeats {args.repeats}{' --quick' if args.quick else ''}"
        f"{f' --gpu-spec {args.gpu_spec}' if args.gpu_spec else ''}"
    )
    return _run_plan(args, prober, plan, notes)


def _indices(text: str) -> list[int]:
    from voltana.common.errors import ConfigError

    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"bad integer list {text!r}") from exc
    if not out or any(x < 0 for x in out):
        raise ConfigError(f"bad integer list {text!r}")
    return out


def _cmd_live(args: argparse.Namespace) -> int:
    from voltana.services.profiler.core import default_plan
    from voltana.services.profiler.live import LiveProber, LiveTarget

    prober = LiveProber.build(
        gpu=args.gpu,
        model=args.model,
        prefill=LiveTarget(url=args.prefill_url, gpus=_indices(args.prefill_gpus)),
        decode=LiveTarget(url=args.decode_url, gpus=_indices(args.decode_gpus)),
        backend=args.backend,
        decode_tokens=args.decode_tokens,
        disaggregated=not args.unified,
    )
    plan = default_plan(
        prober.hardware(),
        quick=args.quick,
        max_batch_size=args.max_batch_size,
        max_prefill_tokens=args.max_prefill_tokens,
        repeats=args.repeats,
        clock_stride=args.clock_stride,
    )
    notes = f"voltana profile live --backend {args.backend} ({args.decode_url})"
    return _run_plan(args, prober, plan, notes)


def _cmd_fit(args: argparse.Namespace) -> int:
    from pathlib import Path

    import msgspec
    from voltana.common.errors import ConfigError
    from voltana.predictor.buckets import default_buckets
    from voltana.predictor.fitting import fit_profile
    from voltana.predictor.measurements import Measurements
    from voltana.predictor.profile import Profile, save_profile

    try:
        m = msgspec.json.decode(Path(args.measurements).read_bytes(), type=Measurements)
        pf = fit_profile(
            m,
            buckets=default_buckets(args.max_batch_size),
            heldout_fraction=args.heldout,
            seed=args.seed,
            notes=f"voltana profile fit {args.measurements}",
        )
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"cannot fit {args.measurements}: {exc}") from exc
    path = save_profile(pf, args.out)
    _print_summary(Profile(pf), str(path))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from voltana.predictor.profile import default_profile, load_profile

    prof = load_profile(args.path) if args.path else default_profile(args.gpu, args.model)
    _print_summary(prof, args.path or f"packaged {args.gpu}-{args.model}")
    return 0


def _print_summary(prof: Any, where: str) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    pf = prof.file
    con.print(
        f"[bold]{where}[/bold]: {pf.gpu} {pf.model} tp={pf.tp} source={pf.source}, "
        f"clocks {prof.min_clock_mhz}-{prof.max_clock_mhz} MHz "
        f"({len(pf.prefill)} profiled), buckets {pf.decode_buckets[0]}..{pf.decode_buckets[-1]}"
    )
    acc = pf.accuracy
    if acc is not None:
        con.print(
            "held-out MAE (% of mean): "
            f"prefill latency {acc.prefill_latency_mae_pct:.2f}%, "
            f"decode latency {acc.decode_latency_mae_pct:.2f}%, "
            f"prefill energy {acc.prefill_energy_mae_pct:.2f}%, "
            f"decode energy {acc.decode_energy_mae_pct:.2f}% "
            f"({acc.prefill_points} prefill / {acc.decode_points} decode points)"
        )
    t = Table(title="predictions")
    for col in (
        "clock MHz",
        "prefill 1k ms",
        "prefill 1k J",
        "decode B=32 ctx=1k ms",
        "decode J",
        "idle W",
    ):
        t.add_column(col, justify="right")
    step = max(1, len(prof.clocks_mhz) // 8)
    shown = list(prof.clocks_mhz[::step])
    if shown[-1] != prof.max_clock_mhz:
        shown.append(prof.max_clock_mhz)
    for c in shown:
        t.add_row(
            str(c),
            f"{prof.prefill_latency_s(c, 1024) * 1e3:.1f}",
            f"{prof.prefill_energy_j(c, 1024):.2f}",
            f"{prof.decode_latency_s(c, 32, 32 * 1024) * 1e3:.2f}",
            f"{prof.decode_energy_j(c, 32, 32 * 1024):.3f}",
            f"{prof.idle_power_w(c):.0f}",
        )
    con.print(t)
