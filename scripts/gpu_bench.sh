#!/usr/bin/env bash
# The GPU benchmark in one command, for the first machine with an NVIDIA GPU at hand:
#
#   bash scripts/gpu_bench.sh                 # builds the random-weight architectures, runs, writes gpu-bench/
#   bash scripts/gpu_bench.sh --budget-s 300  # start no run after 300 s (default 450: under 8 minutes on an H100)
#   bash scripts/gpu_bench.sh --only 1,2      # some runs of the plan (t2i_core/devtools/bench/gpu.py: PLAN)
#   bash scripts/gpu_bench.sh --dry-run       # the same steps on the CPU with the tiny model (a rehearsal)
#
# SD-Turbo and SDXL-Turbo architectures (random weights: the real models' compute, no download),
# 512 px, 1 step, bfloat16, the model's VAE and a tiny VAE, with and without torch.compile; raw (the
# engine in process) at batch 1/8/32 and served (bentoml serve) at 1/8/32 clients. FLUX.1 [schnell]
# (1024 px, 4 steps, bfloat16 and float8 weights) and Z-Image-Turbo (1024 px, 9 steps) architectures,
# raw at batch 1/4 and served at 1/8 clients. Writes gpu-bench/gpu-bench.json and gpu-bench/gpu-bench.md
# (the table for docs/performance.md). Each architecture is built before its first run (3.5 GB for
# SD-Turbo, 8 GB for SDXL-Turbo, 33 GB for FLUX.1 [schnell], 20 GB for Z-Image-Turbo) under
# $T2I_CACHE_DIR (default ~/.cache/t2i-server); later runs reuse them, except a DiT architecture built by
# this run, removed after its last run (a 64 GB disk holds one at a time beside the others).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done
if [ "$dry" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_bench.sh: no nvidia-smi here; this run is for a machine with an NVIDIA GPU (--dry-run rehearses it on the CPU)" >&2
  exit 2
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
if [ "$dry" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  .venv/bin/python -c 'import sys, torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "CUDA", torch.version.cuda, "device available:", ok); sys.exit(0 if ok else 3)' || {
    echo "gpu_bench.sh: torch in .venv has no CUDA; install its CUDA build (on Linux x86-64, .venv/bin/pip install --force-reinstall torch==2.13.0 gets it from PyPI)" >&2
    exit 3
  }
fi
# compiled graphs are cached between the raw engine and the server of a run (and between runs)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/t2i-inductor-cache}
exec .venv/bin/python -m t2i_core.devtools.bench.gpu "$@"
