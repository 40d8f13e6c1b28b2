#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite: `bash scripts/test.sh [pytest options]`.
# Tests write only under the repository and /tmp (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
