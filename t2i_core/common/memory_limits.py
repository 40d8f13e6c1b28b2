"""How much memory the engine's device has, in all and free now.

On CUDA: the GPU's total memory, and what ``torch.cuda.mem_get_info`` says is free plus what torch's
caching allocator holds unused (free for this process). On the CPU: the RAM, or the container's
memory limit where one is set (a cgroup's ``memory.max`` / ``memory.limit_in_bytes``, the smallest
on the way up to the root: a container's limit is what counts, not the host's RAM), and free: the
smaller of what the kernel says is available and what is left under that limit (its usage, less the
page cache that no process maps, which the kernel drops before it kills: reading a model's 2.6 GB of
weights charges them to the container as "active" file pages, and counting them left 160 MB "free"
of a 4 GiB limit where 1.2 GB could be used).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: values a cgroup uses for "no limit" (v2 "max"; v1 a page-rounded 2**63 - 1)
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class CgroupMemory:
    """A cgroup's memory limit and its usage less the page cache no process maps (bytes)."""

    limit: int
    usage: int

    @property
    def free(self) -> int:
        return max(0, self.limit - self.usage)


def _read_int(path: Path) -> int | None:
    try:
        raw = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if raw == "max":
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return None if value >= _NO_LIMIT else value


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and its v1 memory cgroup path (from /proc/self/cgroup)."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text(encoding="ascii").splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup folders from this process's up to the mount point; inside a container whose cgroup
    namespace hides the path, the mount point alone."""
    folder = mount / path.lstrip("/")
    if not folder.is_dir():
        return [mount]
    out = [folder]
    while folder != mount and mount in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


def cgroup_memory(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> CgroupMemory | None:
    """The tightest memory limit of this process's cgroups (v2, else v1), with that cgroup's usage;
    None where no limit is set (or no cgroup file system is there)."""
    v2, v1 = _own_cgroups(proc_cgroup)
    candidates: list[CgroupMemory] = []
    if v2 is not None and (root / "cgroup.controllers").exists():
        for folder in _ancestors(root, v2):
            limit = _read_int(folder / "memory.max")
            if limit is not None:
                stat = folder / "memory.stat"
                cache = _stat(stat, "inactive_file") + _stat(stat, "active_file") - _stat(stat, "file_mapped")
                usage = (_read_int(folder / "memory.current") or 0) - max(0, cache)
                candidates.append(CgroupMemory(limit, max(0, usage)))
    if v1 is not None and (root / "memory").is_dir():
        for folder in _ancestors(root / "memory", v1):
            limit = _read_int(folder / "memory.limit_in_bytes")
            if limit is not None:
                stat = folder / "memory.stat"
                cache = (_stat(stat, "total_inactive_file") + _stat(stat, "total_active_file")
                         - _stat(stat, "total_mapped_file"))
                usage = (_read_int(folder / "memory.usage_in_bytes") or 0) - max(0, cache)
                candidates.append(CgroupMemory(limit, max(0, usage)))
    return min(candidates, key=lambda c: c.free, default=None)


def total_bytes(device: str) -> int:
    """All the memory of ``device``: the GPU's, or on the CPU the RAM or the container's limit."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    import psutil

    ram = int(psutil.virtual_memory().total)
    container = cgroup_memory()
    return min(ram, container.limit) if container is not None else ram


def free_bytes(device: str) -> int | None:
    """Memory of ``device`` this process can take now; None where it cannot be told (MPS)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        cached = torch.cuda.memory_reserved(torch.device(device)) - torch.cuda.memory_allocated(torch.device(device))
        return int(free + cached)
    if device.startswith("mps"):
        return None
    import psutil

    available = int(psutil.virtual_memory().available)
    container = cgroup_memory()
    return min(available, container.free) if container is not None else available
