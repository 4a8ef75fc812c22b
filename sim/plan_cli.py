"""``voltana plan``: which configuration and clock policy to run, for a workload and SLOs.

Example::

    voltana plan --gpus 4 --gpu h100 \\
        --slo-ttft-s 1 --slo-itl-s 0.05 --out out/plan
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from voltana.sim.cli import (  # one spelling of each flag the two commands share
    _window,
    add_default_idle_args,
    add_hardware_args,
    gpu_label,
)


def register(subparsers: Any) -> None:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser(
        "plan",
        help="recommend a configuration (colocated or PD split) and clock policy for a workload",
        description="Simulate colocated serving and every PD split of --gpus GPUs, each under "
        "the driver's default clocks and under voltana's controller, on the same requests; "
        "print them ranked, the cheapest that meets the attainment target, and its saving "
        "against default clocks on the best colocated configuration and on the even PD split.",
        formatter_class=d,
    )
    w = p.add_argument_group("workload (a trace, or a rate and length mix)")
    w.add_argument(
        "--trace",
        help="Azure CSV, BurstGPT CSV or Mooncake JSONL, plain or gzip (auto-detected); "
        "default: the packaged Azure 2023 conversation trace",
    )
    w.add_argument("--rate", type=float, default=None, help="no trace: Poisson arrivals, req/s")
    w.add_argument("--duration", type=float, default=600.0, help="no trace: seconds")
    w.add_argument("--input-mean", type=float, default=1155.0, help="no trace: prompt mean")
    w.add_argument("--output-mean", type=float, default=211.0, help="no trace: output mean")
    w.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate")
    w.add_argument(
        "--window",
        type=_window,
        default=None,
        metavar="START[,DUR]",
        help="keep arrivals in [START, START+DUR) seconds (after scaling); default: all",
    )
    c = p.add_argument_group("hardware and SLO")
    c.add_argument("--gpus", type=int, default=4, help="GPUs to split")
    add_hardware_args(c)
    c.add_argument("--target", type=float, default=0.99, help="SLO attainment to meet")
    r = p.add_argument_group("run")
    r.add_argument(
        "--clocks-only",
        action="store_true",
        help="also evaluate voltana's clocks alone behind an existing router "
        "(telemetry cadence, no dispatch wake-ups)",
    )
    r.add_argument(
        "--quick-profile",
        action="store_true",
        help="coarser profiling plan for the controllers (faster start, for tests)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed of every random stream")
    r.add_argument("--noise", type=float, default=0.02, help="ground-truth time jitter")
    add_default_idle_args(r)
    r.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes"
    )
    r.add_argument("--out", default=None, help="write results.json and frontier.png here")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from voltana.common.errors import ConfigError
    from voltana.groundtruth.spec_file import load_gpu_spec
    from voltana.schemas.config import SloConfig
    from voltana.sim.config import ClusterSpec, SimConfig
    from voltana.sim.plan import PlanRow, plan
    from voltana.sim.plan_report import plan_table, plot_frontier, recommendation_lines, write_plan
    from voltana.sim.workload import LengthDist, load_trace, scale_rate, synthetic, window

    console = Console() if Console().is_terminal else Console(width=160)
    if args.trace and args.rate is not None:
        raise ConfigError("give either --trace or --rate, not both")
    if args.trace:
        wl = load_trace(args.trace)
    elif args.rate is not None:
        wl = synthetic(
            rate_rps=args.rate,
            duration_s=args.duration,
            arrival="poisson",
            input_len=LengthDist("lognormal", args.input_mean, 0.9, 16, 16384),
            output_len=LengthDist("lognormal", args.output_mean, 1.0, 1, 4096),
            seed=args.seed,
        )
    else:  # the packaged conversation trace (sim/data/README.md), as voltana sim does
        from voltana.sim.traces import packaged_trace

        wl = load_trace(packaged_trace())
    if args.rate_scale <= 0:
        raise ConfigError(f"--rate-scale must be positive, got {args.rate_scale}")
    wl = scale_rate(wl, args.rate_scale)
    if args.window is not None:
        wl = window(wl, args.window[0], args.window[1])
    if not wl.requests:
        raise ConfigError("the workload has no requests (check --window)")
    if args.slo_ttft_s <= 0 or args.slo_itl_s <= 0:
        raise ConfigError("SLOs must be positive")
    if args.tp < 1 or args.jobs < 1:
        raise ConfigError("--tp and --jobs must be >= 1")
    cfg = SimConfig(
        cluster=ClusterSpec(gpu=args.gpu, model=args.model, tp=args.tp),
        slo=SloConfig(ttft_s=args.slo_ttft_s, itl_s=args.slo_itl_s),
        seed=args.seed,
        noise=args.noise,
        default_idle_hold_s=args.default_idle_hold_s,
        default_idle_decay_s=args.default_idle_decay_s,
        gpu_override=load_gpu_spec(args.gpu_spec) if args.gpu_spec else None,
    )
    cfg.gpu_spec()  # checks the idle overrides before any run
    console.print(f"[bold]workload[/] {wl.summary()}")
    t0 = time.perf_counter()
    with Progress(
        TextColumn("plan"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=args.no_progress,
        transient=True,
    ) as prog:
        task = prog.add_task("", total=None)

        def progress(row: PlanRow, done: int, total: int) -> None:
            prog.update(
                task, completed=done, total=total, description=f"{row.cluster} {row.policy}"
            )

        res = plan(
            wl,
            cfg,
            gpus=args.gpus,
            target=args.target,
            clocks_only=args.clocks_only,
            quick_profile=args.quick_profile,
            jobs=args.jobs,
            progress=progress,
        )
    wall = time.perf_counter() - t0
    title = (
        f"{wl.name} | {args.gpus} x {gpu_label(args)} {args.model} | SLO TTFT {args.slo_ttft_s * 1e3:.0f}"
        f" ms, ITL {args.slo_itl_s * 1e3:.0f} ms, target {args.target * 100:g}%"
    )
    console.print(plan_table(res, title))
    for line in recommendation_lines(res):
        console.print(line)
    console.print(f"{len(res.rows)} runs in {wall:.0f} s ({args.jobs} processes)")
    if args.out:
        out = Path(args.out)
        res.params["wall_s"] = round(wall, 1)
        console.print(f"wrote {write_plan(res, out)}")
        console.print(f"wrote {plot_frontier(res, out)}")
    return 0
