"""Run the actuator in dry-run over the real NVML backend: what it would apply, nothing applied.

On a GPU host (no privilege needed: only NVML getters are called). Starts an
embedded nats-server, runs the real actuator shell with
``DryRunBackend(NvmlBackend(...))``, sends it a scripted set of commands (max,
middle and min clocks, an unsupported clock, a foreign node's command, a
short lease that lapses, a reset), then stops it, and writes:

- the supported SM clocks NVML reports per GPU,
- every ClockState the actuator published,
- every driver call the dry-run backend would have made (and did not),
- a read-only snapshot of each GPU before and after (clocks, power limit).

Usage::

    python bench/gpu/actuator_dryrun.py --out bench/results/actuator_dryrun_h100.json [--gpus 0]

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


async def scenario(
    gpus: list[int] | None, node: str, emulator_url: str | None = None
) -> dict[str, Any]:
    import msgspec
    from voltana.common.bus import Bus, BusOptions
    from voltana.common.natsserver import NatsServer
    from voltana.schemas import subjects
    from voltana.schemas.clock import ClockState, ResetClock, SetClock
    from voltana.services.freqctl.actuator import Actuator
    from voltana.services.freqctl.actuator_core import ActuatorConfig
    from voltana.services.freqctl.backend_dryrun import DryRunBackend
    from voltana.services.freqctl.backend_nvml import NvmlBackend

    if emulator_url:  # a local check of this script without a GPU
        from voltana.services.freqctl.backend_emulated import EmulatedBackend

        backend = DryRunBackend(EmulatedBackend([emulator_url], gpus=gpus))
    else:
        backend = DryRunBackend(NvmlBackend(gpus))
    assert isinstance(backend, DryRunBackend) and backend.name == "dry-run"
    indices = backend.gpu_indices()
    supported = {g: backend.supported_sm_clocks_mhz(g) for g in indices}
    states: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(store_dir=Path(tmp) / "js")
        server.start()
        try:
            bus = await Bus.connect(BusOptions(servers=[server.url]))
            client = await Bus.connect(BusOptions(servers=[server.url]))

            def on_state(m: ClockState, subject: str) -> None:
                from voltana.schemas import codec

                states.append(json.loads(codec.to_json(m)))

            await client.subscribe(subjects.CLOCK_STATE_ALL, ClockState, on_state)
            actuator = Actuator(bus, backend, ActuatorConfig(node=node, min_change_interval_s=0.0))
            await actuator.start()
            seq = 0
            try:
                for g in indices:
                    clocks = supported[g]
                    mid = min(clocks, key=lambda c: abs(c - 1410))
                    plan: list[tuple[str, Any]] = [
                        (
                            "max",
                            SetClock(t_ns=0, node=node, gpu=g, sm_clock_mhz=clocks[0], lease_s=5),
                        ),
                        ("middle", SetClock(t_ns=0, node=node, gpu=g, sm_clock_mhz=mid, lease_s=5)),
                        ("renew", SetClock(t_ns=0, node=node, gpu=g, sm_clock_mhz=mid, lease_s=5)),
                        (
                            "min",
                            SetClock(t_ns=0, node=node, gpu=g, sm_clock_mhz=clocks[-1], lease_s=5),
                        ),
                        (
                            "unsupported",
                            SetClock(t_ns=0, node=node, gpu=g, sm_clock_mhz=clocks[0] + 1),
                        ),
                        ("foreign-node", SetClock(t_ns=0, node="other", gpu=g, sm_clock_mhz=mid)),
                        ("reset", ResetClock(t_ns=0, node=node, gpu=g)),
                        (
                            "short-lease",
                            SetClock(t_ns=0, node=node, gpu=g, sm_clock_mhz=mid, lease_s=0.3),
                        ),
                    ]
                    for _label, cmd in plan:
                        seq += 1
                        cmd = msgspec.structs.replace(
                            cmd, t_ns=time.time_ns(), seq=seq, issued_by="dryrun"
                        )
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
    return {
        "node": node,
        "backend": f"dry-run over {backend.inner.name}",
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
        "--emulator-url", default=None, help="read an emulator instead of NVML (a local check)"
    )
    args = parser.parse_args()
    from voltana.common.logs import configure_logging

    configure_logging(fmt="console", level="warning")
    gpus = [int(x) for x in args.gpus.split(",")] if args.gpus else None
    if args.emulator_url:
        result = asyncio.run(scenario(gpus, args.node, args.emulator_url))
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
        result = asyncio.run(scenario(gpus, args.node))
        after = snapshot(watched)
    result["gpu_before"], result["gpu_after"] = before, after
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"driver {before.get('driver')}; GPUs {watched}")
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
