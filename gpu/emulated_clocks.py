"""Emulated clock backend: the emulator's admin HTTP (``/voltana/gpus``).

One backend may front several emulator servers (one per instance on the node);
GPU indices are node-global, so each index maps to the server that owns it.
Blocking HTTP (stdlib) on purpose: the backend protocol is synchronous and the
async shells call it from a worker thread, like NVML.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from voltana.common.errors import GpuError
from voltana.gpu.backends import BackendName, check_gpu, check_supported


class EmulatedBackend:
    """Locks clocks of emulated GPUs over the emulator admin HTTP.

    Args:
        urls: base URLs of emulator servers, e.g. ``http://127.0.0.1:30000``.
        gpus: indices to control (None: every GPU the servers report).
        timeout_s: per-request timeout.

    Raises:
        GpuError: a server is unreachable, or a requested index is served by none.
    """

    name: BackendName = "emulated"

    def __init__(
        self, urls: Sequence[str], *, gpus: Sequence[int] | None = None, timeout_s: float = 2.0
    ) -> None:
        self._timeout_s = timeout_s
        self._mu = threading.Lock()
        self._url_of: dict[int, str] = {}
        self._supported: dict[int, list[int]] = {}
        self._locked: dict[int, int | None] = {}
        for raw in urls:
            url = raw.rstrip("/")
            for g in self._request(url, "GET", "/voltana/gpus", None, None)["gpus"]:
                index = int(g["index"])
                if gpus is not None and index not in gpus:
                    continue
                if index in self._url_of:
                    raise GpuError(
                        f"GPU {index} is served by both {self._url_of[index]} and {url}",
                        gpu=index,
                        code="DUPLICATE_GPU",
                    )
                self._url_of[index] = url
                self._remember(g)
        if gpus is not None:
            missing = sorted(set(gpus) - set(self._url_of))
            if missing:
                raise GpuError(
                    f"GPUs {missing} are not served by any emulator at {list(urls)}",
                    gpu=missing[0],
                    code="UNKNOWN_GPU",
                )

    def _remember(self, g: dict[str, Any]) -> None:
        index = int(g["index"])
        self._supported[index] = sorted(
            {int(c) for c in g["supported_sm_clocks_mhz"]}, reverse=True
        )
        locked = g.get("locked_clock_mhz")
        self._locked[index] = None if locked is None else int(locked)

    def _request(
        self, url: str, method: str, path: str, body: dict[str, Any] | None, gpu: int | None
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                detail = ""
            code = {400: "INVALID_ARGUMENT", 404: "UNKNOWN_GPU"}.get(exc.code, f"HTTP_{exc.code}")
            raise GpuError(
                f"emulator {url} {method} {path}: HTTP {exc.code} {detail}".rstrip(),
                gpu=gpu,
                code=code,
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise GpuError(
                f"emulator {url} {method} {path} failed: {exc}", gpu=gpu, code="UNREACHABLE"
            ) from exc

    def gpu_indices(self) -> list[int]:
        return sorted(self._url_of)

    def supported_sm_clocks_mhz(self, gpu: int) -> list[int]:
        check_gpu(gpu, list(self._url_of))
        return list(self._supported[gpu])

    def set_locked_sm_clock_mhz(self, gpu: int, mhz: int) -> bool:
        check_supported(gpu, mhz, self.supported_sm_clocks_mhz(gpu))
        with self._mu:
            if self._locked.get(gpu) == mhz:
                return False
            g = self._request(
                self._url_of[gpu],
                "POST",
                f"/voltana/gpus/{gpu}/locked_clocks",
                {"min_mhz": mhz, "max_mhz": mhz},
                gpu,
            )
            self._locked[gpu] = (
                mhz if g.get("locked_clock_mhz") is None else int(g["locked_clock_mhz"])
            )
            return True

    def reset_locked_clocks(self, gpu: int) -> bool:
        check_gpu(gpu, list(self._url_of))
        with self._mu:
            if self._locked.get(gpu, 0) is None:
                return False
            self._request(
                self._url_of[gpu], "DELETE", f"/voltana/gpus/{gpu}/locked_clocks", None, gpu
            )
            self._locked[gpu] = None
            return True

    def locked_clock_mhz(self, gpu: int) -> int | None:
        check_gpu(gpu, list(self._url_of))
        return self._locked[gpu]

    def refresh(self) -> None:
        """Re-read every GPU's state from its server (locks made by others become visible)."""
        for url in sorted(set(self._url_of.values())):
            for g in self._request(url, "GET", "/voltana/gpus", None, None)["gpus"]:
                if int(g["index"]) in self._url_of:
                    self._remember(g)

    def close(self) -> None:
        return None
