"""The emulator's clock admin API under a token: the emulated GPUs' privilege."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from emulator_helpers import Factory, url
from voltana.common.errors import GpuError
from voltana.gpu.emulator_admin import EmulatorAdmin


async def test_clock_changes_need_the_token(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator(role="decode", gpu_ids=(0,), admin_token="t0ken")
    base = url(app, "")
    async with http.post(
        base + "/voltana/gpus/0/locked_clocks", json={"min_mhz": 600, "max_mhz": 600}
    ) as r:
        assert r.status == 401
    async with http.delete(base + "/voltana/gpus/0/locked_clocks") as r:
        assert r.status == 401
    async with http.get(base + "/voltana/gpus") as r:
        assert r.status == 200  # readings stay open, as NVML's do
        assert (await r.json())["gpus"][0]["locked_clock_mhz"] is None
    stranger = EmulatorAdmin(base, token="wrong")
    with pytest.raises(GpuError):
        await asyncio.to_thread(stranger.lock, 0, 600, 600)
    owner = EmulatorAdmin(base, token="t0ken")
    state = await asyncio.to_thread(owner.lock, 0, 600, 600)
    assert state.locked_clock_mhz == 600
    assert (await asyncio.to_thread(owner.reset, 0)).locked_clock_mhz is None
    for admin in (stranger, owner):
        admin.close()
