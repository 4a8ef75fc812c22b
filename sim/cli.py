"""``voltana sim``: run policies over a trace in the discrete-event simulator.

Example::

    voltana sim --cluster 2p2d \\
        --gpu h100 --model llama-3.1-8b --policies static-max,ecofreq,voltana-ref,voltana \\
        --slo-ttft-s 0.5 --slo-itl-s 0.025 --rate-scale 2 --window 0,600 --out out/sim

Without ``--trace`` or ``--synthetic`` it runs the packaged Azure 2023 conversation trace
(:mod:`voltana.sim.traces`).
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
from voltana.groundtruth.gpu_specs import GPUS, MODELS
from voltana.sim.config import SimConfig

DEFAULT_POLICIES = "static-max,static-min,ecofreq,voltana-ref,voltana"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _window(text: str) -> tuple[float, float | None]:
    parts = text.split(",")
    try:
        start = float(parts[0])
        dur = float(parts[1]) if len(parts) > 1 and parts[1].strip() else None
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"--window wants START[,DURATION] seconds: {text!r}"
        ) from None
    return start, dur


def add_hardware_args(g: Any) -> None:
    """``--gpu``, ``--model``, ``--tp`` and the SLO flags, shared by ``sim`` and ``plan``."""
    g.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="GPU kind")
    g.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS), help="model")
    g.add_argument(
        "--gpu-spec",
        default=None,
        metavar="FILE",
        help="the GPU's constants from a JSON file instead of the built-in --gpu's (your own "
        "calibration: bench/gpu/compare_model.py --fit --spec-out; docs/gpu-model.md)",
    )
    g.add_argument("--tp", type=int, default=1, help="GPUs per instance")
    g.add_argument("--slo-ttft-s", type=float, default=1.0, help="TTFT SLO (s)")
    g.add_argument("--slo-itl-s", type=float, default=0.05, help="ITL SLO (s)")


def gpu_label(args: argparse.Namespace) -> str:
    """``--gpu``, and the spec file its constants came from, if any (for titles)."""
    return f"{args.gpu} from {args.gpu_spec}" if args.gpu_spec else str(args.gpu)


def add_default_idle_args(g: Any) -> None:
    """The default clocks' idle overrides, shared by ``sim`` and ``plan``."""
    g.add_argument(
        "--default-idle-hold-s",
        type=float,
        default=None,
        help="default clocks: seconds an idle GPU holds its boost clock; inf: as long as the "
        "worker lives (default: the GPU's, inf: measured on the H200, docs/gpu-model.md)",
    )
    g.add_argument(
        "--default-idle-decay-s",
        type=float,
        default=None,
        help="default clocks: time constant of the idle clock's fall after a finite hold "
        "(default: the GPU's, 1 s, modelled)",
    )


def _config_default(name: str) -> Any:
    """A ``SimConfig`` field's default, so the flags cannot drift from the config."""
    return next(f.default for f in msgspec.structs.fields(SimConfig) if f.name == name)


