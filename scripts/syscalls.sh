#!/usr/bin/env bash
# System calls per echo round trip, by server: the one measure of the io_uring completion path
# that does not move with a noisy machine. Each server runs pinned to CPU 0; the C load
# generator (64-byte ping-pong, every byte verified) runs on CPU 1; `perf stat -e
# raw_syscalls:sys_enter -p PID` counts the server's system calls over a window inside the
# measured run, divided by the round trips the load generator counted over that window
# (its rate times the window). perf slows the server a little: the rates here are not
# benchmarks (scripts/bench.sh is).
#
#   scripts/syscalls.sh [--out FILE] [--connections "1 64 512"]
#
# Servers: raw C epoll and raw C io_uring completion (Benchmarks/peers, built here if
# missing), poller-echo on epoll, on io_uring (completion receive and send), on io_uring with
# completion send off (POLLER_URING_SEND=off) and with both off (readiness only). Needs root (perf on another process) and a
# release build (made here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=""
CONNS="1 64 512"
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?}; shift ;;
    --connections) CONNS=${2:?}; shift ;;
    *) echo "syscalls.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v perf >/dev/null || { echo "syscalls.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }

swift build -c release --product poller-echo >/dev/null
swift build -c release --product poller-loadgen >/dev/null
BIN=$(swift build -c release --show-bin-path)
PEERS=$ROOT/Benchmarks/peers
mkdir -p "$PEERS/bin"
[ -x "$PEERS/bin/c-epoll-echo" ] || cc -O2 -Wall -pthread -o "$PEERS/bin/c-epoll-echo" "$PEERS/c-epoll-echo.c"
[ -x "$PEERS/bin/c-uring-echo" ] || cc -O2 -Wall -pthread -o "$PEERS/bin/c-uring-echo" "$PEERS/c-uring-echo.c" -luring

WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# measure LABEL CONNECTIONS ENV COMMAND...: prints "syscalls-per-rt rt/s".
measure() {
  local label=$1 conns=$2 envs=$3 port="" i
  shift 3
  # shellcheck disable=SC2086
  env $envs taskset -c 0 "$@" --host 127.0.0.1 --port 0 >"$WORK/$label.log" 2>&1 &
  SERVER=$!
  for i in $(seq 1 200); do
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/$label.log")
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { echo "- -"; kill "$SERVER"; SERVER=""; return; }
  taskset -c 1 "$BIN/poller-loadgen" --port "$port" --connections "$conns" --size 64 --duration 4 --warmup 1 \
    >"$WORK/$label.lg" 2>&1 &
  local lg=$!
  sleep 1.5
  perf stat -e raw_syscalls:sys_enter -p "$SERVER" -x, -o "$WORK/$label.perf" -- sleep 2.5 >/dev/null 2>&1
  wait "$lg" || true
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  SERVER=""
  local calls rate
  calls=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$WORK/$label.perf")
  rate=$(sed -n 's/.*rt_per_s=\([0-9]*\).*/\1/p' "$WORK/$label.lg")
  awk -v c="${calls:-0}" -v r="${rate:-0}" 'BEGIN { if (r > 0 && c > 0) printf "%.2f %d\n", c / (r * 2.5), r; else print "- -" }'
}

ECHO="$BIN/poller-echo"
declare -A ROW
LABELS=("raw C epoll (ET, read until EAGAIN)" "raw C io_uring completion (recv and send on the ring)"
  "poller-echo epoll" "poller-echo io_uring (completion receive and send)"
  "poller-echo io_uring, completion receive, send(2)" "poller-echo io_uring, readiness only (recv(2), send(2))")
for conns in $CONNS; do
  ROW["0 $conns"]=$(measure c-epoll "$conns" "" "$PEERS/bin/c-epoll-echo")
  ROW["1 $conns"]=$(measure c-uring "$conns" "" "$PEERS/bin/c-uring-echo")
  ROW["2 $conns"]=$(measure poller-epoll "$conns" "" "$ECHO" --backend epoll)
  ROW["3 $conns"]=$(measure poller-uring "$conns" "" "$ECHO" --backend io_uring)
  ROW["4 $conns"]=$(measure poller-uring-recv "$conns" "POLLER_URING_SEND=off" "$ECHO" --backend io_uring)
  ROW["5 $conns"]=$(measure poller-uring-ready "$conns" "POLLER_URING_RECV=off POLLER_URING_SEND=off" "$ECHO" --backend io_uring)
done

report() {
  echo "# System calls per round trip"
  echo
  echo "Made by \`scripts/syscalls.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $(nproc) CPUs."
  echo "64-byte ping-pong; server pinned to CPU 0, load generator to CPU 1; \`perf stat -e raw_syscalls:sys_enter\` on the server over 2.5 s inside a 4 s run, divided by the round trips in that window. (rt/s is under perf: not a benchmark.)"
  echo
  printf '| server |'
  for conns in $CONNS; do printf ' %s conn syscalls/rt | rt/s |' "$conns"; done
  echo
  printf '|---|'
  for _ in $CONNS; do printf -- '---:|---:|'; done
  echo
  local i
  for i in 0 1 2 3 4 5; do
    printf '| %s |' "${LABELS[$i]}"
    for conns in $CONNS; do
      read -r per rate <<<"${ROW["$i $conns"]}"
      printf ' %s | %s |' "$per" "$rate"
    done
    echo
  done
}
if [ -n "$OUT" ]; then report >"$OUT"; cat "$OUT"; else report; fi
