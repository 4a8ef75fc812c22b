"""Configuration of one emulated SGLang worker (the ``voltana emulator`` flags)."""

from __future__ import annotations

from typing import Literal

import msgspec
from voltana.groundtruth.default_clock import with_idle_overrides
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuSpec
from voltana.schemas.base import Role

__all__ = ["EmulatorConfig", "emulated_spec"]


class EmulatorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One emulated instance (TP group): its role, hardware, engine knobs and HTTP ports."""

    role: Role = "unified"
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    tp: int = 1
    host: str = "127.0.0.1"
    port: int = 30000
    bootstrap_port: int = 8998
    gpu_ids: tuple[int, ...] = ()
    seed: int | None = 0
    noise: float = 0.0
    max_running_requests: int = 256
    chunked_prefill_size: int = 8192
    kv_capacity_tokens: int | None = None  # default: what fits in memory
    mem_fraction_static: float = 0.88
    sglang_version: Literal["0.4.7", "0.5.23"] = "0.4.7"
    served_model_name: str | None = None
    bootstrap_timeout_s: float = 300.0
    eos_mean_tokens: float = 256.0  # mean natural output length when ignore_eos is false
    admin_token: str | None = None  # clock changes need it (VOLTANA_EMULATOR_ADMIN_TOKEN)
    time_scale: float = 1.0  # >1 runs faster than the model (for demos); 1 = real time
    disable_radix_cache: bool = False  # SGLang's flag: no prefix cache
    page_size: int = 16  # prefix-cache granularity in tokens (SGLang's --page-size)
    # "model": iterations sleep for the GPU model's time; "torch": they run on a device
    backend: Literal["model", "torch"] = "model"
    torch_device: str = "cuda"
    torch_shape: str | None = None  # torch_llama.SHAPES name (default: the --model's)
    torch_kv_pool_gib: float = 40.0
    torch_graphs: bool = True
    # decode graphs captured before serving: every batch bucket x KV bucket up to this
    torch_warm_decode_kv: int = 2048
    enable_mixed_chunk: bool = False  # unified: decode steps ride along prefill chunks (SGLang)
    # default clocks (no lock): override the GPU's idle hold and decay (GpuSpec), e.g. measured
    default_idle_hold_s: float | None = None
    default_idle_decay_s: float | None = None
    # the GPU's constants from a spec file (groundtruth/spec_file.py) instead of GPUS[gpu]
    gpu_override: GpuSpec | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_name or MODELS[self.model].name


def emulated_spec(config: EmulatorConfig) -> GpuSpec:
    """The GPU the worker emulates: ``GPUS[config.gpu]`` (or the spec file's) with the idle
    overrides applied.

    Raises:
        ValueError: a negative or NaN idle override.
    """
    return with_idle_overrides(
        config.gpu_override or GPUS[config.gpu],
        config.default_idle_hold_s,
        config.default_idle_decay_s,
    )
