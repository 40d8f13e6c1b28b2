"""The benchmark's registry: the served registry plus the full-size random-weight architectures.

Those architectures (``random/sd-turbo-arch``, ``random/sdxl-turbo-arch``, ...) are for measuring only:
a client that could name one would make the engine build a full-size random SDXL (minutes of CPU,
GBs of memory, evicting the real models). So they are not in the served ``models.json``; the benchmark
writes a registry file with both and points its raw engine and its server at it (``T2I_REGISTRY``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from t2i_core.common.registry import registry_path

BENCH_MODELS = Path(__file__).resolve().with_name("models.json")


def bench_registry_file(base: Path | None = None) -> Path:
    """A registry file: ``base`` (the served registry) with the benchmark's models added."""
    served = json.loads(Path(base or registry_path()).read_text(encoding="utf-8"))
    extra = json.loads(BENCH_MODELS.read_text(encoding="utf-8"))["models"]
    known = {m["id"] for m in served["models"]}
    served["models"] += [m for m in extra if m["id"] not in known]
    folder = Path(os.environ.get("TMPDIR", tempfile.gettempdir()))
    out = folder / f"t2i-bench-registry-{os.getpid()}.json"
    out.write_text(json.dumps(served, indent=2), encoding="utf-8")
    return out
