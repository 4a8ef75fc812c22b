"""PD rendezvous lookups on a long run: microseconds per RoomTable.get with many rooms.

Each PD request looks its room up about three times on the prefill server's
event loop; a long run at 100 req/s makes tens of thousands of rooms.

    .venv/bin/python bench/emulator_pd_rooms.py
"""

from __future__ import annotations

import asyncio
import time

from voltana.services.emulator import pd


async def main() -> None:
    print("| rooms already made | us per lookup |")
    print("|---|---|")
    for n in (1_000, 10_000, 30_000):
        table = pd.RoomTable(ttl_s=600.0)
        for i in range(n):
            table.get(i)
        t0 = time.perf_counter()
        for i in range(n, n + 200):
            table.get(i)
        print(f"| {n:,} | {(time.perf_counter() - t0) / 200 * 1e6:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
