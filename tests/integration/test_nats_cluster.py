"""The stream and the bucket on a three-node cluster: created replicated, never downgraded.

Also the event log's limits on one server: an oversized event is refused by the
stream without pushing anything out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from actuator_helpers import ROOT
from nats_cluster import nats_args, nats_cluster, urls
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.common.ports import free_port
from voltana.schemas import subjects


def nats_init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voltana", "--log-level", "warning", "nats", "init", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_init_creates_three_replicas_and_never_downgrades(tmp_path: Path) -> None:
    with nats_cluster(tmp_path) as servers:
        first = nats_init("--replicas", "3", *nats_args(servers))
        assert first.returncode == 0, first.stderr
        assert "VOLTANA: created with 3 replica(s)" in first.stdout
        assert "voltana-config: created with 3 replica(s)" in first.stdout

        # other settings, as a start with defaults would ask: nothing changes, all is said
        again = nats_init("--replicas", "1", "--stream-max-age-s", "3600", *nats_args(servers))
        assert again.returncode == 2, again.stderr
        assert "replicas 3 (asked 1; never lowered)" in again.stdout
        assert "max_age 86400.0 (asked 3600.0)" in again.stdout

        bus = await Bus.connect(servers=urls(servers), name="check")
        try:
            ensured = await bus.ensure_event_stream()  # the defaults: one replica
            assert ensured.replicas == 3 and not ensured.created
            assert any("never lowered" in m for m in ensured.mismatches)
            stream = await bus.js.stream_info(subjects.STREAM_NAME)
            bucket = await bus.js.stream_info(f"KV_{subjects.KV_BUCKET}")
            assert stream.config.num_replicas == 3 and bucket.config.num_replicas == 3
            assert stream.config.max_age == 86400.0
            assert stream.cluster is not None and len(stream.cluster.replicas or []) == 2

            # a bucket a service creates on first use follows the event log: three copies
            await bus.kv("voltana-other")
            other = await bus.js.stream_info("KV_voltana-other")
            assert other.config.num_replicas == 3
        finally:
            await bus.close()

        # --apply changes the limits, still never the replicas downward
        applied = nats_init(
            "--replicas", "1", "--stream-max-age-s", "3600", "--apply", *nats_args(servers)
        )
        assert applied.returncode == 2 and "updated max_age" in applied.stdout
        assert "replicas 3 (asked 1; never lowered)" in applied.stdout


async def test_stream_refuses_oversized_events(nats_server: NatsServer) -> None:
    bus = await Bus.connect(servers=[nats_server.url])
    try:
        await bus.ensure_event_stream()
        subject = subjects.telemetry_gpu("n1", 0)
        await bus.nc.publish(subject, b"x" * 100)
        await bus.nc.publish(subject, b"x" * (100 * 1024))  # above the 64 KiB max_msg_size
        await bus.js.publish(subject, b"x" * 100)  # acked: the stream has seen all three
        info = await bus.js.stream_info(subjects.STREAM_NAME)
        assert info.state.messages == 2
        assert info.config.max_msg_size == 64 * 1024
        assert info.config.max_msgs_per_subject == 25 * 86400
        assert info.config.max_bytes == 150 * 86400 * 400 * 1.25
    finally:
        await bus.close()


async def test_shipped_three_node_config_forms_a_replicated_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/nats/cluster/nats-{1,2,3}.conf on loopback: routes, users, replicated state."""
    deploy = ROOT / "deploy" / "nats"
    for var in ("ACTUATOR", "TELEMETRY", "FREQCTL", "ROUTER", "VIEWER", "ADMIN", "ROUTE"):
        monkeypatch.setenv(f"VOLTANA_NATS_{var}_PASSWORD", f"pw-{var.lower()}")
    route_ports = [free_port() for _ in range(3)]
    servers = []
    try:
        for i, port in enumerate(route_ports):
            home = tmp_path / f"nats-{i + 1}"
            home.mkdir()
            others = [f'"nats://route:pw-route@127.0.0.1:{p}"' for p in route_ports if p != port]
            text = (deploy / "cluster" / f"nats-{i + 1}.conf").read_text()
            text = text.replace("0.0.0.0:6222", f"127.0.0.1:{port}")
            text = text.replace("/var/lib/voltana-nats", str(home / "js"))
            text = text.replace("$VOLTANA_NATS_ROUTE_A", others[0])
            text = text.replace("$VOLTANA_NATS_ROUTE_B", others[1])
            (home / "nats-server.conf").write_text(text)
            (home / "authorization.conf").write_text((deploy / "authorization.conf").read_text())
            server = NatsServer(jetstream=False, extra_args=["-c", str(home / "nats-server.conf")])
            servers.append(server)
            server.start()
        admin = ["--nats-user", "admin", "--nats-password", "pw-admin"]
        init = nats_init("--replicas", "3", *admin, *nats_args(servers))
        assert init.returncode == 0, init.stdout + init.stderr
        assert "VOLTANA: created with 3 replica(s)" in init.stdout
        bus = await Bus.connect(servers=urls(servers), user="admin", password="pw-admin")
        try:
            info = await bus.js.stream_info(subjects.STREAM_NAME)
            assert info.cluster is not None
            names = {info.cluster.leader} | {p.name for p in info.cluster.replicas or []}
            assert names == {"nats-1", "nats-2", "nats-3"}
        finally:
            await bus.close()
    finally:
        for server in servers:
            server.close()
