"""Emulated GPUs: readings and clock locks through the emulator's admin HTTP.

One device may front several emulator servers (one per instance on the node);
GPU indices are node-global, so each index maps to the server that owns it.
Synchronous on purpose (like NVML): services call it from worker threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from voltana.common.errors import GpuError
from voltana.gpu.device import AppliedClocks, BackendName, GpuSample, check_gpu, check_supported
from voltana.gpu.emulator_admin import EmulatedGpuState, EmulatorAdmin
from voltana.gpu.energy import EnergyCounter


class EmulatedDevice:
    """The given GPUs, each read and locked through the admin client of its server.

    Nothing is asked of a server here: a telemetry process may start before its
    emulator, and a server that is down or lacks a GPU surfaces as a
    ``GpuError`` from the call that needs it. :meth:`discover` asks first.

    Args:
        admin_of: the admin client of each GPU's server, in sample order.
        applied: the lock each GPU is known to have (from :meth:`discover`);
            a GPU left out is unknown, so its first reset is issued.
    """

    name: BackendName = "emulated"

    def __init__(
        self,
        admin_of: Mapping[int, EmulatorAdmin],
        *,
        applied: dict[int, int | None] | None = None,
    ) -> None:
        if not admin_of:
            raise GpuError("no GPU indices given to the emulated device")
        self._admin_of = dict(admin_of)
        self._indices = tuple(self._admin_of)
        self._admins = list({id(a): a for a in self._admin_of.values()}.values())
        self._energy = {i: EnergyCounter() for i in self._indices}
        self._supported: dict[int, list[int]] = {}
        self._applied = AppliedClocks(applied)
        self._closed = False

    @classmethod
    def serving(cls, url: str, gpus: Sequence[int], *, timeout_s: float = 2.0) -> EmulatedDevice:
        """The given GPUs of one server (nothing is asked of it yet)."""
        admin = EmulatorAdmin(url, timeout_s=timeout_s)
        return cls(dict.fromkeys((int(g) for g in gpus), admin))

    @classmethod
    def discover(
        cls, urls: Sequence[str], *, gpus: Sequence[int] | None = None, timeout_s: float = 2.0
    ) -> EmulatedDevice:
        """Ask each server for its GPUs now; control starts from the locks they report.

        Args:
            urls: base URLs of emulator servers, e.g. ``http://127.0.0.1:30000``.
            gpus: indices to use (None: every GPU the servers serve), kept ascending.

        Raises:
            GpuError: a server is unreachable, two serve one index, or a requested
                index is served by none.
        """
        admin_of: dict[int, EmulatorAdmin] = {}
        states: dict[int, EmulatedGpuState] = {}
        admins = [EmulatorAdmin(url, timeout_s=timeout_s) for url in urls]
        try:
            for admin in admins:
                for g in admin.gpus():
                    if gpus is not None and g.index not in gpus:
                        continue
                    if g.index in admin_of:
                        raise GpuError(
                            f"GPU {g.index} is served by both {admin_of[g.index].url} "
                            f"and {admin.url}",
                            gpu=g.index,
                            code="DUPLICATE_GPU",
                        )
                    admin_of[g.index], states[g.index] = admin, g
            missing = sorted(set(gpus or ()) - set(admin_of))
            if missing:
                raise GpuError(
                    f"GPUs {missing} are not served by any emulator at {list(urls)}",
                    gpu=missing[0],
                    code="UNKNOWN_GPU",
                )
        except BaseException:
            for admin in admins:
                admin.close()
            raise
        device = cls(
            {i: admin_of[i] for i in sorted(admin_of)},
            applied={i: g.locked_clock_mhz for i, g in states.items()},
        )
        device._learn(states.values())
        return device

    @property
    def indices(self) -> tuple[int, ...]:
        return self._indices

    # -- readings ---------------------------------------------------------------------

    def sample(self) -> list[GpuSample]:
        """Read every GPU once: one request per server."""
        if self._closed:
            raise GpuError("emulated GPU device is closed", code="CLOSED")
        read: dict[int, tuple[dict[int, EmulatedGpuState], int, int]] = {}
        for admin in self._admins:
            states, t_ns, mono_ns = admin.read_gpus()
            read[id(admin)] = ({g.index: g for g in states}, t_ns, mono_ns)
        out: list[GpuSample] = []
        for i in self._indices:
            admin = self._admin_of[i]
            by_index, t_ns, mono_ns = read[id(admin)]
            g = by_index.get(i)
            if g is None:
                served = ",".join(str(k) for k in sorted(by_index)) or "none"
                raise GpuError(
                    f"GPU index {i} is not served by the emulator at {admin.url} (it has {served})",
                    gpu=i,
                    code="INDEX_OUT_OF_RANGE",
                )
            out.append(
                GpuSample(
                    index=i,
                    t_ns=t_ns,
                    mono_ns=mono_ns,
                    power_w=g.power_w,
                    energy_j=self._energy[i].update(g.energy_mj),
                    sm_clock_mhz=g.sm_clock_mhz,
                    source="emulated",
                    name=g.name,
                    locked_clock_mhz=g.locked_clock_mhz,
                    mem_clock_mhz=g.mem_clock_mhz,
                    max_sm_clock_mhz=g.max_sm_clock_mhz,
                    power_limit_w=g.power_limit_w,
                    throttle_reasons=g.throttle_reasons,
                    util_gpu_pct=g.util_gpu_pct,
                    mem_used_mib=g.mem_used_mib,
                    temperature_c=g.temperature_c,
                )
            )
        return out

    # -- clock setters ------------------------------------------------------------------

    def _learn(self, states: Iterable[EmulatedGpuState]) -> None:
        """Remember the supported clocks the servers list (they never change)."""
        for g in states:
            if g.index in self._admin_of:
                self._supported[g.index] = sorted(set(g.supported_sm_clocks_mhz), reverse=True)

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        check_gpu(gpu, self._indices)
        if gpu not in self._supported:
            admin = self._admin_of[gpu]
            self._learn(admin.gpus())
            if gpu not in self._supported:
                raise GpuError(
                    f"GPU {gpu} is not served by the emulator at {admin.url}",
                    gpu=gpu,
                    code="UNKNOWN_GPU",
                )
        return list(self._supported[gpu])

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        check_supported(gpu, mhz, self.supported_sm_clocks_mhz(gpu))
        admin = self._admin_of[gpu]
        return self._applied.lock(gpu, mhz, lambda: admin.lock(gpu, mhz, mhz).locked_clock_mhz)

    def reset_locked_clocks(self, gpu: int) -> bool:
        check_gpu(gpu, self._indices)
        admin = self._admin_of[gpu]
        return self._applied.reset(gpu, lambda: admin.reset(gpu))

    def locked_clock_mhz(self, gpu: int) -> int | None:
        check_gpu(gpu, self._indices)
        return self._applied.get(gpu)

    def read_locked_clock_mhz(self, gpu: int) -> int | None:
        """The lock the emulated GPU holds now, read from its admin API."""
        check_gpu(gpu, self._indices)
        for g in self._admin_of[gpu].gpus():
            if g.index == gpu:
                return g.locked_clock_mhz
        return None

    def close(self) -> None:
        self._closed = True
        for admin in self._admins:
            admin.close()
