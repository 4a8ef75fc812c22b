"""Energy per request: the rule, its live and simulated bookings, conservation."""

from __future__ import annotations

import asyncio
import time

import msgspec
import numpy as np
import pytest
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.schemas.config import SloConfig
from voltana.schemas.router import RequestRecord
from voltana.schemas.telemetry import GpuTelemetry
from voltana.services.router.attribution import AttributionRule, DecodeSteps, EnergyBook
from voltana.services.router.energy import EnergyLink
from voltana.services.router.energy_classes import EnergyItem, class_summary, request_class
from voltana.services.router.energy_live import LiveAttribution
from voltana.services.router.metrics import RouterMetrics
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.workload import SimRequest, Workload, synthetic

RULE = AttributionRule()
CFG = SimConfig(
    cluster=ClusterSpec(n_prefill=1, n_decode=1), slo=SloConfig(ttft_s=1.0, itl_s=0.05), noise=0.0
)
H100 = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])


def test_rule_weights() -> None:
    # a token at context position k costs 1 + k / attention_tokens
    a = RULE.attention_tokens
    assert RULE.prefill_work(3) == pytest.approx(3 + (1 + 2 + 3) / a)
    assert RULE.prefill_work(2, 10) == pytest.approx(2 + (11 + 12) / a)
    k = RULE.kv_tokens
    assert RULE.decode_weight(k) == 2.0
    assert RULE.decode_work(100, 3) == pytest.approx(
        sum(RULE.decode_weight(100 + j) for j in range(3))
    )
    with pytest.raises(ValueError, match="idle must be one of"):
        AttributionRule(idle="bill-it")  # type: ignore[arg-type]


def test_two_concurrent_prefills_split_by_their_work() -> None:
    """Two requests in one interval on one GPU: shares in the ratio of their prompt work."""
    book = EnergyBook()
    w1, w3 = RULE.prefill_work(1000), RULE.prefill_work(3000)
    book.interval("g", 100.0, 1.0, {("a", "prefill"): w1, ("b", "prefill"): w3})
    a, b = book.requests["a"].prefill_j, book.requests["b"].prefill_j
    assert a + b == pytest.approx(100.0)
    assert b / a == pytest.approx(w3 / w1)
    assert w3 / w1 > 3  # attention makes the longer prompt more than 3x the work


def test_live_two_concurrent_requests_split_as_the_rule_says() -> None:
    """Live: two requests dispatched together to the same pair; one counter interval each."""
    live = LiveAttribution()
    for rid, n in (("a", 1000), ("b", 3000)):
        live.start(rid, "p", "prefill", 0.0, input_tokens=n)
        live.start(rid, "d", "decode", 0.0, input_tokens=n)
    live.sample("n/0", "p", 0.0, 0.0)
    live.sample("n/1", "d", 0.0, 0.0)
    for rid in ("a", "b"):
        live.end(rid, "p", "prefill", 1.0)
        live.end(rid, "d", "decode", 2.0, tokens=100)
        assert live.finish(rid, 2.0) is None  # no counter sample covers the end yet
    assert live.sample("n/0", "p", 2.0, 300.0) == []  # prefill settled; decode still open
    final = dict(live.sample("n/1", "d", 2.0, 500.0))
    a, b = final["a"], final["b"]
    # prefill: busy half the interval (150 J), split by prompt work; 150 J idle
    wa, wb = RULE.prefill_work(1000), RULE.prefill_work(3000)
    assert a.prefill_j == pytest.approx(150 * wa / (wa + wb))
    assert b.prefill_j == pytest.approx(150 * wb / (wa + wb))
    # decode: same span, weight 1 + kv/K at the mid-span KV (prompt + 50)
    da, db = RULE.decode_weight(1050), RULE.decode_weight(3050)
    assert a.decode_j == pytest.approx(500 * da / (da + db))
    assert b.decode_j == pytest.approx(500 * db / (da + db))
    book = live.book
    assert book.measured_j == pytest.approx(800.0)
    assert book.unattributed_j == pytest.approx(150.0)
    assert a.total_j + b.total_j + book.unattributed_j == pytest.approx(800.0)


