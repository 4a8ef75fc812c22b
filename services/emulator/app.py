"""The emulator's HTTP shell: SGLang API + admin on --port, bootstrap server on the PD port."""

from __future__ import annotations

import structlog
from aiohttp import web
from voltana.services.emulator import pd
from voltana.services.emulator.admin import add_admin_routes
from voltana.services.emulator.api import add_not_found_route, add_sglang_routes
from voltana.services.emulator.config import EmulatorConfig
from voltana.services.emulator.server import EmulatorServer
from voltana.services.runner import ServiceContext

__all__ = ["EmulatorApp"]

log = structlog.get_logger("voltana.emulator")


class EmulatorApp(ServiceContext):
    """One emulated worker listening on ``config.host:config.port`` (async context manager)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.server = EmulatorServer(config)
        self._runners: list[web.AppRunner] = []

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        add_sglang_routes(app, self.server)
        add_admin_routes(app, self.config.admin_token)
        add_not_found_route(app)
        return app

    async def start(self) -> None:
        c = self.config
        await self.server.start()
        try:
            runner = web.AppRunner(self.build_app(), handler_cancellation=True, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, c.host, c.port).start()
            if c.role == "prefill":
                boot = web.AppRunner(pd.bootstrap_app(self.server.rooms), access_log=None)
                await boot.setup()
                self._runners.append(boot)
                await web.TCPSite(boot, c.host, c.bootstrap_port).start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "emulator_started",
            role=c.role,
            gpu=c.gpu,
            model=c.model,
            tp=c.tp,
            url=f"http://{c.host}:{c.port}",
            bootstrap_port=c.bootstrap_port if c.role == "prefill" else None,
            kv_capacity_tokens=self.server.engine.config.kv_capacity_tokens,
            sglang_version=c.sglang_version,
        )

    async def stop(self) -> None:
        for r in reversed(self._runners):
            await r.cleanup()
        self._runners.clear()
        await self.server.stop()
