"""CPU seconds used by the server's processes: the API workers, the engine, and the rest.

Throughput on a shared, noisy machine moves by 15% between identical runs; the CPU a process spends
per request moves far less, so it shows what a change to the per-request path costs or saves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuSample:
    api_s: float
    engine_s: float


def _role(cmdline: list[str]) -> str | None:
    if any(part.endswith("t2i_core.api.images.encoder_process") for part in cmdline):
        return "api"  # an API worker's encoder process: the API's work, in another process
    if "--service-name" not in cmdline:
        return None
    name = cmdline[cmdline.index("--service-name") + 1] if cmdline.index("--service-name") + 1 < len(cmdline) else ""
    return "engine" if name.endswith("_engine") else "api"


def server_cpu(server_pid: int) -> CpuSample:
    """CPU seconds (user + system) of the API worker(s) with their encoder processes, and of the
    engine worker, under ``server_pid``."""
    import psutil

    totals = {"api": 0.0, "engine": 0.0}
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            role = _role(child.cmdline())
            if role is not None:
                times = child.cpu_times()
                totals[role] += times.user + times.system
        except psutil.Error:  # a worker that exited meanwhile
            continue
    return CpuSample(totals["api"], totals["engine"])
