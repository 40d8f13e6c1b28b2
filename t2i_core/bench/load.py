"""A load generator: C concurrent HTTP clients (asyncio, one connection each) on loopback."""

from __future__ import annotations

import asyncio
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
    import httpx

    result = LoadResult(concurrency, total, 0.0)
    counter = iter(range(total))

    async def client() -> None:
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1)) as http:
            for i in counter:
                started = time.perf_counter()
                r = await http.post(url, json=body(i))
                await r.aread()
                result.latencies.append(time.perf_counter() - started)
                result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(url: str, body: Callable[[int], dict], concurrency: int, total: int, timeout: float = 300) -> LoadResult:
    return asyncio.run(_run(url, body, concurrency, total, timeout))
