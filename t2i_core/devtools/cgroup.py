"""A memory-limited cgroup for one child process: a container's memory limit, without a container.

Made under this process's own cgroup (v2, else the v1 memory hierarchy), removed after. Needs the
right to create cgroups there (root, or a delegated subtree); ``available()`` says whether it can.
What the child sees is what a container's process sees: its limit in ``memory.max`` /
``memory.limit_in_bytes`` (t2i_core/common/memory_limits.py reads it), and past it the kernel's
out-of-memory killer.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from t2i_core.common.memory_limits import CGROUP_ROOT, _own_cgroups


class MemoryCgroup:
    def __init__(self, folder: Path, v2: bool):
        self.folder = folder
        self.v2 = v2

    def join(self) -> None:
        """Move the calling process into this cgroup (call it in the child, e.g. as a ``preexec_fn``)."""
        (self.folder / "cgroup.procs").write_text(str(os.getpid()), encoding="ascii")

    def peak(self) -> int | None:
        """The most memory the cgroup's processes used at once (bytes)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.folder / name).read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def oom_kills(self) -> int:
        """Processes the kernel killed for exceeding the limit."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in (self.folder / name).read_text(encoding="ascii").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0


def _parent() -> tuple[Path, bool] | None:
    v2, v1 = _own_cgroups(Path("/proc/self/cgroup"))
    if v2 is not None and (CGROUP_ROOT / "cgroup.controllers").exists():
        folder = CGROUP_ROOT / v2.lstrip("/")
        try:
            if "memory" in (folder / "cgroup.subtree_control").read_text(encoding="ascii").split():
                return folder, True
        except OSError:
            pass
    if v1 is not None and (CGROUP_ROOT / "memory").is_dir():
        folder = CGROUP_ROOT / "memory" / v1.lstrip("/")
        if folder.is_dir():
            return folder, False
    return None


def available() -> bool:
    """Whether a memory cgroup can be made here (tries, and removes it)."""
    try:
        with memory_cgroup(1 << 30):
            return True
    except OSError:
        return False


@contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A new cgroup with a memory limit of ``limit`` bytes (no swap), removed at the end of the block
    (its processes must have exited by then)."""
    parent = _parent()
    if parent is None:
        raise OSError("no writable memory cgroup hierarchy for this process")
    base, v2 = parent
    folder = base / f"t2i-limit-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        if v2:
            (folder / "memory.max").write_text(str(limit), encoding="ascii")
            swap = folder / "memory.swap.max"
            if swap.exists():
                swap.write_text("0", encoding="ascii")
        else:
            (folder / "memory.limit_in_bytes").write_text(str(limit), encoding="ascii")
            swap = folder / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(limit), encoding="ascii")
                except OSError:
                    pass
        yield MemoryCgroup(folder, v2)
    finally:
        try:
            folder.rmdir()
        except OSError:
            pass
