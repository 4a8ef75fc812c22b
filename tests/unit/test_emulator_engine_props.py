"""Engine invariants under random traffic: KV accounting, limits, every request ends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.groundtruth.engine import AdmissionError, Engine, EngineConfig, Phase

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 3000), st.integers(1, 60)),
        st.tuples(st.just("step"), st.just(0), st.just(0)),
        st.tuples(st.just("abort"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("kv"), st.integers(0, 40), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    role=st.sampled_from(["unified", "prefill", "decode"]),
    cap=st.integers(500, 20_000),
    max_running=st.integers(1, 8),
    chunk=st.integers(16, 4096),
    script=ops,
)
def test_engine_invariants(role: str, cap: int, max_running: int, chunk: int, script: list) -> None:
    eng = Engine(
        EngineConfig(
            role=role,  # type: ignore[arg-type,unused-ignore]
            kv_capacity_tokens=cap,
            max_running_requests=max_running,
            chunked_prefill_size=chunk,
        )
    )
    t = 0.0
    submitted: list[str] = []
    finished: set[str] = set()

    def check() -> None:
        s = eng.stats()
        held = sum(r.reserved_tokens for r in eng.requests.values() if r.holds_reservation)
        assert s.kv_reserved_tokens == held <= cap
        assert s.kv_used_tokens <= s.kv_reserved_tokens
        busy = [r for r in eng.requests.values() if r.phase in (Phase.PREFILLING, Phase.RUNNING)]
        assert len(busy) <= max_running

    def drive(events: list) -> None:
        for e in events:
            if e.kind == "finished":
                assert e.rid not in finished
                finished.add(e.rid)
            elif e.kind == "prefill_done":
                drive(eng.transfer_done(e.rid, t))

    for op, a, b in script:
        t += 0.01
        if op == "submit":
            rid = f"r{len(submitted)}"
            try:
                eng.submit(rid, prompt_tokens=a, max_new_tokens=b, now=t)
                submitted.append(rid)
            except AdmissionError:
                assert a + b > cap
        elif op == "step":
            drive(eng.admit(t))
            plan = eng.next_batch(t)
            if plan is not None:
                assert plan.kind == "decode" or plan.new_tokens <= chunk
                drive(eng.complete(plan, t + 0.01))
        elif op == "abort" and submitted:
            eng.abort(submitted[a % len(submitted)])
        elif op == "kv" and submitted:
            drive(eng.kv_arrived(submitted[a % len(submitted)], t))
        check()
    # Drain: everything left either finishes or is aborted, and the engine ends empty.
    for _ in range(20_000):
        t += 0.01
        admitted = eng.admit(t)
        drive(admitted)
        moved = bool(admitted)
        for rid, r in list(eng.requests.items()):
            if r.phase is Phase.TRANSFER and role == "decode":
                drive(eng.kv_arrived(rid, t))
                moved = True
        plan = eng.next_batch(t)
        if plan is None and not moved:
            break
        if plan is not None:
            drive(eng.complete(plan, t))
        check()
    assert eng.idle
    assert eng.stats().kv_reserved_tokens == 0
