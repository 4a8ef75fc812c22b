"""``voltana sim`` as a real subprocess: table on stdout, results.json and PNGs on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _voltana(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voltana", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_sim_cli_on_a_slice_of_the_packaged_trace(tmp_path: Path) -> None:
    """No --trace and no --synthetic: the Azure 2023 trace shipped in the package."""
    out = tmp_path / "sim"
    proc = _voltana(
        "sim",
        "--window",
        "0,40",
        "--cluster",
        "1p1d",
        "--policies",
        "static-max,ecofreq,voltana",
        "--slo-ttft-s",
        "0.5",
        "--slo-itl-s",
        "0.025",
        "--quick-profile",
        "--no-progress",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "static-max" in proc.stdout and "oracle" in proc.stdout
    assert "azure_llm_2023_conv" in proc.stdout
    data = json.loads((out / "results.json").read_text())
    keys = {
        "energy_j",
        "energy_per_output_token_j",
        "saving_vs_static_max",
        "slo_attainment",
        "ttft_attainment",
        "itl_attainment",
        "ttft_p99_ms",
        "itl_p99_ms",
    }
    for name in ("static-max", "ecofreq", "voltana"):
        assert keys <= set(data["policies"][name]), name
        assert data["policies"][name]["finished"] == data["workload"]["requests"]
    assert data["policies"]["static-max"]["saving_vs_static_max"] == 0.0
    assert data["policies"]["ecofreq"]["energy_j"] < data["policies"]["static-max"]["energy_j"]
    assert data["oracle"]["energy_j"] > 0
    assert data["params"]["cluster"]["n_prefill"] == 1
    assert data["params"]["slo"]["itl_s"] == 0.025
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "latency_cdf.png" in pngs and "timeseries_voltana.png" in pngs
    assert all((out / p).stat().st_size > 10_000 for p in pngs)


def test_sim_cli_synthetic_sweep(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = _voltana(
        "sim",
        "--synthetic",
        "poisson",
        "--rate",
        "2",
        "--duration",
        "15",
        "--cluster",
        "1p1d",
        "--policies",
        "static-max,static-min",
        "--sweep-rate",
        "1,2",
        "--sweep-slo",
        "1",
        "--no-oracle",
        "--quick-profile",
        "--no-progress",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "sweep.json").read_text())
    assert {(r["rate_scale"], r["policy"]) for r in rows} == {
        (1.0, "static-max"),
        (1.0, "static-min"),
        (2.0, "static-max"),
        (2.0, "static-min"),
    }
    assert "| rate x |" in (out / "sweep.md").read_text()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trace", "/nonexistent.csv"], "not found"),
        (["--synthetic", "poisson", "--policies", "bogus"], "unknown policy"),
        (["--synthetic", "poisson", "--cluster", "two"], "2p2d"),
        (["--trace", "x.csv", "--synthetic", "poisson"], "not both"),
    ],
)
def test_sim_cli_bad_input_is_a_clear_error(args: list[str], needle: str) -> None:
    proc = _voltana("sim", "--no-progress", *args)
    assert proc.returncode == 1
    assert needle in proc.stderr


@pytest.mark.parametrize("cluster", ["2u", "1p1d"])
def test_sim_cli_default_policy_and_cluster_kinds(tmp_path: Path, cluster: str) -> None:
    """``default`` and ``Nu`` / ``NpMd`` clusters on the command line; every policy's row
    carries ``saving_vs_default`` beside ``saving_vs_static_max``."""
    out = tmp_path / cluster
    proc = _voltana(
        "sim",
        "--synthetic",
        "poisson",
        "--rate",
        "2",
        "--duration",
        "20",
        "--cluster",
        cluster,
        "--policies",
        "default,default-p2,voltana",
        "--quick-profile",
        "--no-progress",
        "--no-plots",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["params"]["cluster_label"] == cluster
    assert set(data["policies"]) == {"default", "default-p2", "voltana"}
    for row in data["policies"].values():
        assert row["saving_vs_default"] is not None and row["saving_vs_static_max"] is not None
    assert data["policies"]["default"]["saving_vs_default"] == 0.0
    assert (data["oracle"] is None) == cluster.endswith("u")
    bad = _voltana("sim", "--synthetic", "poisson", "--duration", "5", "--cluster", "2x2")
    assert bad.returncode == 1 and "4u" in bad.stderr


def test_sim_cli_engine_flags_set_every_instance(tmp_path: Path) -> None:
    """SGLang's server flags reach the simulated engine: without mixed chunks a colocated
    instance runs prefill and decode in separate iterations, so it runs more of them."""
    runs = {}
    for mixed in ("--enable-mixed-chunk", "--no-enable-mixed-chunk"):
        out = tmp_path / mixed
        proc = _voltana(
            "sim",
            "--synthetic",
            "poisson",
            "--rate",
            "4",
            "--duration",
            "20",
            "--cluster",
            "1u",
            "--policies",
            "default",
            mixed,
            "--max-running-requests",
            "64",
            "--chunked-prefill-size",
            "2048",
            "--no-progress",
            "--no-plots",
            "--out",
            str(out),
        )
        assert proc.returncode == 0, proc.stderr
        runs[mixed] = json.loads((out / "results.json").read_text())
    on, off = runs["--enable-mixed-chunk"], runs["--no-enable-mixed-chunk"]
    assert on["params"]["enable_mixed_chunk"] is True
    assert off["params"]["enable_mixed_chunk"] is False
    for run in (on, off):
        assert run["params"]["max_running_requests"] == 64
        assert run["params"]["chunked_prefill_size"] == 2048
        assert run["policies"]["default"]["finished"] == run["workload"]["requests"]
    assert off["policies"]["default"]["iterations"] > on["policies"]["default"]["iterations"]
    bad = _voltana("sim", "--synthetic", "poisson", "--max-running-requests", "0")
    assert bad.returncode == 1 and "--max-running-requests" in bad.stderr


def test_sim_and_plan_take_a_gpu_spec_file(tmp_path: Path) -> None:
    """``--gpu-spec``: the run is of the file's GPU (recorded in params), and a bad file is
    a one-line error from both commands."""
    spec = tmp_path / "slow.json"
    spec.write_text(json.dumps({"base": "h100", "decode_fixed_s": 0.01}))
    rows = {}
    for name, extra in (("builtin", []), ("file", ["--gpu-spec", str(spec)])):
        out = tmp_path / name
        proc = _voltana(
            "sim",
            *("--synthetic", "poisson", "--rate", "2", "--duration", "15", "--cluster", "1u"),
            *("--policies", "default", "--no-progress", "--no-plots", "--out", str(out)),
            *extra,
        )
        assert proc.returncode == 0, proc.stderr
        rows[name] = json.loads((out / "results.json").read_text())
    assert f"h100 from {spec}" in proc.stdout
    assert rows["file"]["params"]["gpu_override"] == {"base": "h100", "decode_fixed_s": 0.01}
    slow, fast = (rows[k]["policies"]["default"]["itl_p50_ms"] for k in ("file", "builtin"))
    assert slow > fast + 8.0  # every decode step carries the file's 10 ms
    spec.write_text('{"base": "h100", "decode_fixed_s": -1}')
    for cmd in ("sim", "plan"):
        bad = _voltana(cmd, "--window", "0,10", "--gpu-spec", str(spec))
        assert bad.returncode == 1, (cmd, bad.stderr)
        assert "decode_fixed_s must be positive" in bad.stderr and "Traceback" not in bad.stderr


def test_sim_cli_unknown_gpu_lists_the_choices() -> None:
    proc = _voltana("sim", "--gpu", "h900")
    assert proc.returncode == 2
    assert "h100" in proc.stderr and "a100" in proc.stderr and "h900" in proc.stderr
