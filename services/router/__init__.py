"""The PD router: SGLang prefill/decode dispatch with energy-aware routing (docs/router.md).

- ``policies/``: pure routing policies and ``make_policy`` (shared with the simulator).
- ``protocol``: SGLang's PD protocol as pure functions (bootstrap fields, SSE scanning).
- ``accounting``: one instance's load counters (pure; the simulator drives them too).
- ``state``: per-worker accounting, health, circuit breaker, telemetry merge -> views.
- ``routing``: decisions and their books (state, policies, metrics, bus) for dispatch.
- ``dispatch``: one request through the PD exchange (both sides, retries, failures);
  ``upstream`` (waiting on one side while watching the other), ``relay`` (streaming).
- ``server``: the aiohttp service (admission, health checks, state publishing, endpoints).
- ``busio``: the NATS link that never blocks a request; ``metrics``, ``stats``, ``config``.
- ``cli``: ``voltana router``.
"""
