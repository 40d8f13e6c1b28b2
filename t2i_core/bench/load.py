"""A load generator: C concurrent HTTP clients (asyncio, one connection each) on loopback.

aiohttp rather than httpx: on a 2-core machine the client shares the CPU with the server, and
httpx used three times the CPU per request (10% of a core vs 3.5% at 16 clients), which showed up
as lower server throughput. The generator should measure the server, not itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def images_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _run(url: str, body: Callable[[int], dict], concurrency: int, total: int, timeout: float) -> LoadResult:
    import aiohttp

    result = LoadResult(concurrency, total, 0.0)
    counter = iter(range(total))
    headers = {"content-type": "application/json"}

    async def client() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            for i in counter:
                started = time.perf_counter()
                async with http.post(url, data=json.dumps(body(i)), headers=headers) as r:
                    await r.read()
                    status = r.status
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(url: str, body: Callable[[int], dict], concurrency: int, total: int, timeout: float = 300) -> LoadResult:
    return asyncio.run(_run(url, body, concurrency, total, timeout))
