#!/usr/bin/env bash
# Set up ./.venv and run the gateway on embedded defaults (SQLite ledger under
# ./.tokenomy/, built-in simulated models, http://127.0.0.1:8787). Extra
# arguments go to `tokenomy serve` (e.g. --port 9000, --config tokenomy.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/tokenomy serve "$@"
