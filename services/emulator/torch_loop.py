"""The GPU-backed worker's iterations: the emulated worker's loop, with real device work.

``TorchIterationLoop`` is ``IterationLoop`` with one change: an iteration runs the
plan's work on a torch device (``TorchExecutor``, in one worker thread so HTTP and
metrics keep being served) and ends when the device is done, instead of sleeping for
the GPU model's time. Scheduling, token events, streams, gauges and the admin API are
the emulated worker's, so the router, telemetry and controllers see the same worker.
Clock locks are the real GPU's business (the actuator, through NVML): the model is
kept only for the emulated device view and the iteration log's modelled power.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from voltana.common.logs import get_logger
from voltana.groundtruth.engine import BatchPlan, Engine, EngineEvent
from voltana.groundtruth.gpu_model import GpuModel, IterCost
from voltana.services.emulator.config import EmulatorConfig
from voltana.services.emulator.gpu_device import EmulatedGpu
from voltana.services.emulator.runner import IterationLoop

__all__ = ["TorchBackend", "TorchIterationLoop"]

log = get_logger("emulator.torch")


@dataclass(frozen=True, slots=True)
class TorchBackend:
    """How to build the executor (built in ``prepare``, off the event loop): the
    ``TorchExecutor`` arguments, checked here so a bad flag fails before any device work."""

    shape: str
    device: str
    kv_pool_gib: float
    max_prefill_tokens: int
    graphs: bool = True
    seed: int = 0
    max_batch_size: int = 256
    warm_decode_kv: int = 0

    def __post_init__(self) -> None:
        try:
            from voltana.services.emulator.torch_llama import SHAPES
        except ImportError as exc:
            raise ValueError(f"the torch backend needs PyTorch (pip install torch): {exc}") from exc
        if self.shape not in SHAPES:
            raise ValueError(
                f"no torch model of shape {self.shape!r} (--torch-shape); known: {sorted(SHAPES)}"
            )
        if self.warm_decode_kv < 0:
            raise ValueError(f"--torch-warm-decode-kv must be >= 0, not {self.warm_decode_kv}")
        if self.kv_pool_gib <= 0:
            raise ValueError(f"--torch-kv-pool-gib must be > 0, not {self.kv_pool_gib}")

    @classmethod
    def for_config(cls, config: EmulatorConfig) -> TorchBackend:
        """The backend an emulator configuration asks for (``--backend torch``)."""
        return cls(
            config.torch_shape or config.model,
            config.torch_device,
            config.torch_kv_pool_gib,
            config.chunked_prefill_size,
            graphs=config.torch_graphs,
            seed=config.seed or 0,
            max_batch_size=config.max_running_requests,
            warm_decode_kv=config.torch_warm_decode_kv,
        )

    def build(self) -> Any:
        from voltana.services.emulator.torch_exec import TorchExecutor

        return TorchExecutor(**asdict(self))


class TorchIterationLoop(IterationLoop):
    """``IterationLoop`` whose iterations run on a torch device (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        model: GpuModel,
        gpus: Sequence[EmulatedGpu],
        dispatch: Callable[[list[EngineEvent]], None],
        backend: TorchBackend,
    ) -> None:
        super().__init__(engine, model, gpus, dispatch, time_scale=1.0)
        self.backend = backend
        self.executor: Any = None
        self.device_log: deque[dict[str, Any]] = deque(maxlen=4096)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-worker")

    def _record(self, entry: dict[str, Any]) -> None:
        """The log entry gets what the device ran: bucket, KV length, capture, device time."""
        if self.device_log:
            last = self.device_log[-1]
            for k, v in last.items():
                name = k if k.startswith("device_") else f"device_{k}"
                entry.setdefault(name, v)
        super()._record(entry)

    async def prepare(self) -> None:
        """Build the model and KV pool on the device (seconds for a full-size model)."""
        loop = asyncio.get_running_loop()
        self.executor = await loop.run_in_executor(self._thread, self.backend.build)
        log.info("capturing CUDA graphs", warm_decode_kv=self.backend.warm_decode_kv)
        graphs = await loop.run_in_executor(self._thread, self.executor.warm_up)
        log.info("CUDA graphs captured", graphs=graphs, seconds=round(self.executor.warm_up_s, 1))

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    async def _run_iteration(
        self, plan: BatchPlan, start: float, clock: int, cost: IterCost
    ) -> tuple[float, int, float, int]:
        """Run ``plan`` on the device; -> (end, clock, modelled power x measured time, 0)."""
        if self.executor is None:
            raise RuntimeError("the torch backend was not prepared")
        for g in self.gpus:
            g.begin_busy(start, cost)
        loop = asyncio.get_running_loop()
        rec = await loop.run_in_executor(
            self._thread,
            self.executor.run,
            plan.kind,
            plan.new_tokens,
            plan.batch_size,
            plan.kv_tokens,
        )
        end = time.monotonic()
        rec.update(batch_size=plan.batch_size, kv_tokens=plan.kv_tokens, model_s=cost.time_s)
        self.device_log.append(rec)
        return end, clock, cost.power_w * (end - start), 0
