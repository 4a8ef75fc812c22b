"""freqctl starts and keeps its flags while the KV bucket cannot answer, then picks it up.

The NATS server first runs without JetStream (what a bucket without a leader
looks like to a client: every KV call fails); freqctl must start anyway, with
the configs from its command line, and keep retrying. Once the server comes
back with JetStream the bucket is opened and a live config change applies.
"""

from __future__ import annotations

from pathlib import Path

from helpers import wait_for
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.predictor.profile import default_profile
from voltana.schemas import subjects
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.core import InstanceSpec
from voltana.services.freqctl.service import FreqctlService


async def test_freqctl_runs_on_flags_until_the_bucket_answers(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js", jetstream=False)
    server.start()
    try:
        opts = BusOptions(servers=[server.url], reconnect_initial_s=0.05, reconnect_max_s=0.2)
        bus = await Bus.connect(opts)
        base = ControllerConfig(policy="voltana")
        freqctl = FreqctlService(bus, [InstanceSpec("d0", "n1", (0,))], default_profile(), base)
        freqctl.kv.retry_max_s = 0.2
        await freqctl.start()  # no bucket to be had: starts anyway
        try:
            await wait_for(lambda: freqctl.counts["kv_retries"] >= 2, timeout_s=30)
            assert freqctl.instances["d0"].config.policy == "voltana"

            server.jetstream = True
            server.restart()  # same port, now with JetStream: the bucket can be made
            await wait_for(lambda: freqctl.kv._watcher is not None, timeout_s=30)
            client = await Bus.connect(opts)
            try:
                await client.kv_put_json(
                    subjects.kv_controller_key("d0"),
                    ControllerConfig(policy="static", static_clock_mhz=1005),
                )
                await wait_for(
                    lambda: freqctl.instances["d0"].config.policy == "static", timeout_s=30
                )
            finally:
                await client.close()
        finally:
            await freqctl.stop()
            await bus.close()
    finally:
        server.close()
