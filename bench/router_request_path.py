"""CPU cost of one request's routing path in the router, without HTTP (us/request).

Builds a :class:`~voltana.services.router.server.Router` for one prefill and one
decode worker (no NATS, as in ``bench/router_vs_peers.py``) and drives every request
through what ``Pd.serve`` does around the HTTP calls: the prompt's prefix keys, the
``RouteRequest``, both policies' choice, the dispatch's books and its decision
event, the prefill and decode ends and the finished request's books. The prompt is
the router benchmark's (128 token ids, 32 out), ``--in-flight`` requests open at a
time. Process CPU time, best of
``--repeats``; ``--profile`` prints the top of a cProfile of one run.

    python bench/router_request_path.py [--policies ecoroute round_robin] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections import deque

from voltana.common.logs import configure_logging
from voltana.services.router import protocol as proto
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.policies.base import RouteRequest
from voltana.services.router.prefix import prompt_prefix
from voltana.services.router.server import Router
from voltana.services.router.stats import Outcome


def run(router: Router, n: int, body: dict, info: proto.RequestInfo, in_flight: int) -> None:
    """``n`` requests through the routing path; ``in_flight`` of them are kept open at a
    time (a closed loop of that many clients: the oldest ends when a new one starts)."""
    routing = router.routing
    open_: deque[tuple[RouteRequest, Outcome, float, int]] = deque()
    for i in range(n):
        arrival = time.monotonic()
        arrival_ns = time.time_ns()
        keys, block = prompt_prefix(body) if routing.uses_prefix else ((), 0)
        rreq = RouteRequest(
            request_id=f"{i:032x}",
            input_tokens=info.input_tokens,
            max_new_tokens=info.max_new_tokens,
            arrival_t=arrival,
            prefix_keys=keys,
            prefix_block_tokens=block,
        )
        out = Outcome(tenant=None)
        pair = routing.choose(rreq, set())
        assert pair is not None
        out.prefill, out.decode = pair.prefill.name, pair.decode.name
        routing.on_dispatched(pair, rreq, 1234, "/generate")
        open_.append((rreq, out, arrival, arrival_ns))
        while len(open_) > in_flight or (i == n - 1 and open_):
            finish(router, info, *open_.popleft())


def finish(
    router: Router,
    info: proto.RequestInfo,
    rreq: RouteRequest,
    out: Outcome,
    arrival: float,
    arrival_ns: int,
) -> None:
    """What ``Pd`` books when a request's prefill and decode ended."""
    routing, st = router.routing, router.state
    assert out.prefill is not None and out.decode is not None
    routing.energy.prefill_done(rreq.request_id, out.prefill)
    st.prefill_done(out.prefill, rreq.request_id, rreq.input_tokens)
    routing.breaker_result(out.prefill, True)
    out.ttft_s = time.monotonic() - arrival
    out.output_tokens = info.max_new_tokens
    routing.energy.decode_done(rreq.request_id, out.decode, out.output_tokens)
    st.decode_done(
        out.decode, rreq.request_id, rreq.input_tokens, rreq.max_new_tokens, [], time.monotonic()
    )
    routing.breaker_result(out.decode, True)
    routing.on_finished(rreq, info, "/generate", out, arrival, arrival_ns)


async def measure(policy: str, n: int, repeats: int, profile: bool, in_flight: int) -> float:
    cfg = RouterConfig(
        prefill=[WorkerSpec(url="http://127.0.0.1:30001", role="prefill", bootstrap_port=8998)],
        decode=[WorkerSpec(url="http://127.0.0.1:30002", role="decode")],
        prefill_policy=policy,
        decode_policy=policy,
    )
    router = Router(cfg)
    body = {"input_ids": list(range(1, 129)), "sampling_params": {"max_new_tokens": 32}}
    info = proto.RequestInfo(
        stream=False, batch_size=None, input_tokens=128, max_new_tokens=32, return_logprob=False
    )
    run(router, 200, body, info, in_flight)  # warm-up: tables, label children
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        run(router, n, body, info, in_flight)
        best = min(best, time.process_time() - t0)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        run(router, n, body, info, in_flight)
        prof.disable()
        print(f"--- cProfile, {policy}, {n} requests")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--policies",
        nargs="+",
        default=["ecoroute", "round_robin"],
        help="router --policy values to time (both sides)",
    )
    ap.add_argument("--requests", type=int, default=3000, help="requests per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is shown")
    ap.add_argument(
        "--in-flight", type=int, default=32, help="requests open at a time (closed-loop clients)"
    )
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    args = ap.parse_args()
    configure_logging(level="info")  # as the router runs: no debug line per request
    for policy in args.policies:
        us = asyncio.run(measure(policy, args.requests, args.repeats, args.profile, args.in_flight))
        print(
            f"{policy}: {us:.1f} us/request (routing path, {args.in_flight} in flight,"
            f" CPU, best of {args.repeats})"
        )


if __name__ == "__main__":
    main()
