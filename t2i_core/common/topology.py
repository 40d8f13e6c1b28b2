"""How many API and engine workers a server runs, where each engine worker computes, and the run
folder they share.

BentoML starts ``workers`` processes of a service and gives all of them the same
``CUDA_VISIBLE_DEVICES`` (every GPU the service asked for). Each engine worker narrows it to its own
GPU before torch starts (worker k of n takes the k-th visible GPU), so that one engine process owns
one GPU. On CPU, several engine workers split the cores (``torch_threads``) instead of each taking all.

The run folder (``T2I_RUN_DIR``, set by the server) holds what the workers of one server share on its machine: the
shared state when there are several workers (``T2I_STATE=auto``: t2i_core/state/) and, with several API workers and
``T2I_IMAGE_STORE=auto``, the images behind "url" links. ``bentoml serve`` imports the service in its
main process before it starts the workers, which inherit its environment: the main process makes
the folder, the workers find it.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile

from t2i_core.common.config import Settings
from t2i_core.state.open import REDIS_SCHEMES

RUN_DIR_ENV = "T2I_RUN_DIR"
#: the share of the RAM (or container limit) an engine on the CPU may fill by default
CPU_BUDGET_SHARE = 0.9


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this process may use: those NVML finds, narrowed to ``CUDA_VISIBLE_DEVICES``
    when it is set (BentoML sets it even on a machine without a GPU: then there are none)."""
    from bentoml._internal.resource import system_resources

    found = [str(i) for i in system_resources().get("nvidia.com/gpu", [])]
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not found or listed is None:
        return found
    return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]


def engine_worker_count(settings: Settings, gpus: list[str] | None = None) -> int:
    """``T2I_ENGINE_WORKERS``, or one per visible GPU (one without a GPU)."""
    if settings.engine_workers > 0:
        return settings.engine_workers
    return max(1, len(visible_gpus() if gpus is None else gpus))


def run_folder(in_worker: bool) -> str:
    """The server's run folder: a new one in the main process (removed when it exits; made under
    ``TMPDIR``), the main process's in a worker. A value inherited from elsewhere is never reused:
    two servers must not share one."""
    if in_worker and os.environ.get(RUN_DIR_ENV):
        return os.environ[RUN_DIR_ENV]
    made = tempfile.mkdtemp(prefix="t2i-run-")
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    os.environ[RUN_DIR_ENV] = made
    return made


def server_name(run_dir: str) -> str:
    """This server's name among those sharing a state (replicas on one Redis): its host and run folder."""
    import socket

    return f"{socket.gethostname()}:{os.path.basename(run_dir)}"


def image_store_spec(settings: Settings, run_dir: str, state_spec: str = "memory") -> str:
    """``T2I_IMAGE_STORE``, with "auto" resolved: the shared state when it is Redis (replicas), memory
    for one API worker, a folder of the run folder for more."""
    if settings.image_store != "auto":
        return settings.image_store
    if state_spec.startswith(REDIS_SCHEMES):
        return "state"
    return "memory" if settings.api_workers <= 1 else f"dir:{os.path.join(run_dir, 'images')}"


def pin_engine_worker(settings: Settings, index: int, workers: int, gpus: list[str] | None = None) -> Settings:
    """The settings of engine worker ``index`` (1-based) of ``workers``: its own GPU, or its share of
    the CPU cores. Call before torch is imported (it reads ``CUDA_VISIBLE_DEVICES`` once)."""
    if workers <= 1:
        return settings
    gpus = visible_gpus() if gpus is None else gpus
    if len(gpus) > 1 and settings.device in ("auto", "cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[(index - 1) % len(gpus)]
        return settings
    if not gpus and settings.device in ("auto", "cpu"):
        # the cores and the memory budget (default: half the RAM) are shared, not each worker's whole
        threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // workers)
        budget = settings.memory_budget_bytes or cpu_memory_budget() // workers
        return dataclasses.replace(settings, torch_threads=threads, memory_budget_bytes=budget)
    return settings


def cpu_memory_budget() -> int:
    """The memory an engine on the CPU may fill with models and their activations by default: 90% of
    the RAM, or of the container's memory limit where that is smaller. What the rest of the machine
    holds (the Python runtime, the API processes, the system) is not guessed here: every batch is also
    checked against the memory actually free (engine/admission.py), which is what stops a large
    request before the kernel would kill the engine. 75% refused SD-Turbo's own 512 px in a 4 GiB
    container (3 GiB budget, 2.4 GiB of weights) that had room for 1384 px."""
    from t2i_core.common.memory_limits import total_bytes

    return int(total_bytes("cpu") * CPU_BUDGET_SHARE)
