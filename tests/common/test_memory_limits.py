"""The device's memory as the engine sees it: a container's cgroup limit (v2 and v1), the tightest on
the way up to the root, its usage less the page cache no process maps (active or inactive: the kernel
drops it before it kills)."""

from __future__ import annotations

from pathlib import Path

from t2i_core.common.memory_limits import cgroup_memory

GIB = 2**30


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)


def test_cgroup_v2_the_tightest_limit_up_the_tree_less_the_page_cache(tmp_path):
    root = tmp_path / "cg"
    write(root, cgroup__controllers="cpu memory")
    write(root / "box", memory__max=str(4 * GIB), memory__current=str(3 * GIB), memory__stat="anon 1\ninactive_file 805306368\nactive_file 536870912\nfile_mapped 268435456\n")
    write(root / "box" / "engine", memory__max="max", memory__current=str(GIB), memory__stat="inactive_file 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/box/engine\n")
    limit = cgroup_memory(root, proc)
    assert limit is not None and limit.limit == 4 * GIB and limit.usage == 2 * GIB and limit.free == 2 * GIB


def test_cgroup_v1_memory_hierarchy_and_no_limit(tmp_path):
    root = tmp_path / "cg"
    unlimited = str(9223372036854771712)  # v1's "no limit"
    write(root / "memory", memory__limit_in_bytes=unlimited, memory__usage_in_bytes=str(GIB))
    write(root / "memory" / "docker" / "abc", memory__limit_in_bytes=str(2 * GIB), memory__usage_in_bytes=str(GIB),
          memory__stat="total_inactive_file 134217728\ntotal_active_file 134217728\n")
    proc = tmp_path / "cgroup"
    proc.write_text("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    limit = cgroup_memory(root, proc)
    assert limit is not None and limit.limit == 2 * GIB and limit.usage == GIB - 256 * 2**20
    proc.write_text("4:memory:/\n")
    assert cgroup_memory(root, proc) is None  # the root's "no limit"


def test_inside_a_cgroup_namespace_the_mount_is_the_containers_own(tmp_path):
    root = tmp_path / "cg"
    write(root, cgroup__controllers="memory", memory__max=str(GIB), memory__current=str(GIB // 4), memory__stat="")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/hidden\n")  # a path the namespace does not show
    limit = cgroup_memory(root, proc)
    assert limit is not None and limit.limit == GIB and limit.free == GIB * 3 // 4