def add_engine_args(g: Any) -> None:
    """The engine flags a live SGLang server is started with, under SGLang's names, so a
    simulated instance can be set like the server it is compared against."""
    g.add_argument(
        "--max-running-requests",
        type=int,
        default=_config_default("max_running_requests"),
        help="requests an instance runs at once",
    )
    g.add_argument(
        "--chunked-prefill-size",
        type=int,
        default=_config_default("chunked_prefill_size"),
        help="prompt tokens per prefill chunk",
    )
    g.add_argument(
        "--enable-mixed-chunk",
        action=argparse.BooleanOptionalAction,
        default=_config_default("enable_mixed_chunk"),
        help="colocated instances: decode steps ride along prefill chunks (on: the "
        "configuration the results are quoted for; SGLang's server default is off)",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim",
        help="discrete-event simulation of a PD cluster: energy and SLO per policy",
        description="Simulate prefill/decode instances on the ground-truth GPU model with the "
        "project's clock controllers and routing policies, in virtual time. Without --trace or "
        "--synthetic it runs the packaged Azure LLM 2023 conversation trace (CC-BY 4.0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("workload")
    src.add_argument(
        "--trace",
        help="Azure CSV, BurstGPT CSV or Mooncake JSONL, plain or .gz (auto-detected); "
        "default: the packaged Azure 2023 conversation trace",
    )
    src.add_argument(
        "--synthetic",
        choices=["poisson", "gamma", "multiturn"],
        default=None,
        help="synthetic arrivals instead of a trace (multiturn: conversations whose turns "
        "resend the growing context, for the prefix cache; --rate is then sessions/s)",
    )
    src.add_argument("--rate", type=float, default=5.0, help="synthetic: requests/s")
    src.add_argument("--duration", type=float, default=300.0, help="synthetic: seconds")
    src.add_argument("--cv", type=float, default=2.0, help="gamma: coefficient of variation")
    src.add_argument("--input-mean", type=float, default=1155.0, help="synthetic prompt mean")
    src.add_argument("--output-mean", type=float, default=211.0, help="synthetic output mean")
    mt = p.add_argument_group("multiturn workload (--synthetic multiturn)")
    mt.add_argument("--turns-mean", type=float, default=2.0, help="mean turns per session")
    mt.add_argument(
        "--system-prompt-tokens", type=int, default=0, help="system prompt shared by sessions"
    )
    mt.add_argument("--system-prompts", type=int, default=1, help="distinct system prompts")
    mt.add_argument(
        "--document-mean", type=float, default=0.0, help="first-turn document tokens (0: none)"
    )
    mt.add_argument("--think-time-s", type=float, default=10.0, help="mean gap between turns")
    src.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="multiply the arrival rate (arrival times divided)",
    )
    src.add_argument(
        "--window",
        type=_window,
        default=None,
        metavar="START[,DUR]",
        help="keep arrivals in [START, START+DUR) seconds (after rate scaling)",
    )
    cl = p.add_argument_group("cluster and SLO")
    cl.add_argument(
        "--cluster",
        default="2p2d",
        help="PD: 2p2d, 3p1d, 32p32d (prefill + decode instances); colocated: 4u (unified)",
    )
    add_hardware_args(cl)
    cl.add_argument("--slo-margin", type=float, default=0.1, help="controllers' SLO margin")
    add_engine_args(p.add_argument_group("engine (SGLang's server flags of each instance)"))
    run = p.add_argument_group("run")
    run.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated; default (the driver's clocks, no lock), default-rr, default-p2, "
        "voltana-clocks and the diagnostics are accepted too (docs/simulator.md)",
    )
    run.add_argument("--seed", type=int, default=0, help="random seed (workload, noise)")
    run.add_argument("--noise", type=float, default=0.02, help="ground-truth time jitter")
    run.add_argument(
        "--control",
        choices=["telemetry", "iteration"],
        default="telemetry",
        help="controller cadence: telemetry samples and dispatches (the deployment's), or "
        "every engine iteration (in-engine, as the published method places it)",
    )
    run.add_argument(
        "--control-lag",
        type=float,
        default=0.01,
        help="decision -> clock in effect (s): bus, actuator and NVML; ~0.003 in-engine",
    )
    run.add_argument("--telemetry-period", type=float, default=0.25, help="seconds")
    run.add_argument(
        "--no-wake-on-dispatch",
        action="store_true",
        help="telemetry control: decide on telemetry samples only (not on prefill dispatch)",
    )
    run.add_argument(
        "--energy-idle",
        choices=("overhead", "spread"),
        default="overhead",
        help="energy per request: idle GPU energy kept as unattributed overhead or spread "
        "over the next requests of the same GPU (docs/energy.md; default: overhead)",
    )
    run.add_argument("--no-oracle", action="store_true", help="skip the oracle reference")
    add_default_idle_args(run)
    run.add_argument(
        "--quick-profile",
        action="store_true",
        help="coarser profiling plan (faster start, for tests)",
    )
    run.add_argument(
        "--sweep-rate",
        type=_floats,
        default=None,
        metavar="X,Y,...",
        help="sweep rate scales (table)",
    )
    run.add_argument(
        "--sweep-slo",
        type=_floats,
        default=None,
        metavar="X,Y,...",
        help="sweep SLO scales (both SLOs multiplied)",
    )
    run.add_argument("--out", default=None, help="write results.json and plots here")
    run.add_argument("--no-plots", action="store_true", help="with --out: skip the plots")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from voltana.common.errors import ConfigError
    from voltana.groundtruth.spec_file import load_gpu_spec
    from voltana.schemas.config import SloConfig
    from voltana.sim.config import ClusterSpec, SimConfig
    from voltana.sim.metrics import RunMetrics
    from voltana.sim.policies import parse_policies
    from voltana.sim.report import (
        WIDE_TERMINAL,
        evaluation_table,
        markdown_table,
        sweep_table,
        write_results,
    )
    from voltana.sim.runner import evaluate, sweep
    from voltana.sim.workload import LengthDist, load_trace, scale_rate, synthetic, window

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    narrow = console.width < WIDE_TERMINAL
    if args.trace and args.synthetic:
        raise ConfigError("give either --trace or --synthetic, not both")
    if args.trace:
        wl = load_trace(args.trace)
    elif args.synthetic == "multiturn":
        from voltana.sim.multiturn import MultiTurnSpec, multiturn

        doc = LengthDist("lognormal", args.document_mean, 0.8, 16, 16384)
        wl = multiturn(
            MultiTurnSpec(
                sessions_per_s=args.rate,
                duration_s=args.duration,
                turns_mean=args.turns_mean,
                system_prompt_tokens=args.system_prompt_tokens,
                system_prompts=args.system_prompts,
                document_tokens=doc if args.document_mean > 0 else None,
                think_time_s=args.think_time_s,
            ),
            seed=args.seed,
        )
    elif args.synthetic:
        wl = synthetic(
            rate_rps=args.rate,
            duration_s=args.duration,
            arrival=args.synthetic,
            cv=args.cv,
            input_len=LengthDist("lognormal", args.input_mean, 0.9, 16, 16384),
            output_len=LengthDist("lognormal", args.output_mean, 1.0, 1, 4096),
            seed=args.seed,
        )
    else:
        from voltana.sim.traces import packaged_trace

        wl = load_trace(packaged_trace())
    wl = scale_rate(wl, args.rate_scale)
    if args.window is not None:
        wl = window(wl, args.window[0], args.window[1])
    if args.slo_ttft_s <= 0 or args.slo_itl_s <= 0:
        raise ConfigError("SLOs must be positive")
    if args.max_running_requests < 1 or args.chunked_prefill_size < 1:
        raise ConfigError("--max-running-requests and --chunked-prefill-size must be >= 1")
    cluster = ClusterSpec.parse(args.cluster, gpu=args.gpu, model=args.model, tp=args.tp)
    cfg = SimConfig(
        cluster=cluster,
        slo=SloConfig(ttft_s=args.slo_ttft_s, itl_s=args.slo_itl_s, margin=args.slo_margin),
        seed=args.seed,
        noise=args.noise,
        control=args.control,
        control_lag_s=args.control_lag,
        telemetry_period_s=args.telemetry_period,
        wake_on_dispatch=not args.no_wake_on_dispatch,
        energy_idle=args.energy_idle,
        default_idle_hold_s=args.default_idle_hold_s,
        default_idle_decay_s=args.default_idle_decay_s,
        max_running_requests=args.max_running_requests,
        chunked_prefill_size=args.chunked_prefill_size,
        enable_mixed_chunk=args.enable_mixed_chunk,
        gpu_override=load_gpu_spec(args.gpu_spec) if args.gpu_spec else None,
    )
    cfg.gpu_spec()  # checks the GPU and the idle overrides before any run
    specs = parse_policies(args.policies)
    console.print(f"[bold]workload[/] {wl.summary()}  [bold]cluster[/] {cluster}")
    out = Path(args.out) if args.out else None

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
        transient=True,
    ) as prog:
        tasks: dict[str, Any] = {}
        horizon = max(wl.duration_s, 1e-9)

        def progress(name: str, t: float) -> None:
            if name not in tasks:
                tasks[name] = prog.add_task(name, total=horizon)
            prog.update(tasks[name], completed=min(t, horizon))

        if args.sweep_rate or args.sweep_slo:
            rows = sweep(
                wl,
                specs,
                cfg,
                rate_scales=args.sweep_rate or [1.0],
                slo_scales=args.sweep_slo or [1.0],
                oracle=not args.no_oracle,
                quick_profile=args.quick_profile,
                progress=progress,
            )
            prog.stop()
            console.print(
                sweep_table(rows, title=f"sweep: {wl.name} on {cluster.label}", narrow=narrow)
            )
            if out is not None:
                import json

                out.mkdir(parents=True, exist_ok=True)
                (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
                lead = (
                    ("rate_scale", "rate x"),
                    ("rate_rps", "req/s"),
                    ("slo_scale", "SLO x"),
                    ("policy", "policy"),
                )
                (out / "sweep.md").write_text(markdown_table(rows, lead) + "\n")
                console.print(f"wrote {out / 'sweep.json'} and {out / 'sweep.md'}")
            return 0
        runs: list[RunMetrics] = []
        ev = evaluate(
            wl,
            specs,
            cfg,
            oracle=not args.no_oracle,
            quick_profile=args.quick_profile,
            progress=progress,
            keep_runs=runs,
        )
    title = (
        f"{wl.name} | {cluster.label} {gpu_label(args)} {cluster.model} | "
        f"SLO TTFT {args.slo_ttft_s * 1e3:.0f} ms, ITL {args.slo_itl_s * 1e3:.0f} ms"
    )
    console.print(evaluation_table(ev, title, narrow=narrow))
    if narrow:
        console.print(f"(every column: a terminal of {WIDE_TERMINAL}+ columns, or --out)")
    if out is not None:
        p = write_results(ev, out)
        console.print(f"wrote {p}")
        if not args.no_plots:
            from voltana.sim.plots import plot_runs

            for f in plot_runs(runs, out):
                console.print(f"wrote {f}")
    return 0
