#!/usr/bin/env bash
# Build the Bento: put the built-in tiny model into the BentoML model store (offline), then
# `bentoml build`. Extra arguments go to `bentoml build` (e.g. `-f bentofile.rocm.yaml`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m t2i_core pull builtin/tiny-sd
exec .venv/bin/bentoml build "$@" .
