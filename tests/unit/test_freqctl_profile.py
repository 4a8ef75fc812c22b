"""Profile file format and lookups: round trip, validation, bucket rounding, interpolation."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.common.errors import ConfigError
from voltana.predictor.buckets import bucket_index, default_buckets, round_up_to_bucket
from voltana.predictor.profile import Profile, default_profile, load_profile, save_profile
from voltana.predictor.profile_format import (
    DecodeBucketFit,
    DecodeClockFit,
    IdlePoint,
    PrefillClockFit,
    ProfileFile,
)

H100 = default_profile("h100", "llama-3.1-8b")
A100 = default_profile("a100", "llama-3.1-8b")


def tiny_file(**over: object) -> ProfileFile:
    """Two profiled clocks (1000, 2000) of a table 1000..2000 step 250; one bucket pair."""

    def pre(clock: int, s_per_token: float, j_per_token: float) -> PrefillClockFit:
        return PrefillClockFit(
            clock_mhz=clock,
            latency_s_per_token=s_per_token,
            latency_s=0.01,
            energy_j_per_token=j_per_token,
            energy_j=1.0,
        )

    def dec(clock: int, k: float) -> DecodeClockFit:
        return DecodeClockFit(
            clock_mhz=clock,
            buckets=[
                DecodeBucketFit(
                    bucket=b,
                    latency_s_per_req=1e-4 * k,
                    latency_s_per_kv_token=1e-8,
                    latency_s=0.005 * k,
                    energy_j_per_req=0.01,
                    energy_j_per_kv_token=0.0,
                    energy_j=2.0 / k,
                )
                for b in (8, 16)
            ],
        )

    base = dict(
        gpu="x",
        model="m",
        tp=2,
        source="synthetic",
        supported_clocks_mhz=[1000, 1250, 1500, 1750, 2000],
        decode_buckets=[8, 16],
        prefill_max_batched_tokens=1000,
        prefill=[pre(1000, 2e-5, 0.02), pre(2000, 1e-5, 0.03)],
        decode=[dec(1000, 2.0), dec(2000, 1.0)],
        idle=[IdlePoint(clock_mhz=1000, power_w=100.0), IdlePoint(clock_mhz=2000, power_w=200.0)],
    )
    base.update(over)
    return ProfileFile(**base)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        (0, 1),
        (-3, 1),
        (1, 1),
        (2, 2),
        (3, 4),
        (8, 8),
        (8.5, 16),
        (9, 16),
        (16, 16),
        (128, 128),
        (128.5, 256),
        (129, 256),
        (256, 256),
        (257, 384),
        (512, 512),
        (10_000, 512),
    ],
)
def test_buckets_round_up_never_exact_match(size: float, bucket: int) -> None:
    assert round_up_to_bucket(default_buckets(512), size) == bucket


def test_even_median_between_buckets_still_found() -> None:
    # The public code's trap: median of [8, 9] is 8.5, which matches no bucket exactly.
    assert round_up_to_bucket(default_buckets(), (8 + 9) / 2) == 16
    assert H100.decode_latency_s(1410, 8.5, 8.5 * 512) > 0


def test_bucket_nan_rejected() -> None:
    with pytest.raises(ValueError):
        bucket_index([8, 16], float("nan"))


def test_default_buckets_shape() -> None:
    b = default_buckets(600, small=False)
    assert b[:3] == [8, 16, 24] and b[15] == 128 and b[16:] == [256, 384, 512, 640]


@settings(max_examples=300, deadline=None)
@given(
    prof=st.sampled_from([H100, A100]),
    frac=st.floats(0.0, 1.0),
    batch=st.floats(0.0, 5000.0),
    kv=st.floats(0.0, 3e6),
    tokens=st.floats(0.0, 100_000.0),
)
def test_lookups_always_finite_positive(
    prof: Profile, frac: float, batch: float, kv: float, tokens: float
) -> None:
    clock = prof.min_clock_mhz + frac * (prof.max_clock_mhz - prof.min_clock_mhz)
    values = [
        prof.prefill_latency_s(clock, tokens),
        prof.prefill_power_w(clock, tokens),
        prof.decode_latency_s(clock, batch, kv),
        prof.decode_power_w(clock, batch, kv),
        prof.idle_power_w(clock),
    ]
    assert all(v is not None and math.isfinite(v) and v > 0 for v in values)
    assert prof.prefill_energy_j(clock, tokens) >= 0 and prof.decode_energy_j(clock, batch, kv) >= 0
    table = prof.decode_latency_table_s(batch, kv)
    assert table.shape == (len(prof.clocks_mhz),) and (table > 0).all()
    assert (prof.prefill_latency_table_s(tokens) > 0).all()


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_invalid_state_is_an_error_not_a_silent_value(bad: float) -> None:
    with pytest.raises(ValueError):
        H100.decode_latency_s(1410, 8, bad)
    with pytest.raises(ValueError):
        H100.prefill_latency_s(1410, bad)


def test_interpolates_linearly_between_profiled_clocks_and_clamps() -> None:
    p = Profile(tiny_file())
    lo, hi = p.prefill_latency_s(1000, 500), p.prefill_latency_s(2000, 500)
    assert p.prefill_latency_s(1500, 500) == pytest.approx((lo + hi) / 2)
    assert p.prefill_latency_s(1250, 500) == pytest.approx(0.75 * lo + 0.25 * hi)
    assert p.prefill_latency_s(1600.5, 500) == pytest.approx(lo + (hi - lo) * 0.6005)
    assert p.prefill_latency_s(500, 500) == pytest.approx(lo)  # clamped below
    d = [p.decode_latency_s(c, 10, 1000) for c in (1000, 1500, 2000)]
    assert d[1] == pytest.approx((d[0] + d[2]) / 2)
    assert p.idle_power_w(1500) == pytest.approx(150.0)
    assert list(p.idle_power_table_w()) == pytest.approx([100, 125, 150, 175, 200])
    assert p.decode_latency_table_s(10, 1000)[2] == pytest.approx(d[1])


def test_prefill_beyond_profiled_batch_is_chunked() -> None:
    p = Profile(tiny_file())
    one = p.prefill_latency_s(2000, 1000)
    assert p.prefill_latency_s(2000, 2500) == pytest.approx(
        2 * one + p.prefill_latency_s(2000, 500)
    )
    assert p.prefill_energy_j(2000, 3000) == pytest.approx(3 * p.prefill_energy_j(2000, 1000))


def test_power_is_energy_over_latency() -> None:
    p = Profile(tiny_file())
    assert p.decode_power_w(1000, 4, 100) == pytest.approx(
        p.decode_energy_j(1000, 4, 100) / p.decode_latency_s(1000, 4, 100)
    )


def test_round_trip_through_json(tmp_path: Path) -> None:
    pf = tiny_file(notes="round trip")
    path = save_profile(pf, tmp_path / "sub" / "p.json")
    back = load_profile(path)
    assert back.file == pf
    assert msgspec.json.decode(path.read_bytes(), type=ProfileFile) == pf
    again = save_profile(back, tmp_path / "p2.json")
    assert again.read_bytes() == path.read_bytes()


def test_packaged_profiles_round_trip(tmp_path: Path) -> None:
    for prof in (H100, A100):
        assert load_profile(save_profile(prof, tmp_path / "x.json")).file == prof.file


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"format": "other"}, "not a voltana profile"),
        ({"version": 99}, "version"),
        ({"supported_clocks_mhz": [2000, 1000]}, "ascending"),
        ({"decode_buckets": [16, 8]}, "decode_buckets"),
        ({"idle": []}, "idle"),
        ({"tp": 0}, "tp"),
    ],
)
def test_invalid_files_rejected_with_reason(tmp_path: Path, over: dict, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(msgspec.json.encode(tiny_file(**over)))
    with pytest.raises(ConfigError, match=needle):
        load_profile(path)


def test_negative_coefficient_rejected(tmp_path: Path) -> None:
    bad = tiny_file()
    bad = msgspec.structs.replace(
        bad, prefill=[msgspec.structs.replace(bad.prefill[0], latency_s=-1.0), bad.prefill[1]]
    )
    path = tmp_path / "neg.json"
    path.write_bytes(msgspec.json.encode(bad))
    with pytest.raises(ConfigError, match="latency_s"):
        load_profile(path)


def test_load_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid profile"):
        load_profile(tmp_path / "junk.json")
    with pytest.raises(ConfigError, match="no packaged profile"):
        default_profile("h999", "llama-3.1-8b")


def test_packaged_profiles_describe_the_hardware() -> None:
    assert H100.clocks_mhz[0] == 345 and H100.max_clock_mhz == 1980
    assert A100.clocks_mhz[0] == 210 and A100.max_clock_mhz == 1410
    for prof in (H100, A100):
        assert prof.file.source == "simulated"
        acc = prof.file.accuracy
        assert acc is not None
        assert max(acc.prefill_latency_mae_pct, acc.decode_latency_mae_pct) < 5.0
        # Idle power grows with the clock; decode latency shrinks with it.
        assert prof.idle_power_w(prof.max_clock_mhz) > prof.idle_power_w(prof.min_clock_mhz)
        assert prof.decode_latency_s(prof.min_clock_mhz, 32, 32_000) > prof.decode_latency_s(
            prof.max_clock_mhz, 32, 32_000
        )
