"""The OpenVINO backend's disk cache of converted models (IR), shared by workers, replicas and restarts.

A folder per converted module, named by ``cache_key``: the component, a hash of the module's weights
(``fingerprint``), of what decides its graph besides them (its class, its config) and of the versions of
the libraries that trace and convert it (torch, diffusers, transformers, OpenVINO, CONVERTER_VERSION).

Writing one is safe against crashes and concurrent writers:

- check-then-convert runs under an exclusive ``fcntl.flock`` on ``.<folder>.lock`` beside it, so two
  engine workers that load the same model convert it once (the second waits and reuses the folder);
- the IR is written to a staging folder ``.<folder>-XXXX``, fsynced, a ``complete.json`` marker (the
  files' sizes) written and fsynced last, then renamed into place; a folder is trusted only when its
  marker is there and the sizes match. Staging folders left by a killed conversion are deleted under
  the lock (only the lock's holder stages, so any there are dead);
- a trusted folder that still fails to compile is deleted and converted once more (``load``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("t2i.openvino")

#: bump when what is converted (the wrappers' inputs and outputs) changes: old IR files are not reused
CONVERTER_VERSION = 1
MARKER = "complete.json"
#: config keys that name where a model came from, not what it computes
_PROVENANCE = ("_name_or_path", "_commit_hash", "_diffusers_version", "transformers_version")


def fingerprint(module: Any) -> str:
    """A hash of the module's weights: every parameter's and buffer's name, shape and dtype, its sum in
    float64 and a strided sample of 64 values (a full hash of a 3.4 GB UNet takes seconds; this reads
    each value once, in torch's threads)."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if flat.numel() and tensor.dtype.is_floating_point:
                digest.update(repr(float(flat.sum(dtype=torch.float64))).encode())
                digest.update(flat[:: max(1, flat.numel() // 64)].to(torch.float64).numpy().tobytes())
            elif flat.numel():
                digest.update(flat[:: max(1, flat.numel() // 64)].numpy().tobytes())
    return digest.hexdigest()[:24]


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in raw.items() if k not in _PROVENANCE}


def graph_fingerprint(module: Any, config_owner: Any = None) -> str:
    """A hash of what shapes the converted graph besides the weights: the module's class, the config of
    ``config_owner`` (default: the module; the VAE for its decoder) and the libraries' versions."""
    import diffusers
    import openvino
    import torch
    import transformers

    owner = module if config_owner is None else config_owner
    parts = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "owner": f"{type(owner).__module__}.{type(owner).__qualname__}",
        "config": _config_dict(getattr(owner, "config", None)),
        "versions": [torch.__version__, diffusers.__version__, transformers.__version__, openvino.__version__,
                     CONVERTER_VERSION],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_key(component: str, module: Any, config_owner: Any = None) -> str:
    """The folder name of ``module``'s IR: the component, the weights' and the graph's fingerprints."""
    return f"{component}-{fingerprint(module)}-{graph_fingerprint(module, config_owner)}"


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder``'s conversion, across processes (and threads: a file per holder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_staging(folder: Path) -> list[Path]:
    """Delete ``folder``'s staging folders (call under ``locked``: a live one belongs to the holder)."""
    stale = [p for p in folder.parent.glob(f".{folder.name}-*") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed a staging folder left by an interrupted conversion: %s", path)
    return stale


def complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole IR: its marker, written last, and every file at the size it names."""
    try:
        sizes = json.loads((folder / MARKER).read_text())
        return bool(sizes) and all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, AttributeError):
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(write: Callable[[Path], None], folder: Path) -> None:
    """Run ``write(staging)`` and move the staging folder to ``folder`` once its files are on disk, marker
    last (call under ``locked``; whatever was at ``folder`` is replaced)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        for name in sizes:
            _fsync(staging / name)
        (staging / MARKER).write_text(json.dumps(sizes, sort_keys=True))
        _fsync(staging / MARKER)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is readable like the rest of T2I_CACHE_DIR
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        _fsync(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
