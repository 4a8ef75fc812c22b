"""``voltana profile live`` against real emulated PD workers over HTTP (emulated clock backend)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from actuator_helpers import emulator, gpus_of
from voltana.cli import main
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.predictor.profile import load_profile
from voltana.services.profiler.live import LiveProber, LiveTarget


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    logs = tmp_path_factory.mktemp("emu")
    with (
        emulator(role="prefill", gpu_ids=(0,), log_dir=logs, extra=("--noise", "0.01")) as pre,
        emulator(role="decode", gpu_ids=(1,), log_dir=logs, extra=("--noise", "0.01")) as dec,
    ):
        yield pre, dec


def test_live_samples_match_the_emulated_hardware(workers: tuple[str, str]) -> None:
    pre, dec = workers
    prober = LiveProber.build(
        gpu="h100",
        model="llama-3.1-8b",
        prefill=LiveTarget(url=pre, gpus=[0]),
        decode=LiveTarget(url=dec, gpus=[1]),
        backend="emulated",
        decode_tokens=32,
    )
    truth = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
    try:
        hw = prober.hardware()
        assert hw.supported_clocks_mhz[0] == 345 and hw.supported_clocks_mhz[-1] == 1980
        d = prober.measure_decode(1200, 16, 512)
        assert gpus_of(dec)[1]["locked_clock_mhz"] == 1200
        assert d.kv_tokens == pytest.approx(16 * (512 + 16), rel=0.2)
        want = truth.decode(1200, 16, int(d.kv_tokens))
        assert d.latency_s == pytest.approx(want.time_s, rel=0.15)
        assert d.energy_j == pytest.approx(want.energy_j, rel=0.2)
        p = prober.measure_prefill(1200, 2048)
        assert gpus_of(pre)[0]["locked_clock_mhz"] == 1200
        assert p.latency_s == pytest.approx(truth.prefill(1200, 2048).time_s, rel=0.25)
        hit = prober.measure_prefill_context(1200, 512, 4096)  # the worker's prefix cache
        assert hit is not None and hit.context_tokens == 4096
        assert hit.latency_s == pytest.approx(truth.prefill(1200, 512, 4096).time_s, rel=0.25)
        idle = prober.measure_idle(345)
        assert idle.power_w == pytest.approx(truth.idle_power_w(345), rel=0.1)
    finally:
        prober.close()
    assert gpus_of(pre)[0]["locked_clock_mhz"] is None  # default clocks restored
    assert gpus_of(dec)[1]["locked_clock_mhz"] is None


def test_profile_live_cli_fits_and_reports_accuracy(
    workers: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pre, dec = workers
    out = tmp_path / "live.json"
    rc = main(
        [
            "profile",
            "live",
            "--gpu",
            "h100",
            "--model",
            "llama-3.1-8b",
            "--prefill-url",
            pre,
            "--prefill-gpus",
            "0",
            "--decode-url",
            dec,
            "--decode-gpus",
            "1",
            "--clocks",
            "990,1980",
            "--batch-sizes",
            "1,2,3,4,5,8,9,16",
            "--context-tokens",
            "64,256,1024",
            "--prefill-tokens",
            "128,512,1024,2048,3072,4096",
            "--max-batch-size",
            "16",
            "--max-prefill-tokens",
            "4096",
            "--decode-tokens",
            "24",
            "--prefill-context",
            "512:8192",
            "--heldout",
            "0.2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "held-out MAE" in text
    prof = load_profile(out)
    assert prof.file.source == "live" and [p.clock_mhz for p in prof.file.prefill] == [990, 1980]
    acc = prof.file.accuracy
    assert acc is not None and acc.decode_points > 0
    assert acc.decode_latency_mae_pct < 10 and acc.prefill_latency_mae_pct < 10
    truth = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
    assert prof.decode_latency_s(990, 8, 8 * 600) == pytest.approx(
        truth.decode(990, 8, 8 * 600).time_s, rel=0.15
    )
    # the cached-context term was measured through the worker's prefix cache (one point
    # per clock: noise may zero it at one clock, never at both)
    assert any(p.latency_s_per_ctx_token > 0 for p in prof.file.prefill)
    assert gpus_of(dec)[1]["locked_clock_mhz"] is None
