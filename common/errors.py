"""The project's short error tree. Vendor errors are mapped onto it at the adapters."""

from __future__ import annotations


class VoltanaError(Exception):
    """Base of every error voltana raises on purpose; the CLI prints it without a traceback."""


class ConfigError(VoltanaError):
    """A configuration file, flag or KV value that cannot be used."""


class BusError(VoltanaError):
    """The NATS bus could not be reached or refused us."""

    def __init__(self, message: str, *, servers: list[str] | None = None) -> None:
        super().__init__(message)
        self.servers = servers or []


class NatsServerError(VoltanaError):
    """The embedded nats-server could not be found or started."""


class GpuError(VoltanaError):
    """A GPU backend call failed (NVML or emulated).

    ``code`` is the backend's error name (e.g. ``NVML_ERROR_NO_PERMISSION``).
    """

    def __init__(self, message: str, *, gpu: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.gpu = gpu
        self.code = code


class UpstreamError(VoltanaError):
    """An SGLang worker answered with an error or did not answer."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
