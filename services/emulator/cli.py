"""``voltana emulator``: an SGLang-compatible worker on an emulated GPU."""

from __future__ import annotations

import argparse

from voltana.common.logs import get_logger
from voltana.groundtruth.gpu_specs import GPUS, MODELS

__all__ = ["register"]


def _gpu_ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--gpu-ids wants integers like 0,1: {text!r}") from exc


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = subparsers.add_parser(
        "emulator",
        help="run an emulated SGLang PD worker on an emulated GPU",
        description="SGLang-compatible server (SGLang flag names) paced in real time by the "
        "calibrated GPU model; admin API under /voltana/ (docs/emulator.md).",
    )
    p.add_argument(
        "--role",
        "--disaggregation-mode",
        dest="role",
        default="unified",
        choices=["prefill", "decode", "unified", "null"],
        help="PD role (SGLang's --disaggregation-mode; null = unified)",
    )
    p.add_argument("--gpu", default="h100", choices=list(GPUS), help="emulated GPU")
    p.add_argument(
        "--gpu-spec",
        default=None,
        metavar="FILE",
        help="the GPU's constants from a JSON file instead of the built-in --gpu's "
        "(docs/gpu-model.md, 'Your GPU's constants in a file')",
    )
    p.add_argument(
        "--model",
        "--model-path",
        dest="model",
        default="llama-3.1-8b",
        choices=list(MODELS),
        help="model shape (SGLang's --model-path)",
    )
    p.add_argument("--tp", "--tp-size", dest="tp", type=int, default=1, help="tensor-parallel GPUs")
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=int, default=30000, help="HTTP port")
    p.add_argument(
        "--disaggregation-bootstrap-port",
        dest="bootstrap_port",
        type=int,
        default=8998,
        help="PD bootstrap port (prefill role)",
    )
    p.add_argument(
        "--gpu-ids", type=_gpu_ids, default=(), help="node-global GPU indices (default 0..tp-1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and output lengths")
    p.add_argument("--noise", type=float, default=0.0, help="relative std of iteration time")
    p.add_argument(
        "--max-running-requests", type=int, default=256, help="requests in the running batch"
    )
    p.add_argument(
        "--chunked-prefill-size", type=int, default=8192, help="prefill tokens per iteration"
    )
    p.add_argument(
        "--kv-capacity-tokens",
        "--max-total-tokens",
        dest="kv_capacity_tokens",
        type=int,
        default=None,
        help="KV capacity in tokens (default: what fits in GPU memory)",
    )
    p.add_argument(
        "--mem-fraction-static",
        type=float,
        default=0.88,
        help="GPU memory share for weights and KV (sizes the KV capacity)",
    )
    p.add_argument(
        "--sglang-version",
        choices=["0.4.7", "0.5.23"],
        default="0.4.7",
        help="which SGLang line's metrics and load endpoints to mimic",
    )
    p.add_argument(
        "--served-model-name", default=None, help="model name in the API (default: --model)"
    )
    p.add_argument(
        "--bootstrap-timeout-s",
        type=float,
        default=300.0,
        help="how long a PD request waits for its partner (SGLang: 300 s)",
    )
    p.add_argument(
        "--eos-mean-tokens",
        type=float,
        default=256.0,
        help="mean output length when a request does not set ignore_eos",
    )
    p.add_argument("--enable-metrics", action="store_true", help="accepted; metrics are always on")
    p.add_argument(
        "--disable-radix-cache",
        action="store_true",
        help="no prefix cache: every request prefills its whole prompt (SGLang's flag)",
    )
    p.add_argument(
        "--page-size",
        type=int,
        default=16,
        help="prefix-cache granularity in tokens: prompts match in whole pages (default: 16)",
    )
    p.add_argument(
        "--backend",
        choices=["model", "torch"],
        default="model",
        help="model: each iteration lasts the GPU model's time; torch: each iteration runs a "
        "random-weight model of the same shape on a real device (needs PyTorch; "
        "docs/gpu-in-the-loop.md) (default: %(default)s)",
    )
    p.add_argument(
        "--device", default="cuda", help="torch device of --backend torch (default: %(default)s)"
    )
    p.add_argument(
        "--torch-shape",
        default=None,
        help="model shape run by --backend torch: llama-3.1-8b or tiny (default: --model's)",
    )
    p.add_argument(
        "--torch-kv-pool-gib",
        type=float,
        default=40.0,
        help="KV pool of --backend torch on the device, GiB (default: %(default)s)",
    )
    p.add_argument(
        "--no-cuda-graphs",
        dest="torch_graphs",
        action="store_false",
        help="--backend torch runs decode eagerly instead of replaying CUDA graphs",
    )
    p.add_argument(
        "--torch-warm-decode-kv",
        type=int,
        default=2048,
        metavar="TOKENS",
        help="--backend torch captures, before serving, the decode CUDA graph of every batch "
        "bucket up to --max-running-requests and every KV bucket up to TOKENS a sequence "
        "(0: capture each on first use, stalling that step) (default: %(default)s)",
    )
    p.add_argument(
        "--enable-mixed-chunk",
        action="store_true",
        help="unified role: run the decode step of running requests in the same batch as "
        "prefill chunks (SGLang's flag)",
    )
    p.add_argument(
        "--default-idle-hold-s",
        type=float,
        default=None,
        help="default clocks (no lock): seconds an idle GPU holds its boost clock after work; "
        "inf: as long as the worker lives (default: the GPU spec's, inf: measured on the H200, "
        "docs/gpu-model.md)",
    )
    p.add_argument(
        "--default-idle-decay-s",
        type=float,
        default=None,
        help="default clocks: time constant of the idle clock's fall to its floor after a "
        "finite hold (default: the GPU spec's, 1 s, modelled)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    from voltana.common.errors import ConfigError
    from voltana.gpu.emulator_admin import ADMIN_TOKEN_ENV
    from voltana.groundtruth.spec_file import load_gpu_spec
    from voltana.schemas.base import Role
    from voltana.services.emulator.app import EmulatorApp
    from voltana.services.emulator.config import EmulatorConfig
    from voltana.services.runner import run_service

    role: Role = "unified" if args.role == "null" else args.role
    try:
        config = EmulatorConfig(
            role=role,
            gpu=args.gpu,
            model=args.model,
            tp=args.tp,
            host=args.host,
            port=args.port,
            bootstrap_port=args.bootstrap_port,
            gpu_ids=args.gpu_ids,
            seed=args.seed,
            noise=args.noise,
            max_running_requests=args.max_running_requests,
            chunked_prefill_size=args.chunked_prefill_size,
            kv_capacity_tokens=args.kv_capacity_tokens,
            mem_fraction_static=args.mem_fraction_static,
            sglang_version=args.sglang_version,
            served_model_name=args.served_model_name,
            bootstrap_timeout_s=args.bootstrap_timeout_s,
            eos_mean_tokens=args.eos_mean_tokens,
            disable_radix_cache=args.disable_radix_cache,
            page_size=args.page_size,
            admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
            backend=args.backend,
            torch_device=args.device,
            torch_shape=args.torch_shape,
            torch_kv_pool_gib=args.torch_kv_pool_gib,
            torch_graphs=args.torch_graphs,
            torch_warm_decode_kv=args.torch_warm_decode_kv,
            enable_mixed_chunk=args.enable_mixed_chunk,
            default_idle_hold_s=args.default_idle_hold_s,
            default_idle_decay_s=args.default_idle_decay_s,
            gpu_override=load_gpu_spec(args.gpu_spec) if args.gpu_spec else None,
        )
        if config.page_size < 1:
            raise ConfigError(f"--page-size must be >= 1, got {config.page_size}")
        if config.tp < 1 or config.max_running_requests < 1 or config.chunked_prefill_size < 1:
            raise ConfigError(
                "--tp, --max-running-requests and --chunked-prefill-size must be >= 1"
            )
        run_service(lambda: EmulatorApp(config), name="emulator", ready=_print_ready)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    get_logger("emulator").info("emulator_stopped")
    return 0


def _print_ready(_app: object) -> None:
    # The line SGLang prints when ready; scripts and tests wait for it.
    print("The server is fired up and ready to roll!", flush=True)
