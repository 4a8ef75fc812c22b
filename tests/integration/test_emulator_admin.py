"""The emulated GPU's admin API over real HTTP, and the GPU device that drives it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from emulator_helpers import Factory, url
from voltana.common.errors import GpuError
from voltana.gpu.emulated import EmulatedDevice
from voltana.gpu.emulator_admin import EmulatorAdmin

# ----- admin API -------------------------------------------------------------------------


async def test_admin_gpu_contract(make_emulator: Factory, http: aiohttp.ClientSession) -> None:
    app = await make_emulator(tp=2, gpu_ids=(2, 3))
    async with http.get(url(app, "/voltana/gpus")) as r:
        gpus = (await r.json())["gpus"]
    assert [g["index"] for g in gpus] == [2, 3]
    keys = {
        "index",
        "name",
        "sm_clock_mhz",
        "locked_clock_mhz",
        "max_sm_clock_mhz",
        "supported_sm_clocks_mhz",
        "mem_clock_mhz",
        "power_w",
        "energy_mj",
        "power_limit_w",
        "throttle_reasons",
        "util_gpu_pct",
        "mem_used_mib",
        "temperature_c",
    }
    assert keys <= set(gpus[0])
    assert gpus[0]["max_sm_clock_mhz"] == 1980 and gpus[0]["locked_clock_mhz"] is None
    async with http.post(
        url(app, "/voltana/gpus/3/locked_clocks"), json={"min_mhz": 1005, "max_mhz": 1005}
    ) as r:
        assert r.status == 200
        body = await r.json()
        assert (
            body["index"] == 3 and body["locked_clock_mhz"] == 1005 and body["sm_clock_mhz"] == 1005
        )
    bad = [
        ({"min_mhz": 1000, "max_mhz": 1005}, 400),
        ({"min_mhz": 1200, "max_mhz": 1005}, 400),
        ({"min_mhz": "x"}, 400),
        ({"min_mhz": True, "max_mhz": 1005}, 400),
        ([1005, 1005], 400),
    ]
    for payload, status in bad:
        async with http.post(url(app, "/voltana/gpus/3/locked_clocks"), json=payload) as r:
            assert r.status == status and "error" in await r.json()
    async with http.post(
        url(app, "/voltana/gpus/0/locked_clocks"), json={"min_mhz": 1005, "max_mhz": 1005}
    ) as r:
        assert r.status == 404
    async with http.delete(url(app, "/voltana/gpus/3/locked_clocks")) as r:
        assert r.status == 200 and (await r.json())["locked_clock_mhz"] is None
    t1 = time.monotonic()
    async with http.get(url(app, "/voltana/gpus")) as r:
        e1 = (await r.json())["gpus"][0]["energy_mj"]
    await asyncio.sleep(0.2)
    async with http.get(url(app, "/voltana/gpus")) as r:
        e2 = (await r.json())["gpus"][0]["energy_mj"]
    elapsed = time.monotonic() - t1
    assert 117.0 * 0.19e3 < e2 - e1 < 117.0 * elapsed * 1e3 + 1  # idle at the default (max) clock


async def test_gpu_device_over_the_admin_routes(make_emulator: Factory) -> None:
    """The devices' typed client against the server's routes: reads, locks, resets, errors."""
    app = await make_emulator(tp=2, gpu_ids=(2, 3))
    base = url(app, "")
    device = await asyncio.to_thread(EmulatedDevice.discover, [base])
    admin = EmulatorAdmin(base)
    try:
        assert device.indices == (2, 3)
        supported = await asyncio.to_thread(device.supported_sm_clocks_mhz, 3)
        assert supported[0] == 1980 and supported == sorted(supported, reverse=True)
        assert await asyncio.to_thread(device.set_locked_sm_clock_mhz, 3, 1005) is True
        assert await asyncio.to_thread(device.set_locked_sm_clock_mhz, 3, 1005) is False
        assert device.locked_clock_mhz(3) == 1005
        s2, s3 = await asyncio.to_thread(device.sample)
        assert (s2.index, s3.index, s3.source) == (2, 3, "emulated")
        assert (s2.locked_clock_mhz, s3.locked_clock_mhz) == (None, 1005)
        assert s3.max_sm_clock_mhz == 1980 and s3.energy_j > 0 and s3.name
        # discovery saw GPU 2 at default clocks: no request is made to reset it
        assert await asyncio.to_thread(device.reset_locked_clocks, 2) is False
        assert await asyncio.to_thread(device.reset_locked_clocks, 3) is True
        assert [g.locked_clock_mhz for g in await asyncio.to_thread(admin.gpus)] == [None, None]
        with pytest.raises(GpuError) as info:
            await asyncio.to_thread(admin.lock, 3, 1000, 1005)
        assert info.value.code == "INVALID_ARGUMENT" and "not a supported SM clock" in str(
            info.value
        )
        with pytest.raises(GpuError) as info:
            await asyncio.to_thread(admin.reset, 7)
        assert info.value.code == "UNKNOWN_GPU" and info.value.gpu == 7
    finally:
        device.close()
        admin.close()
