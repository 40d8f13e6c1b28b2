#!/usr/bin/env bash
# Set up (first run only) and start the server: `bash scripts/serve.sh [--port 3000] [bentoml serve options]`.
# Works offline: without sd-turbo in the local Hugging Face cache it serves the built-in tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export BENTOML_CONFIG=${BENTOML_CONFIG:-$PWD/configuration.yaml}
exec .venv/bin/bentoml serve service:API "$@"
