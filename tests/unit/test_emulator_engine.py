"""The pure continuous-batching scheduler: admission, chunking, PD phases, freeing."""

from __future__ import annotations

import pytest
from voltana.groundtruth.engine import (
    AdmissionError,
    BatchPlan,
    Engine,
    EngineConfig,
    iteration_cost,
)
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel


def _run(eng: Engine, t: float = 0.0, dt: float = 0.01, limit: int = 10_000) -> list:
    events = []
    for _ in range(limit):
        events += eng.admit(t)
        plan = eng.next_batch(t)
        if plan is None:
            break
        t += dt
        events += eng.complete(plan, t)
    return events


def test_unified_request_runs_to_length() -> None:
    eng = Engine(EngineConfig(kv_capacity_tokens=10_000))
    eng.submit("a", prompt_tokens=100, max_new_tokens=5, now=0.0)
    ev = _run(eng)
    kinds = [e.kind for e in ev]
    assert kinds == ["first_token", "token", "token", "token", "token", "finished"]
    assert ev[-1].finish_reason == "length" and ev[-1].generated_tokens == 5
    assert eng.idle and eng.stats().kv_reserved_tokens == 0


def test_stop_before_max_new_tokens() -> None:
    eng = Engine(EngineConfig(kv_capacity_tokens=10_000))
    eng.submit("a", prompt_tokens=10, max_new_tokens=50, output_tokens=3, now=0.0)
    ev = _run(eng)
    assert ev[-1].kind == "finished" and ev[-1].finish_reason == "stop"
    assert ev[-1].generated_tokens == 3


def test_chunked_prefill_respects_token_budget() -> None:
    eng = Engine(EngineConfig(chunked_prefill_size=1000, kv_capacity_tokens=100_000))
    eng.submit("long", prompt_tokens=2500, max_new_tokens=2, now=0.0)
    eng.submit("short", prompt_tokens=300, max_new_tokens=2, now=0.0)
    plans: list[BatchPlan] = []
    t = 0.0
    while (p := eng.next_batch(t)) is not None and p.kind == "prefill":
        plans.append(p)
        t += 0.01
        eng.complete(p, t)
    assert [p.new_tokens for p in plans] == [1000, 1000, 800]
    assert plans[0].chunks == ((1000, 0),)
    assert plans[1].chunks == ((1000, 1000),)
    assert plans[2].chunks == ((500, 2000), (300, 0))
    assert all(p.new_tokens <= 1000 for p in plans)


def test_max_running_requests_limits_the_batch() -> None:
    eng = Engine(EngineConfig(max_running_requests=3, kv_capacity_tokens=100_000))
    for i in range(5):
        eng.submit(f"r{i}", prompt_tokens=10, max_new_tokens=4, now=0.0)
    first = eng.next_batch(0.0)
    assert first is not None and first.batch_size == 3
    eng.complete(first, 0.01)
    decode = eng.next_batch(0.01)
    assert decode is not None and decode.kind == "decode" and decode.batch_size == 3
    assert eng.stats().waiting_reqs == 2
    ev = _run(eng, 0.01)
    assert sum(e.kind == "finished" for e in ev) == 5


def test_kv_capacity_gates_admission_and_frees() -> None:
    eng = Engine(EngineConfig(kv_capacity_tokens=250))
    eng.submit("a", prompt_tokens=100, max_new_tokens=50, now=0.0)
    eng.submit("b", prompt_tokens=100, max_new_tokens=50, now=0.0)
    p = eng.next_batch(0.0)
    assert p is not None and p.rids == ("a",)
    assert eng.stats().kv_reserved_tokens == 150
    ev = _run(eng)
    assert [e.rid for e in ev if e.kind == "finished"] == ["a", "b"]
    assert eng.stats().kv_reserved_tokens == 0


@pytest.mark.parametrize(
    ("prompt", "max_new", "out"),
    [(0, 5, None), (10, 0, None), (10, -3, None), (10, 5, 6), (10, 5, 0), (1000, 1, None)],
)
def test_bad_requests_are_rejected(prompt: int, max_new: int, out: int | None) -> None:
    eng = Engine(EngineConfig(kv_capacity_tokens=500))
    with pytest.raises(AdmissionError):
        eng.submit("x", prompt_tokens=prompt, max_new_tokens=max_new, output_tokens=out, now=0.0)
    assert eng.idle


def test_abort_frees_everything_mid_run() -> None:
    eng = Engine(EngineConfig(kv_capacity_tokens=1000))
    eng.submit("a", prompt_tokens=100, max_new_tokens=100, now=0.0)
    eng.submit("b", prompt_tokens=100, max_new_tokens=100, now=0.0)
    plan = eng.next_batch(0.0)
    assert plan is not None
    assert eng.abort("a")
    ev = eng.complete(plan, 0.01)  # the in-flight iteration skips the aborted request
    assert [e.rid for e in ev] == ["b"]
    assert eng.stats().kv_reserved_tokens == 200 and eng.stats().kv_used_tokens == 101
    assert eng.abort("b") and not eng.abort("b")
    assert eng.idle and eng.stats().kv_reserved_tokens == 0 and eng.stats().kv_used_tokens == 0


def test_prefill_role_holds_kv_until_transfer_done() -> None:
    eng = Engine(EngineConfig(role="prefill", kv_capacity_tokens=1000))
    eng.submit("a", prompt_tokens=200, max_new_tokens=10, now=0.0)
    plan = eng.next_batch(0.0)
    assert plan is not None and plan.kind == "prefill"
    ev = eng.complete(plan, 0.02)
    assert [(e.kind, e.generated_tokens) for e in ev] == [("prefill_done", 1)]
    assert eng.next_batch(0.02) is None  # no decode on a prefill server
    assert eng.stats().transfer_reqs == 1 and eng.stats().kv_used_tokens == 201
    done = eng.transfer_done("a", 0.03)
    assert done[0].kind == "finished" and eng.idle


def test_decode_role_waits_for_kv_then_decodes() -> None:
    eng = Engine(EngineConfig(role="decode", max_running_requests=2, kv_capacity_tokens=1000))
    for r in ("a", "b", "c"):
        eng.submit(r, prompt_tokens=100, max_new_tokens=3, now=0.0)
    alloc = eng.admit(0.0)
    assert [e.rid for e in alloc] == ["a", "b"]  # slot-limited preallocation
    assert eng.next_batch(0.0) is None  # no token before the KV arrives
    ev = eng.kv_arrived("a", 0.1)
    assert [(e.kind, e.generated_tokens) for e in ev] == [("first_token", 1)]
    plan = eng.next_batch(0.1)
    assert plan is not None and plan.kind == "decode" and plan.rids == ("a",)
    assert plan.kv_tokens == 101
    eng.complete(plan, 0.11)
    fin = eng.complete(eng.next_batch(0.11) or plan, 0.12)
    assert fin[-1].kind == "finished" and fin[-1].generated_tokens == 3
    assert [e.rid for e in eng.admit(0.12)] == ["c"]


def test_iteration_cost_uses_the_model() -> None:
    model = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
    eng = Engine(EngineConfig(kv_capacity_tokens=100_000))
    eng.submit("a", prompt_tokens=2048, max_new_tokens=2, now=0.0)
    plan = eng.next_batch(0.0)
    assert plan is not None
    assert iteration_cost(model, plan, 1980) == model.prefill(1980, 2048)
    eng.complete(plan, 0.06)
    dplan = eng.next_batch(0.06)
    assert dplan is not None
    assert iteration_cost(model, dplan, 1200) == model.decode(1200, 1, 2049)
