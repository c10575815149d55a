#!/usr/bin/env bash
# The main job: registers a socket pair with a poller on each backend, waits on it as Go's
# net package would, and prints the backend chosen and the events seen. Installs
# liburing-dev first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
swift build -c release --product poller-demo 2>&1 | tail -n 1
POLLER_LOG=1 ./.build/release/poller-demo "$@"
echo "-- the process-wide poller, as runtime_poll* use it (POLLER_BACKEND=${POLLER_BACKEND:-auto}):"
POLLER_LOG=1 ./.build/release/poller-demo shared
