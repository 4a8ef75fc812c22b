"""The GPU-backed worker (``voltana emulator --backend torch``) on a CPU: scheduling and protocol.

The same random-weight Llama code the worker runs on a GPU runs here with the tiny
shape on ``--device cpu`` (eagerly: CUDA graphs need a GPU), so the code path between
the scheduler and the device is exercised wherever the tests run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from emulator_helpers import Factory, url
from helpers import check_generate
from voltana.groundtruth.gpu_specs import MODELS
from voltana.predictor.buckets import decode_bucket

torch = pytest.importorskip("torch")

from voltana.services.emulator.torch_exec import (  # noqa: E402
    TorchExecutor,
    decode_grid,
    kv_bucket,
    prefill_bucket,
)
from voltana.services.emulator.torch_llama import SHAPES  # noqa: E402

TINY = {
    "backend": "torch",
    "torch_device": "cpu",
    "torch_shape": "tiny",
    "torch_kv_pool_gib": 0.02,  # 20k tiny tokens
    "chunked_prefill_size": 256,
    "gpu": "h200",
}


def test_the_torch_shape_is_the_modelled_one() -> None:
    shape, model = SHAPES["llama-3.1-8b"], MODELS["llama-3.1-8b"]
    for field in ("hidden", "layers", "heads", "kv_heads", "head_dim"):
        assert getattr(shape, field) == getattr(model, field), field
    assert shape.params == pytest.approx(model.params, rel=1e-3)


@pytest.mark.parametrize(("bucket", "share"), [(kv_bucket, 1 / 8), (prefill_bucket, 1 / 16)])
def test_graph_buckets_round_up_by_a_bounded_share(bucket: object, share: float) -> None:
    prev = 0
    for t in range(1, 40000, 7):
        b = bucket(t)  # type: ignore[operator]
        assert b >= t and b >= prev
        assert b - t < 64 or b <= (1 + share) * t
        prev = b


def test_the_start_up_decode_grid_covers_every_step_within_its_bounds() -> None:
    """Any decode step of <= max batch and <= kv_max KV a sequence replays a captured graph."""
    ex = TorchExecutor("tiny", "cpu", kv_pool_gib=0.03, max_prefill_tokens=128)
    assert ex.pool_tokens >= 40 * (
        kv_bucket(700) + 1
    )  # every pair fits: none is left out for the pool
    grid = set(decode_grid(40, 700, ex.pool_tokens))
    assert all(b * (t + 1) <= ex.pool_tokens for b, t in grid)
    assert {b for b, _ in grid} == {1, 2, 4, 8, 16, 24, 32, 40}
    for batch in range(1, 41):
        for per_seq in (1, 63, 64, 65, 511, 513, 699, 700):
            b, length, clamped = ex.decode_shape(batch, batch * per_seq)
            assert clamped or (b, length) in grid, (batch, per_seq)
    assert decode_grid(40, 0, ex.pool_tokens) == []
    assert decode_grid(256, 2048, 2**40)[-1] == (256, 2048)


def test_executor_runs_prefill_and_bucketed_decode_on_cpu() -> None:
    ex = TorchExecutor("tiny", "cpu", kv_pool_gib=0.002, max_prefill_tokens=128)
    assert ex.warm_up() == 0  # graphs are captured on CUDA devices only
    rec = ex.run("prefill", 300, 2, 0)
    assert rec["tokens"] == 128 and rec["device_s"] > 0  # one chunk at most
    assert rec["padded_tokens"] == 128 and rec["captured"] is False
    flagged = 0
    for batch, kv in [(1, 10), (3, 3 * 100), (5, 5 * 700), (129, 129 * 5)]:
        rec = ex.run("decode", batch, batch, kv)
        flagged += rec["clamped"]
        assert rec["bucket"] == decode_bucket(batch)
        # The plan's KV, not the padded bucket's: bucket x length covers it within 1/8.
        assert (
            rec["clamped"] or kv <= rec["bucket"] * rec["kv_len"] <= 1.125 * kv + 64 * rec["bucket"]
        )
        assert rec["captured"] is False  # no CUDA graphs on a CPU
    # A step too large for the pool is clamped to a shorter KV, not an error.
    rec = ex.run("decode", 64, 64, 64 * 4000)
    assert rec["clamped"] and rec["bucket"] * (rec["kv_len"] + 1) <= ex.pool_tokens
    assert ex.clamped == flagged + 1 and flagged < 4


async def test_worker_batches_concurrent_requests_on_the_device(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator(**TINY)
    body = {"text": "hello there", "sampling_params": {"max_new_tokens": 6, "ignore_eos": True}}

    async def one() -> dict[str, object]:
        async with http.post(url(app, "/generate"), json=body) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    got = await asyncio.gather(*(one() for _ in range(8)))
    assert all(g["meta_info"]["completion_tokens"] == 6 for g in got)  # type: ignore[index]
    loop = app.server.iteration_loop
    decodes = [r for r in loop.device_log if r["kind"] == "decode"]
    assert decodes and max(r["batch_size"] for r in decodes) >= 2  # batched, not one by one
    assert all(r["bucket"] == decode_bucket(r["batch_size"]) for r in decodes)
    # The iteration log (admin API) is the device's timeline: one entry per device run.
    async with http.get(url(app, "/voltana/iterations")) as r:
        its = (await r.json())["iterations"]
    assert len(its) == len(loop.device_log)
    assert all(
        it["model_time_s"] >= d["device_s"] for it, d in zip(its, loop.device_log, strict=True)
    )
    async with http.get(url(app, "/metrics")) as r:
        assert "sglang:num_running_reqs" in await r.text()
    await check_generate(url(app, ""), stream=True)
    await check_generate(url(app, ""), stream=False)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--torch-shape", "nope"], "no torch model of shape 'nope'"),
        (["--torch-warm-decode-kv", "-1"], "--torch-warm-decode-kv must be >= 0"),
    ],
)
def test_bad_torch_settings_are_a_clear_error(flags: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "voltana", "emulator", "--backend", "torch"]
    argv += ["--device", "cpu", *flags, "--port", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