def test_live_colocated_request_settles_both_spans_on_one_instance() -> None:
    """A unified worker holds a request's prefill and decode spans: one sample settles both."""
    live = LiveAttribution()
    live.sample("n/0", "u", 0.0, 0.0)
    for rid in ("a", "b"):
        live.start(rid, "u", "prefill", 0.0, input_tokens=100)
        live.start(rid, "u", "decode", 0.0, input_tokens=100)
        live.end(rid, "u", "prefill", 0.5)
        live.end(rid, "u", "decode", 1.0, tokens=10)
        assert live.finish(rid, 1.0) is None
    final = dict(live.sample("n/0", "u", 1.0, 200.0))
    assert set(final) == {"a", "b"} and live.by_instance["u"] == {}
    assert sum(e.total_j for e in final.values()) == pytest.approx(200.0)


def test_live_idle_spread_and_forget() -> None:
    live = LiveAttribution(book=EnergyBook(rule=AttributionRule(idle="spread")))
    live.sample("n/0", "p", 0.0, 0.0)
    live.sample("n/0", "p", 1.0, 50.0)  # idle second: 50 J waits for the next request
    live.start("a", "p", "prefill", 1.0, input_tokens=10)
    live.end("a", "p", "prefill", 2.0)
    assert live.finish("a", 2.0) is None
    (rid, e), *_ = live.sample("n/0", "p", 2.0, 150.0)
    assert rid == "a" and e.prefill_j == pytest.approx(100.0) and e.idle_j == pytest.approx(50.0)
    # a request whose instance never reports energy is given up: later energy skips it
    live.start("b", "q", "prefill", 3.0, input_tokens=10)
    assert live.finish("b", 4.0) is None
    live.forget("b")
    assert "b" not in live.by_request and live.book.unattributed_j == 0.0
    # a counter that goes back is skipped, not booked
    live.sample("n/0", "p", 3.0, 100.0)
    assert live.rejected_samples == 1 and live.book.measured_j == pytest.approx(150.0)


def test_decode_closed_form_equals_step_by_step() -> None:
    """DecodeSteps (the simulator's) books exactly what the rule gives step by step."""
    rng = np.random.default_rng(3)
    steps, book = DecodeSteps(RULE), EnergyBook()
    running: dict[str, int] = {}  # rid -> current KV
    marks: dict[str, tuple[tuple[int, float, float, float, float], float]] = {}
    got: dict[str, float] = {}
    for s in range(300):
        if rng.random() < 0.3 or not running:
            rid = f"r{s}"
            running[rid] = int(rng.integers(10, 5000))
            marks[rid] = (steps.mark(), float(running[rid]))
        e = float(rng.uniform(1, 10))
        weights = {(r, "decode"): RULE.decode_weight(kv) for r, kv in running.items()}
        book.interval("g", e, 1.0, weights)  # type: ignore[arg-type]
        steps.step(e, 0.0, len(running), float(sum(running.values())))
        for r in list(running):
            running[r] += 1
            if rng.random() < 0.05:
                del running[r]
                got[r] = steps.energy(*marks.pop(r))[0]
    for r in running:
        got[r] = steps.energy(*marks[r])[0]
    for r, v in got.items():
        assert v == pytest.approx(book.requests[r].decode_j, rel=1e-9, abs=1e-9)


def _wl(*reqs: tuple[float, int, int]) -> Workload:
    return Workload("t", tuple(SimRequest(f"r{i}", t, n, o) for i, (t, n, o) in enumerate(reqs)))


def test_sim_two_concurrent_requests_prefill_split() -> None:
    """Two prompts in one prefill iteration: its energy splits by their work, exactly.

    r0's iteration runs alone; r1 and r2 arrive while it runs and share the next one.
    """
    profile = profile_for(CFG, quick=True)
    wl = _wl((0.0, 500, 2), (0.001, 1000, 4), (0.001, 3000, 4))
    run = run_policy(wl, POLICIES["static-max"], CFG, profile)
    b = run.energy_book
    assert b is not None
    e_pre = H100.prefill_batch(1980, [(1000, 0), (3000, 0)]).energy_j
    w1, w3 = RULE.prefill_work(1000), RULE.prefill_work(3000)
    assert b.requests["r0"].prefill_j == pytest.approx(H100.prefill(1980, 500).energy_j)
    assert b.requests["r1"].prefill_j == pytest.approx(e_pre * w1 / (w1 + w3), rel=1e-9)
    assert b.requests["r2"].prefill_j == pytest.approx(e_pre * w3 / (w1 + w3), rel=1e-9)
    assert b.requests["r2"].decode_j > b.requests["r1"].decode_j > 0  # longer KV weighs more


