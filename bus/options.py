"""How to reach NATS: connection options, reconnect backoff and the TLS context."""

from __future__ import annotations

import random
import ssl

import msgspec
from voltana.bus.outbox import OutboxSettings


class BusOptions(msgspec.Struct, kw_only=True):
    """How to reach NATS. Every field has a working default for a local server.

    ``reconnect_*`` set the exponential backoff between reconnect attempts;
    ``max_reconnect_attempts`` -1 retries forever once connected; the first
    connection tries each server ``connect_attempts`` times, then fails with a
    clear :class:`BusError`.
    """

    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    name: str = "voltana"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkeys_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    # Where replies to this client's requests arrive (JetStream acks, KV reads). A role
    # user whose server permissions allow only its own prefix (``_INBOX_<user>.>``, as
    # deploy/nats/authorization.conf does) cannot hear any other client's replies.
    inbox_prefix: str = "_INBOX"
    connect_timeout_s: float = 2.0
    connect_attempts: int = 3
    allow_reconnect: bool = True
    max_reconnect_attempts: int = -1
    reconnect_initial_s: float = 0.1
    reconnect_max_s: float = 2.0
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    outbox_close_timeout_s: float = 5.0


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter, capped: the wait before reconnect ``attempt``."""
    ceiling = min(max_s, initial_s * (2 ** max(0, attempt)))
    return rng.uniform(ceiling / 2, ceiling)


def tls_context(opts: BusOptions) -> ssl.SSLContext | None:
    if not (opts.tls_ca_file or opts.tls_cert_file):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.tls_ca_file)
    if opts.tls_cert_file:
        ctx.load_cert_chain(opts.tls_cert_file, opts.tls_key_file)
    return ctx
