"""The profiling procedure on simulated hardware: plan coverage, accuracy, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from voltana.cli import main
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.predictor.buckets import default_buckets
from voltana.predictor.measurements import HardwareInfo, Prober
from voltana.predictor.profile import Profile, load_profile
from voltana.services.profiler.core import (
    SimulatedProber,
    default_plan,
    profile_from_prober,
)

HW = HardwareInfo(gpu="h100", model="m", tp=1, supported_clocks_mhz=list(range(345, 1981, 15)))


@pytest.mark.parametrize("quick", [True, False])
def test_plan_covers_both_sides_of_every_bucket_and_both_clock_ends(quick: bool) -> None:
    plan = default_plan(HW, quick=quick, max_batch_size=512, max_kv_tokens=400_000)
    assert min(plan.clocks_mhz) == 345 and max(plan.clocks_mhz) == 1980
    sizes = set(plan.decode_batch_sizes)
    prev = 0
    for bk in default_buckets(512):
        assert {prev + 1, bk} <= sizes
        prev = bk
    points = plan.decode_points()
    assert all(b * c <= 400_000 for b, c in points)
    assert {b for b, _ in points} == sizes  # every size measured at least once
    assert plan.size() > 0


@pytest.fixture(scope="module")
def fitted() -> tuple[Profile, GpuModel]:
    gm = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], noise=0.03, seed=4)
    prober = SimulatedProber(gm, "h100", "llama-3.1-8b", seed=4)
    assert isinstance(prober, Prober)
    plan = default_plan(prober.hardware(), quick=True, max_kv_tokens=prober.max_kv_tokens())
    pf, m = profile_from_prober(prober, plan, heldout_fraction=0.2, seed=0)
    assert len(m.idle) == len(plan.clocks_mhz)
    return Profile(pf), GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])


def test_heldout_accuracy_meets_target(fitted: tuple[Profile, GpuModel]) -> None:
    prof, _ = fitted
    acc = prof.file.accuracy
    assert acc is not None and acc.decode_points > 50 and acc.prefill_points > 5
    for v in (
        acc.prefill_latency_mae_pct,
        acc.decode_latency_mae_pct,
        acc.prefill_energy_mae_pct,
        acc.decode_energy_mae_pct,
    ):
        assert v < 5.0


def test_predictions_track_the_hardware_at_unprofiled_states(
    fitted: tuple[Profile, GpuModel],
) -> None:
    prof, truth = fitted
    rng = np.random.default_rng(9)
    errs_d, errs_p = [], []
    for _ in range(300):
        clock = int(rng.choice(truth.supported_clocks_mhz))  # mostly between profiled clocks
        b = int(rng.integers(1, 400))
        kv = int(b * rng.integers(50, 900))
        errs_d.append(
            abs(prof.decode_latency_s(clock, b, kv) / truth.decode(clock, b, kv).time_s - 1)
        )
        t = int(rng.integers(16, 8192))
        errs_p.append(abs(prof.prefill_latency_s(clock, t) / truth.prefill(clock, t).time_s - 1))
    assert float(np.mean(errs_d)) < 0.05 and float(np.mean(errs_p)) < 0.05
    # Idle power is measured, not copied: close to the model but not identical.
    assert prof.idle_power_w(345) == pytest.approx(truth.idle_power_w(345), rel=0.05)


def test_cli_simulate_show_and_refit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, meas = tmp_path / "a100.json", tmp_path / "m.json"
    rc = main(
        [
            "profile",
            "simulate",
            "--gpu",
            "a100",
            "--quick",
            "--out",
            str(out),
            "--save-measurements",
            str(meas),
            "--noise",
            "0.02",
        ]
    )
    assert rc == 0 and out.is_file() and meas.is_file()
    text = capsys.readouterr().out
    assert "held-out MAE" in text and "decode latency" in text
    prof = load_profile(out)
    assert prof.gpu == "a100" and prof.max_clock_mhz == 1410
    refit = tmp_path / "refit.json"
    assert main(["profile", "fit", str(meas), "--out", str(refit)]) == 0
    assert load_profile(refit).file.prefill == prof.file.prefill  # same data, same split
    assert main(["profile", "show", str(refit)]) == 0
    assert main(["profile", "show", "--gpu", "h100"]) == 0
    assert "predictions" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse: the choices, early
        main(["profile", "simulate", "--gpu", "b200", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'b200'" in err and "'h100'" in err
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["profile", "fit", str(bad), "--out", str(tmp_path / "y.json")]) == 1
    assert main(["profile", "show", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert "cannot fit" in err and "cannot read profile" in err


def test_cli_simulate_profiles_a_spec_files_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--gpu-spec``: the profile is fitted on the file's GPU (here decode steps carry
    5 ms more), and the notes record the file; a bad file is one line, exit 1."""
    spec = tmp_path / "slow.json"
    spec.write_text('{"base": "h100", "decode_fixed_s": 0.006}')
    paths = {}
    for name, extra in (("builtin", []), ("file", ["--gpu-spec", str(spec)])):
        paths[name] = tmp_path / f"{name}.json"
        argv = ["profile", "simulate", "--gpu", "h100", "--quick", "--noise", "0"]
        assert main([*argv, "--out", str(paths[name]), *extra]) == 0
    slow, base = load_profile(paths["file"]), load_profile(paths["builtin"])
    clock = base.max_clock_mhz
    gap = slow.decode_latency_s(clock, 8, 2048) - base.decode_latency_s(clock, 8, 2048)
    assert 0.004 < gap < 0.007
    assert f"--gpu-spec {spec}" in slow.file.notes
    spec.write_text('{"base": "h100", "decode_fixed_s": 0}')
    capsys.readouterr()
    assert main(["profile", "simulate", "--gpu-spec", str(spec), "--out", str(tmp_path / "x")]) == 1
    assert "decode_fixed_s must be positive" in capsys.readouterr().err
