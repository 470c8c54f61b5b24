#!/usr/bin/env bash
# Install into .venv and start the dev stack: embedded Temporal + Web UI, worker, gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev-server]"
exec .venv/bin/nexpo-workflows dev
