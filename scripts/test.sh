#!/usr/bin/env bash
# Set up the environment, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The page's browser test drives Debian's Chromium; install it where we may (CI runs as root).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
  apt_chromium || { apt-get update -qq && apt_chromium; } \
    || echo "test: could not install chromium; the browser test will be skipped" >&2
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
