#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run the whole suite.
# This is the README's test command; .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services the tests use: start whichever is down (this machine has no systemd).
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
fi

# The dashboard's browser test drives Debian's Chromium through chromedriver.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -y -q chromium chromium-driver
  fi
fi

python3 -m venv .venv
# llama-cpp-python compiles from source here; its native (-march=native) build
# crashes on this CPU, so build it portable. pip caches the built wheel.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,local]"
exec .venv/bin/pytest -q "$@"