@pytest.mark.parametrize(
    ("idle", "cluster"),
    [("overhead", "pd"), ("spread", "pd"), ("overhead", "colocated"), ("spread", "colocated")],
)
def test_sim_conservation(idle: str, cluster: str) -> None:
    """Attributed + unattributed = the run's GPU energy, and the per-request sums agree
    (colocated: unified instances with mixed prefill and decode iterations)."""
    wl = synthetic(rate_rps=3.0, duration_s=30, seed=2)
    cfg = msgspec.structs.replace(CFG, energy_idle=idle)
    if cluster == "colocated":
        cfg = msgspec.structs.replace(
            cfg, cluster=ClusterSpec(n_prefill=0, n_decode=0, n_unified=2)
        )
    profile = profile_for(cfg, quick=True)
    run = run_policy(wl, POLICIES["voltana"], cfg, profile)
    b = run.energy_book
    assert b is not None
    per_request = sum(e.total_j for e in b.requests.values())
    assert per_request == pytest.approx(b.attributed_j, rel=1e-9)
    assert b.attributed_j + b.unattributed_j == pytest.approx(run.energy_j, rel=1e-9)
    s = run.summary()
    assert s["attributed_energy_j"] + s["unattributed_energy_j"] == pytest.approx(
        s["energy_j"], rel=1e-3
    )
    assert s["energy_by_class"]["all"]["requests"] == run.summary()["finished"]
    if idle == "spread":
        assert sum(e.idle_j for e in b.requests.values()) > 0
    if idle == "spread" and cluster == "pd":  # only the idle after each GPU's last request
        # stays over (colocated: voltana's routing may leave a GPU without requests)
        assert b.unattributed_j < 0.2 * run.energy_j


def test_class_summary() -> None:
    assert request_class(1024, 256) == "short-in/short-out"
    assert request_class(1025, 257) == "long-in/long-out"
    rows = class_summary([EnergyItem(100, 10, 1.0, 2.0), EnergyItem(2000, 500, 10.0, 20.0, 5.0)])
    assert rows["all"]["requests"] == 2 and rows["all"]["energy_j"] == 38.0
    assert rows["short-in/short-out"]["j_per_output_token"] == pytest.approx(0.3)
    assert rows["long-in/long-out"]["j_per_request"] == 35.0


def _record(rid: str) -> RequestRecord:
    return RequestRecord(
        t_ns=1,
        request_id=rid,
        prefill="p",
        decode="d",
        status="ok",
        arrival_t_ns=1,
        input_tokens=100,
        output_tokens=10,
    )


async def test_energy_link_publishes_when_final_or_gives_up() -> None:
    """The router's link: a record waits for the counter sample covering its end; without
    energy telemetry it goes at once without energy; past its wait it goes without."""
    sent: list[RequestRecord] = []
    link = EnergyLink(AttributionRule(), RouterMetrics(), sent.append, wait_s=0.05)
    # no telemetry ever seen for p/d: published at once, energy unknown
    link.dispatched("a", "p", "d", 100)
    link.record(_record("a"), "/generate")
    assert [r.energy_j for r in sent] == [None]
    # with both instances reporting: published once samples cover its end
    gpu = {"t_ns": 0, "seq": 1, "power_w": 100.0, "sm_clock_mhz": 1980}
    now_ns = time.time_ns()
    for g, inst in ((0, "p"), (1, "d")):
        link.on_gpu(GpuTelemetry(node="n", gpu=g, energy_j=0.0, energy_t_ns=now_ns, **gpu), inst)  # type: ignore[arg-type]
    link.dispatched("b", "p", "d", 100)
    link.prefill_done("b", "p")
    link.decode_done("b", "d", 10)
    link.record(_record("b"), "/generate")
    assert len(sent) == 1
    later = time.time_ns() + 10_000_000
    for g, inst in ((0, "p"), (1, "d")):
        link.on_gpu(GpuTelemetry(node="n", gpu=g, energy_j=5.0, energy_t_ns=later, **gpu), inst)  # type: ignore[arg-type]
    # its span is a sliver of the 10 ms interval: the rest of the 10 J is idle
    assert len(sent) == 2 and sent[1].energy_j is not None and 0 < sent[1].energy_j < 10.0
    book = link.core.book
    assert book.attributed_j == pytest.approx(sent[1].energy_j, abs=1e-5)
    assert book.attributed_j + book.unattributed_j == pytest.approx(10.0)
    # a client waiting for its energy gets None after wait_s when no sample comes
    await asyncio.sleep(0.02)  # past the last reading
    link.dispatched("c", "p", "d", 100)
    assert await link.wait("c") is None
    link.record(_record("c"), "/generate")
    assert sent[-1].request_id == "c" and sent[-1].energy_j is None
