"""Command-line options shared by every service: how to reach NATS.

Precedence: flags > ``VOLTANA_*`` environment variables > defaults.
"""

from __future__ import annotations

import argparse
import os

from voltana.bus.client import BusOptions
from voltana.common.errors import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def add_nats_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--nats`` and the authentication/TLS flags to a subcommand parser."""
    g = parser.add_argument_group("NATS connection")
    g.add_argument(
        "--nats",
        action="append",
        default=None,
        metavar="URL",
        help=f"NATS server URL, repeatable (env VOLTANA_NATS_URL, comma-separated; default {DEFAULT_NATS_URL})",
    )
    g.add_argument("--nats-user", default=None, help="user (env VOLTANA_NATS_USER)")
    g.add_argument("--nats-password", default=None, help="password (env VOLTANA_NATS_PASSWORD)")
    g.add_argument("--nats-token", default=None, help="token (env VOLTANA_NATS_TOKEN)")
    g.add_argument("--nats-creds", default=None, help="credentials file (env VOLTANA_NATS_CREDS)")
    g.add_argument("--nats-nkey", default=None, help="nkey seed file (env VOLTANA_NATS_NKEY)")
    g.add_argument("--nats-tls-ca", default=None, help="CA file for TLS (env VOLTANA_NATS_TLS_CA)")
    g.add_argument(
        "--nats-tls-cert", default=None, help="client certificate (env VOLTANA_NATS_TLS_CERT)"
    )
    g.add_argument("--nats-tls-key", default=None, help="client key (env VOLTANA_NATS_TLS_KEY)")
    g.add_argument(
        "--nats-inbox-prefix",
        default=None,
        help="subject prefix of this client's reply inboxes, e.g. _INBOX_<user> where the "
        "server lets each user hear only its own (env VOLTANA_NATS_INBOX_PREFIX; "
        "default _INBOX)",
    )


def _pick(value: str | None, env: str) -> str | None:
    return value if value is not None else os.environ.get(env) or None


def bus_options_from_args(args: argparse.Namespace, *, name: str) -> BusOptions:
    """Build BusOptions from the flags added by :func:`add_nats_args` and the environment."""
    servers = getattr(args, "nats", None)
    if not servers:
        env = os.environ.get("VOLTANA_NATS_URL")
        servers = [s.strip() for s in env.split(",") if s.strip()] if env else [DEFAULT_NATS_URL]
    return BusOptions(
        servers=list(servers),
        name=name,
        user=_pick(getattr(args, "nats_user", None), "VOLTANA_NATS_USER"),
        password=_pick(getattr(args, "nats_password", None), "VOLTANA_NATS_PASSWORD"),
        token=_pick(getattr(args, "nats_token", None), "VOLTANA_NATS_TOKEN"),
        creds_file=_pick(getattr(args, "nats_creds", None), "VOLTANA_NATS_CREDS"),
        nkeys_seed_file=_pick(getattr(args, "nats_nkey", None), "VOLTANA_NATS_NKEY"),
        tls_ca_file=_pick(getattr(args, "nats_tls_ca", None), "VOLTANA_NATS_TLS_CA"),
        tls_cert_file=_pick(getattr(args, "nats_tls_cert", None), "VOLTANA_NATS_TLS_CERT"),
        tls_key_file=_pick(getattr(args, "nats_tls_key", None), "VOLTANA_NATS_TLS_KEY"),
        inbox_prefix=inbox_prefix(
            _pick(getattr(args, "nats_inbox_prefix", None), "VOLTANA_NATS_INBOX_PREFIX")
        ),
    )


def inbox_prefix(value: str | None) -> str:
    """A reply-inbox prefix: plain subject tokens (no wildcard, space or empty token).

    Raises:
        ConfigError: the prefix could not be a subject.
    """
    if value is None:
        return "_INBOX"
    tokens = value.split(".")
    if any(not t or any(c in t for c in "*> \t\r\n") for t in tokens):
        raise ConfigError(
            f"--nats-inbox-prefix {value!r} is not a subject prefix (tokens without "
            "'*', '>' or spaces, no empty token)"
        )
    return value
