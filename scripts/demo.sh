#!/usr/bin/env bash
# The main job. Installs liburing-dev first if it is missing, builds in release mode, then:
#   1. poller-demo: a socket pair registered with a poller on each backend, waited on as Go's
#      net package would; prints the backend chosen and the events seen;
#   2. poller-echo driven by the C load generator for a few seconds on each backend
#      (connections, round trips per second, p99, every echoed byte verified);
#   3. the short echo benchmark grid (scripts/bench.sh --quick --no-install --no-http, under a
#      minute once built): poller-echo on both backends beside raw C epoll (compiled here),
#      SwiftNIO (built here from the Benchmarks/ package, ~1.5 min the first time) and Go's net
#      if `go` is installed; nothing is installed for it; the one-core points only (the
#      all-cores points would double it). --no-grid skips it. The full grid, with installs,
#      HTTP, the all-cores points and 5 interleaved repetitions, is scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
grid=1
[ "${1:-}" = "--no-grid" ] && grid=0
for product in poller-demo poller-echo poller-loadgen; do
  swift build -c release --product "$product" 2>&1 | tail -n 1
done
bin=.build/release

echo "== 1. poller-demo"
POLLER_LOG=1 "$bin/poller-demo"
echo "-- the process-wide poller, as runtime_poll* use it (POLLER_BACKEND=${POLLER_BACKEND:-auto}):"
POLLER_LOG=1 "$bin/poller-demo" shared

echo "== 2. poller-echo under load (64 connections, 64-byte ping-pong, 3 s per backend)"
cpus=$(nproc)
for backend in epoll io_uring; do
  log=$(mktemp)
  if [ "$cpus" -ge 2 ]; then taskset -c 0 "$bin/poller-echo" --backend "$backend" >"$log" 2>&1 &
  else "$bin/poller-echo" --backend "$backend" >"$log" 2>&1 & fi
  pid=$!
  port=''
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p;T;q' "$log" || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$port" ]; then
    echo "[$backend] poller-echo did not start: $(cat "$log")"
    kill "$pid" 2>/dev/null || true
    continue
  fi
  pin=""
  [ "$cpus" -ge 2 ] && pin="taskset -c 1"
  result=$($pin "$bin/poller-loadgen" --port "$port" --connections 64 --size 64 --duration 3 --warmup 1 || true)
  kill -TERM "$pid"
  wait "$pid" || true
  echo "[$backend] $(head -n 1 "$log")"
  echo "[$backend] $result"
  echo "[$backend] $(grep stopped "$log" || echo 'no final line')"
  rm -f "$log"
done

if [ "$grid" = 1 ]; then
  echo "== 3. the short echo grid (server CPU per round trip is the headline; figures of one run only)"
  report=$(mktemp --suffix=.md)
  bash scripts/bench.sh --quick --no-install --no-http --points c1,c64,c512,c64-4k,idle10k --out "$report" 2>&1 |
    grep -vE '^bench: (building|started|c1-|c64-|c512-|idle10k-)' || true
  echo "(report: $report; full grid: scripts/bench.sh)"
fi
