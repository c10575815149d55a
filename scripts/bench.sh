#!/usr/bin/env bash
# Echo and HTTP benchmarks of poller-echo side by side with raw C epoll, Go's net and SwiftNIO.
#
#   scripts/bench.sh            full grid: 5 interleaved repetitions, 1 s warm-up + 4 s per run
#   scripts/bench.sh --quick    1 repetition, 0.4 s warm-up + 1.2 s per run (under a minute
#                               measuring with five servers on a quiet machine; retries add)
#
# Options (after --quick, to override it):
#   --reps N          repetitions per grid point (default 5; --quick: 1)
#   --duration S      measured seconds per run (default 4; --quick: 1.2)
#   --warmup S        warm-up seconds per run before the measured window (default 1; --quick: 0.4)
#   --servers LIST    comma-separated subset of: c-epoll,c-uring,poller-epoll,poller-uring,
#                     poller-uring-recv (io_uring with completion send off),
#                     poller-uring-ready (io_uring with completion receive and send off),go,nio
#   --points LIST     comma-separated subset of: c1,c64,c512,c64-4k,idle10k,allcores64,allcores512
#   --no-http         skip the HTTP section (wrk against go-http, nio-http, poller-http)
#   --retries N       re-run a run whose CPU 0 was more than 15% busy with other processes
#                     (all-cores points: more than 15% of a CPU, over all CPUs, neither the
#                     server nor the load generator),
#                     up to N times (default 2; --quick: 1); the last attempt is kept
#   --no-build        use the binaries already built
#   --no-install      install nothing (Go, wrk): use the peers this machine already has
#   --out FILE        report file (default BENCHMARKS.md in the repository root)
#   --baseline BIN    also run BIN (another build's poller-echo, e.g. of the commit before a
#                     change) on both backends, interleaved with the rest: before and after in
#                     the same run (one-core points only)
#   --wait-quiet      before every run (and retry), wait (<= 30 min) until no swift-build,
#                     swift-frontend, swift-test, xctest or *PackageTests* process runs (a
#                     shared machine); the waits are noted in the report
#
# Every echo server is started once, pinned to CPU 0 (taskset -c 0), and stays up; the load
# generator (Sources/poller-loadgen, pinned to CPU 1) visits them in turn, grid point by grid
# point, repetitions interleaved (A B C ... A B C ...). The server's CPU time over the measured
# window comes from /proc/PID/task/*/schedstat (ns on CPU, summed over threads), sampled when
# the load generator's warm-up ends and again just before its measured window ends. Medians
# across repetitions, and ratios to raw C epoll, go to BENCHMARKS.md and to stdout.
#
# The all-cores points (allcores64, allcores512) run a second instance of every server allowed
# on every CPU (taskset -c 0-N-1) and using them all: raw C epoll with one thread and one
# SO_REUSEPORT listener per CPU (the floor), Go with GOMAXPROCS = CPUs, SwiftNIO with one event
# loop per CPU, and poller-echo with its PollerGroup (--threads 0) in both accept modes
# (shared, reuseport) on both backends. The load generator is then allowed on every CPU too,
# with one client thread per CPU: on a small machine it competes with the server for the same
# CPUs. Their tables add the scaling ratio rt/s(all cores) / rt/s(one core), the one-core
# figure taken from c64 / c512 of the same run, and "other %" counts CPU time on all CPUs that
# was neither the server's nor the load generator's.
#
# Robustness: a server that does not start, or a run that fails, is reported as failed and the
# rest goes on; every wait has a deadline; every process this script starts is ended by its
# PID on exit (trap EXIT). Loopback (127.0.0.1) only.
set -uo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ORIG_CMD="scripts/bench.sh${*:+ $*}"

MODE=full REPS=5 DURATION=4 WARMUP=1 HTTP_DURATION=10 HTTP_WARMUP=2
SERVERS_WANTED="c-epoll,c-uring,poller-epoll,poller-uring,poller-uring-recv,poller-uring-ready,go,nio"
POINTS_WANTED="c1,c64,c512,c64-4k,idle10k,allcores64,allcores512"
DO_HTTP=1 DO_BUILD=1 DO_INSTALL=1 OUT="$ROOT/BENCHMARKS.md" BASELINE='' WAIT_QUIET=0
REPS_SET='' DUR_SET='' WARM_SET='' RETRIES_SET='' RETRIES=2 OTHER_MAX=15
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --reps) REPS_SET=${2:?}; shift ;;
    --duration) DUR_SET=${2:?}; shift ;;
    --warmup) WARM_SET=${2:?}; shift ;;
    --servers) SERVERS_WANTED=${2:?}; shift ;;
    --points) POINTS_WANTED=${2:?}; shift ;;
    --retries) RETRIES_SET=${2:?}; shift ;;
    --no-http) DO_HTTP=0 ;;
    --no-build) DO_BUILD=0 ;;
    --no-install) DO_INSTALL=0 ;;
    --out) OUT=${2:?}; shift ;;
    --baseline) BASELINE=${2:?}; shift ;;
    --wait-quiet) WAIT_QUIET=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
IDLE_SAMPLE=1
if [ "$MODE" = quick ]; then REPS=1 DURATION=1.2 WARMUP=0.4 HTTP_DURATION=2 HTTP_WARMUP=1 RETRIES=1 IDLE_SAMPLE=0.5; fi
[ -n "$RETRIES_SET" ] && RETRIES=$RETRIES_SET
[ -n "$REPS_SET" ] && REPS=$REPS_SET
[ -n "$DUR_SET" ] && DURATION=$DUR_SET
[ -n "$WARM_SET" ] && WARMUP=$WARM_SET

log() { printf 'bench: %s\n' "$*" >&2; }
NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }

# ---------------------------------------------------------------------------------------------
# Clean-up: every PID this script starts is tracked until it has been reaped (so that a
# reused PID is never signalled); whatever is still tracked is ended on exit.
source "$ROOT/scripts/tracked-processes.sh"
cleanup() { end_tracked_processes; }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# Time in microseconds (bash 5's EPOCHREALTIME, no fork).
now_us() { local t=$EPOCHREALTIME; NOW_US=$((10#${t/./})); }
to_us() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000000 }'; }
sleep_until_us() {
  now_us
  local d=$(($1 - NOW_US))
  [ $d -gt 0 ] && sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
  return 0
}
# Server CPU time in ns: first field of /proc/PID/task/*/schedstat, summed over threads.
cpu_ns() {
  local f a s=0
  for f in /proc/"$1"/task/*/schedstat; do
    read -r a _ <"$f" 2>/dev/null && s=$((s + a))
  done
  echo "$s"
}
# CPU 0's busy time in ns from /proc/stat (user+nice+system+irq+softirq+steal, in USER_HZ ticks):
# minus the server's own CPU time, it shows what else ran on (or stole) the server's CPU.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu0_busy_ns() {
  awk -v hz="$CLK_TCK" '$1 == "cpu0" { printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / hz; exit }' /proc/stat
}
# All CPUs' busy time in ns (the aggregate "cpu" line), for the all-cores points.
all_busy_ns() {
  awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / hz; exit }' /proc/stat
}
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' /proc/"$1"/status 2>/dev/null; }
fd_count() { local a=(/proc/"$1"/fd/*); [ -e "${a[0]}" ] && echo ${#a[@]} || echo 0; }

# ---------------------------------------------------------------------------------------------
# Dependencies and builds (both CPUs; pinning starts after).
NPROC=$(nproc)  # before the script pins itself to one CPU
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
APT_UPDATED=0
apt_install() {  # apt_install PACKAGE: as root with apt-get, bounded; returns status
  [ $IS_ROOT = 1 ] && command -v apt-get >/dev/null || return 1
  export DEBIAN_FRONTEND=noninteractive
  if [ $APT_UPDATED = 0 ]; then timeout 300 apt-get update -qq >/dev/null 2>&1; APT_UPDATED=1; fi
  timeout 600 apt-get install -y -qq "$1" >/dev/null 2>&1
}
if ! command -v go >/dev/null; then
  if [ $DO_INSTALL = 0 ]; then
    note "Go is not installed (--no-install): Go peers skipped (scripts/bench.sh installs golang-go)."
  else
    log "installing golang-go (Go peers)"
    apt_install golang-go || note "Go is missing and could not be installed (needs root and apt-get): Go peers skipped."
  fi
fi
if [ $DO_HTTP = 1 ] && ! command -v wrk >/dev/null; then
  if [ $DO_INSTALL = 0 ]; then
    note "wrk is not installed (--no-install): HTTP section skipped."
  else
    log "installing wrk (HTTP section)"
    apt_install wrk || note "wrk is missing and could not be installed (needs root and apt-get): HTTP section skipped."
  fi
fi

# Raise the descriptor limit as far as the hard limit allows: the 10,000-idle point needs
# about 10,100 descriptors in the server and as many in the load generator (separate processes).
HARD_NOFILE=$(ulimit -Hn)
ulimit -n "$HARD_NOFILE" 2>/dev/null
SOFT_NOFILE=$(ulimit -n)

RUN_DIR="$ROOT/Benchmarks/results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$RUN_DIR"
PEERS="$ROOT/Benchmarks/peers"
BIN="$PEERS/bin"
mkdir -p "$BIN"

build_step() {  # build_step NAME LOG CMD...: runs CMD with a 40-minute bound, logs output
  local name=$1 logf=$2; shift 2
  log "building $name"
  if timeout 2400 "$@" >"$logf" 2>&1; then return 0; fi
  return 1
}

ROOT_BIN="$ROOT/.build/release"
NIO_BIN="$ROOT/Benchmarks/.build/release"
declare -A HAVE  # server or tool name -> 1 when its binary is ready
if [ $DO_BUILD = 1 ]; then
  bash scripts/ensure-deps.sh || note "ensure-deps failed (liburing): poller-echo may fail to build."
  build_step poller-loadgen "$RUN_DIR/build-loadgen.log" swift build -c release --product poller-loadgen ||
    { tail -n 20 "$RUN_DIR/build-loadgen.log" >&2; log "cannot build the load generator"; exit 1; }
  for prod in poller-echo poller-http; do
    if build_step "$prod" "$RUN_DIR/build-$prod.log" swift build -c release --product "$prod"; then
      HAVE[$prod]=1
    elif grep -q "no product named" "$RUN_DIR/build-$prod.log"; then
      note "$prod: no such product in the root package yet; its rows are skipped."
    else
      note "$prod: release build failed (log: ${RUN_DIR#$ROOT/}/build-$prod.log); its rows are skipped."
    fi
  done
  if build_step "Benchmarks package (nio-echo, nio-http)" "$RUN_DIR/build-nio.log" \
      swift build -c release --package-path Benchmarks; then
    HAVE[nio]=1 HAVE[nio-http]=1
  else
    note "SwiftNIO peers: release build of Benchmarks/ failed (log: ${RUN_DIR#$ROOT/}/build-nio.log); skipped."
  fi
  if build_step c-epoll-echo "$RUN_DIR/build-c.log" cc -O2 -Wall -pthread -o "$BIN/c-epoll-echo" "$PEERS/c-epoll-echo.c"; then
    HAVE[c-epoll]=1
  else
    note "c-epoll-echo: cc failed (log: ${RUN_DIR#$ROOT/}/build-c.log)."
  fi
  # The io_uring ceiling (issue 16): completion I/O, multishot recv into provided buffers.
  if build_step c-uring-echo "$RUN_DIR/build-c-uring.log" cc -O2 -Wall -pthread -o "$BIN/c-uring-echo" "$PEERS/c-uring-echo.c" -luring; then
    HAVE[c-uring]=1
  else
    note "c-uring-echo: cc failed (log: ${RUN_DIR#$ROOT/}/build-c-uring.log); the io_uring ceiling is skipped."
  fi
  if build_step idle-holder "$RUN_DIR/build-holder.log" cc -O2 -Wall -o "$BIN/idle-holder" "$PEERS/idle-holder.c"; then
    HAVE[holder]=1
  else
    note "idle-holder: cc failed (log: ${RUN_DIR#$ROOT/}/build-holder.log); the idle point fails."
  fi
  if command -v go >/dev/null; then
    for g in go-echo go-http; do
      if (cd "$PEERS/$g" && build_step "$g" "$RUN_DIR/build-$g.log" \
            env GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GO111MODULE=on go build -o "$BIN/$g" .); then
        [ $g = go-echo ] && HAVE[go]=1 || HAVE[go-http]=1
      else
        note "$g: go build failed (log: ${RUN_DIR#$ROOT/}/build-$g.log); skipped."
      fi
    done
  fi
else
  [ -x "$ROOT_BIN/poller-echo" ] && HAVE[poller-echo]=1
  [ -x "$ROOT_BIN/poller-http" ] && HAVE[poller-http]=1
  [ -x "$NIO_BIN/nio-echo" ] && HAVE[nio]=1
  [ -x "$NIO_BIN/nio-http" ] && HAVE[nio-http]=1
  [ -x "$BIN/c-epoll-echo" ] && HAVE[c-epoll]=1
  [ -x "$BIN/c-uring-echo" ] && HAVE[c-uring]=1
  [ -x "$BIN/idle-holder" ] && HAVE[holder]=1
  [ -x "$BIN/go-echo" ] && HAVE[go]=1
  [ -x "$BIN/go-http" ] && HAVE[go-http]=1
fi
LOADGEN="$ROOT_BIN/poller-loadgen"
[ -x "$LOADGEN" ] || { log "no load generator at $LOADGEN"; exit 1; }
[ "${HAVE[poller-echo]:-0}" = 1 ] && HAVE[poller-epoll]=1 HAVE[poller-uring]=1 HAVE[poller-uring-recv]=1 HAVE[poller-uring-ready]=1

# From here on this shell and its helpers stay on CPU 1, next to the load generator: CPU 0
# belongs to the servers.
taskset -cp 1 $$ >/dev/null 2>&1 || note "could not pin the script to CPU 1"

# ---------------------------------------------------------------------------------------------
# Servers.
declare -A LABEL CMD SPID SPORT SSTART_RSS SEXIT SCPUS
ALL_CPUS="0-$((NPROC - 1))"
LABEL[c-epoll]="raw C epoll (ET, 1 thread)";   CMD[c-epoll]="$BIN/c-epoll-echo --host 127.0.0.1 --port 0"
LABEL[c-uring]="raw C io_uring completion (1 thread)"; CMD[c-uring]="$BIN/c-uring-echo --host 127.0.0.1 --port 0"
LABEL[poller-epoll]="poller-echo epoll";       CMD[poller-epoll]="$ROOT_BIN/poller-echo --host 127.0.0.1 --port 0 --backend epoll"
LABEL[poller-uring]="poller-echo io_uring";    CMD[poller-uring]="$ROOT_BIN/poller-echo --host 127.0.0.1 --port 0 --backend io_uring"
LABEL[poller-uring-recv]="poller-echo io_uring, completion receive, send(2)"
CMD[poller-uring-recv]="env POLLER_URING_SEND=off $ROOT_BIN/poller-echo --host 127.0.0.1 --port 0 --backend io_uring"
LABEL[poller-uring-ready]="poller-echo io_uring, readiness only (recv(2), send(2))"
CMD[poller-uring-ready]="env POLLER_URING_RECV=off POLLER_URING_SEND=off $ROOT_BIN/poller-echo --host 127.0.0.1 --port 0 --backend io_uring"
LABEL[go]="Go net (goroutine/conn)";           CMD[go]="$BIN/go-echo --host 127.0.0.1 --port 0"
LABEL[nio]="SwiftNIO (1 event loop)";          CMD[nio]="$NIO_BIN/nio-echo --host 127.0.0.1 --port 0"
LABEL[go-http]="Go net/http";                  CMD[go-http]="$BIN/go-http --host 127.0.0.1 --port 0"
LABEL[nio-http]="SwiftNIO HTTP1 (1 event loop)"; CMD[nio-http]="$NIO_BIN/nio-http --host 127.0.0.1 --port 0"
LABEL[poller-http]="poller-http";              CMD[poller-http]="$ROOT_BIN/poller-http --host 127.0.0.1 --port 0"
# The 10,000-idle point holds its connections with deadlines, as a real service does: a second
# instance of each server (key-dl) sets a read deadline of IDLE_TIMEOUT seconds before every
# read (Go: SetReadDeadline; SwiftNIO: IdleStateHandler; poller-echo: --idle-timeout) and serves
# that point only. The raw C server has no timers: it stays the floor.
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { log "--baseline: no executable at $BASELINE"; exit 2; }
  LABEL[base-epoll]="baseline poller-echo epoll"; CMD[base-epoll]="$BASELINE --host 127.0.0.1 --port 0 --backend epoll"
  LABEL[base-uring]="baseline poller-echo io_uring"; CMD[base-uring]="$BASELINE --host 127.0.0.1 --port 0 --backend io_uring"
  HAVE[base-epoll]=1 HAVE[base-uring]=1
  SERVERS_WANTED="$SERVERS_WANTED,base-epoll,base-uring"
  note "baseline: $BASELINE (rows \"baseline poller-echo …\"), interleaved with the others."
fi
# All-cores instances: KEY-all (or poller-BACKEND-MODE) of one-core server ALL_BASE[KEY].
declare -A ALL_BASE
LABEL[c-epoll-all]="raw C epoll (ET, $NPROC threads, SO_REUSEPORT)"
CMD[c-epoll-all]="$BIN/c-epoll-echo --host 127.0.0.1 --port 0 --threads $NPROC"; ALL_BASE[c-epoll-all]=c-epoll
LABEL[c-uring-all]="raw C io_uring completion ($NPROC threads, SO_REUSEPORT)"
CMD[c-uring-all]="$BIN/c-uring-echo --host 127.0.0.1 --port 0 --threads $NPROC"; ALL_BASE[c-uring-all]=c-uring
for b in epoll uring; do
  bname=$b; [ $b = uring ] && bname=io_uring
  for mode in shared reuseport; do
    LABEL[poller-$b-$mode]="poller-echo $bname, group of $NPROC, accept $mode"
    CMD[poller-$b-$mode]="${CMD[poller-$b]} --threads 0 --accept $mode"; ALL_BASE[poller-$b-$mode]=poller-$b
  done
done
LABEL[go-all]="Go net (goroutine/conn, GOMAXPROCS=$NPROC)"
CMD[go-all]="env GOMAXPROCS=$NPROC ${CMD[go]}"; ALL_BASE[go-all]=go
LABEL[nio-all]="SwiftNIO ($NPROC event loops)"
CMD[nio-all]="${CMD[nio]} --threads $NPROC"; ALL_BASE[nio-all]=nio
for key in "${!ALL_BASE[@]}"; do SCPUS[$key]=$ALL_CPUS; done
IDLE_TIMEOUT=60
for key in poller-epoll poller-uring poller-uring-recv poller-uring-ready base-epoll base-uring go nio; do
  [ -n "${CMD[$key]:-}" ] || continue
  LABEL[$key-dl]="${LABEL[$key]}, ${IDLE_TIMEOUT} s read deadlines"
  CMD[$key-dl]="${CMD[$key]} --idle-timeout $IDLE_TIMEOUT"
done

start_server() {  # start_server KEY: pinned to CPU 0 (all-cores instances: every CPU); waits (<= 15 s) for "listening on 127.0.0.1:PORT"
  local key=$1 logf="$RUN_DIR/server-$1.log" pid port deadline
  # shellcheck disable=SC2086
  taskset -c "${SCPUS[$key]:-0}" ${CMD[$key]} >"$logf" 2>&1 &
  pid=$!
  track "$pid"
  now_us; deadline=$((NOW_US + 15000000))
  while :; do
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p;T;q' "$logf")
    [ -n "$port" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      reap "$pid"
      note "${LABEL[$key]}: exited at start-up (status $?): $(tail -n 2 "$logf" | tr '\n' ' ')"
      return 1
    fi
    now_us; if [ $NOW_US -gt $deadline ]; then
      note "${LABEL[$key]}: printed no 'listening on 127.0.0.1:PORT' line within 15 s; killed."
      kill -KILL "$pid" 2>/dev/null; reap "$pid"
      return 1
    fi
    sleep 0.05
  done
  SPID[$key]=$pid SPORT[$key]=$port
  sleep 0.2
  SSTART_RSS[$key]=$(status_kib "$pid" VmRSS)
  log "started ${LABEL[$key]} (pid $pid, port $port)"
}

stop_server() {  # stop_server KEY: SIGTERM, <= 5 s, then SIGKILL; records the exit status
  local key=$1 pid=${SPID[$1]:-} i
  [ -n "$pid" ] || return 0
  if ! kill -0 "$pid" 2>/dev/null; then
    reap "$pid"; SEXIT[$key]="had already exited (status $?)"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null; reap "$pid"
    SEXIT[$key]="did not exit within 5 s of SIGTERM (killed)"
  else
    reap "$pid"; local st=$?
    SEXIT[$key]="exit status $st on SIGTERM"
  fi
}

# Waits (<= 5 s) until a server has gone quiet (< 1% of a CPU over 200 ms), so that one run's
# aftermath (closing 10,000 connections, say) does not land in the next run's window.
settle() {
  local pid=$1 i a b
  for i in $(seq 1 25); do
    kill -0 "$pid" 2>/dev/null || return 0
    a=$(cpu_ns "$pid"); sleep 0.2; b=$(cpu_ns "$pid")
    [ $((b - a)) -lt 2000000 ] && return 0
  done
}

# ---------------------------------------------------------------------------------------------
# The echo grid.
POINTS=()
for pt in c1 c64 c512 c64-4k idle10k allcores64 allcores512; do
  case ",$POINTS_WANTED," in *",$pt,"*) POINTS+=("$pt") ;; esac
done
declare -A P_CONN P_SIZE P_IDLE P_BUSY P_TITLE P_ALL P_ONECORE
P_CONN[c1]=1;      P_SIZE[c1]=64;       P_IDLE[c1]=0;       P_BUSY[c1]=1
P_CONN[c64]=64;    P_SIZE[c64]=64;      P_IDLE[c64]=0;      P_BUSY[c64]=0
P_CONN[c512]=512;  P_SIZE[c512]=64;     P_IDLE[c512]=0;     P_BUSY[c512]=0
P_CONN[c64-4k]=64; P_SIZE[c64-4k]=4096; P_IDLE[c64-4k]=0;   P_BUSY[c64-4k]=0
P_CONN[idle10k]=64; P_SIZE[idle10k]=64; P_IDLE[idle10k]=10000; P_BUSY[idle10k]=0
P_TITLE[c1]="1 connection, 64 B ping-pong (load generator busy-polls)"
P_TITLE[c64]="64 connections, 64 B ping-pong"
P_TITLE[c512]="512 connections, 64 B ping-pong"
P_TITLE[c64-4k]="64 connections, 4 KiB ping-pong"
P_TITLE[idle10k]="64 active connections, 64 B ping-pong, with 10,000 idle connections held (every server but raw C sets a 60 s read deadline before each read)"
# All cores: server and load generator (one client thread per CPU) both allowed on every CPU.
for n in 64 512; do
  P_CONN[allcores$n]=$n; P_SIZE[allcores$n]=64; P_IDLE[allcores$n]=0; P_BUSY[allcores$n]=0
  P_ALL[allcores$n]=1; P_ONECORE[allcores$n]=c$n
  P_TITLE[allcores$n]="All cores: $n connections, 64 B ping-pong (servers and the load generator, $NPROC client threads, all allowed on CPUs $ALL_CPUS: this machine has $NPROC)"
done

NEED_FDS=$((P_IDLE[idle10k] + P_CONN[idle10k] + 64))
if [ "$SOFT_NOFILE" != unlimited ] && [ "$SOFT_NOFILE" -lt "$NEED_FDS" ]; then
  note "descriptor limit is $SOFT_NOFILE (hard $HARD_NOFILE), below the ~$NEED_FDS that the server and the load generator each need for 10,000 idle connections: that point is skipped."
  pts=()
  for pt in "${POINTS[@]}"; do [ "$pt" = idle10k ] || pts+=("$pt"); done
  POINTS=("${pts[@]}")
fi

ECHO_SERVERS=()
for key in c-epoll c-uring poller-epoll poller-uring poller-uring-recv poller-uring-ready base-epoll base-uring go nio; do
  case ",$SERVERS_WANTED," in *",$key,"*) ;; *) continue ;; esac
  if [ "${HAVE[$key]:-0}" != 1 ]; then
    case $key in
      poller-epoll|poller-uring|poller-uring-recv|poller-uring-ready) ;;  # noted with the build
      *) [ $DO_BUILD = 0 ] && note "${LABEL[$key]}: no binary (run without --no-build)" ;;
    esac
    continue
  fi
  ECHO_SERVERS+=("$key")
done
# The all-cores instances of the chosen one-core servers (not of a --baseline build).
ALL_SERVERS=()
for key in c-epoll-all c-uring-all poller-epoll-shared poller-epoll-reuseport poller-uring-shared poller-uring-reuseport go-all nio-all; do
  case " ${ECHO_SERVERS[*]} " in *" ${ALL_BASE[$key]} "*) ALL_SERVERS+=("$key") ;; esac
done
HAVE_ALL=0
for pt in "${POINTS[@]}"; do [ "${P_ALL[$pt]:-0}" = 1 ] && HAVE_ALL=1; done
[ $HAVE_ALL = 1 ] || ALL_SERVERS=()
servers_of() {  # servers_of POINT: the server keys that run at POINT
  if [ "${P_ALL[$1]:-0}" = 1 ]; then PT_SERVERS=("${ALL_SERVERS[@]}"); else PT_SERVERS=("${ECHO_SERVERS[@]}"); fi
}

RESULTS="$RUN_DIR/echo.tsv"   # point server rep status rt p50 p90 p99 p999 cpu_ns_rt cpu_pct rss_kib other_pct idle_cpu_pct lg_cpu_pct
: >"$RESULTS"
W_US=$(to_us "$WARMUP"); D_US=$(to_us "$DURATION")
LGPID=''

# echo_medians POINT KEY: the medians over the repetitions of KEY at POINT, in rt p50 p99
# p999 cpu pct rss oth lgp (echo.tsv's columns), and okc, the runs that succeeded.
echo_medians() {
  rt=$(median_of "$RESULTS" 5 "$1" "$2" 4); p50=$(median_of "$RESULTS" 6 "$1" "$2" 4)
  p99=$(median_of "$RESULTS" 8 "$1" "$2" 4); p999=$(median_of "$RESULTS" 9 "$1" "$2" 4)
  cpu=$(median_of "$RESULTS" 10 "$1" "$2" 4); pct=$(median_of "$RESULTS" 11 "$1" "$2" 4)
  rss=$(median_of "$RESULTS" 12 "$1" "$2" 4); oth=$(median_of "$RESULTS" 13 "$1" "$2" 4)
  lgp=$(median_of "$RESULTS" 15 "$1" "$2" 4); okc=$(count_ok "$RESULTS" "$1" "$2" 4)
}
record() { printf '%s\n' "$*" | tr ' ' '\t' >>"$RESULTS"; }

CONTENDED=0 RETRIED=0 QUIET_WAITS=0 QUIET_WAITED_S=0
# --wait-quiet: on a shared machine, start a run only while nobody builds or tests (checked
# before every run and every retry; each wait bounded to 30 min).
wait_quiet() {
  [ "$WAIT_QUIET" = 1 ] || return 0
  local deadline t0 waited=0
  now_us; t0=$NOW_US deadline=$((NOW_US + 1800000000))
  while pgrep -f 'swift-build|swift-frontend|swift-test|xctest|PackageTests' >/dev/null; do
    now_us; [ $NOW_US -gt $deadline ] && { note "--wait-quiet: builds or tests still running after 30 min; measured anyway."; break; }
    [ $waited = 0 ] && log "waiting for other builds and tests to finish (--wait-quiet)"
    waited=1
    sleep 20
  done
  if [ $waited = 1 ]; then
    now_us; QUIET_WAITS=$((QUIET_WAITS + 1)) QUIET_WAITED_S=$((QUIET_WAITED_S + (NOW_US - t0) / 1000000))
    sleep 2  # let the last compiler's exit and page-cache writeback pass
  fi
}
declare -A DOWN_NOTED=()
run_echo() {  # run_echo POINT SERVER REP [ATTEMPT]
  local pt=$1 key=$2 rep=$3 attempt=${4:-0} srv=$2
  wait_quiet
  # The idle point runs against the instance that holds deadlines, where there is one.
  [ "$pt" = idle10k ] && [ -n "${SPID[$2-dl]:-}" ] && srv=$2-dl
  local pid=${SPID[$srv]:-} port=${SPORT[$srv]:-}
  local n=${P_CONN[$1]} size=${P_SIZE[$1]} idle=${P_IDLE[$1]} tag="$1-$2-r$3"
  local out="$RUN_DIR/lg-$tag.out" err="$RUN_DIR/lg-$tag.err"
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    record "$pt $key $rep failed - - - - - - - - -"; log "$tag: server not running"
    if [ -z "${DOWN_NOTED[$srv]:-}" ]; then
      DOWN_NOTED[$srv]=1
      [ -n "$pid" ] && note "${LABEL[$srv]}: server not running from $pt rep $rep on: $(tail -n 2 "$RUN_DIR/server-$srv.log" | tr '\n' ' ')"
    fi
    return
  fi
  local idle_pct=- extra=() deadline ok=1 t_ready c1 c2 t1 t2 b1 b2 l1 l2 rss sfds base_fds hpid='' hout="$RUN_DIR/holder-$tag.out" herr="$RUN_DIR/holder-$tag.err"
  local all=${P_ALL[$pt]:-0} lg_cpus=1 lg_fds=$((n + 3))
  [ "${P_BUSY[$pt]}" = 1 ] && extra+=(--busy-poll)
  # All cores: the load generator may run on every CPU, one client thread (and epoll) each.
  [ "$all" = 1 ] && lg_cpus=$ALL_CPUS lg_fds=$((n + 2 + NPROC)) extra+=(--threads "$NPROC")
  if [ "$idle" -gt 0 ]; then
    # The idle connections come from idle-holder, dialled in batches before the load generator
    # starts: neither the accept burst nor the dialling falls into the measured window.
    # (poller-loadgen --idle dials all of them at once and starts its warm-up clock after.)
    if [ "${HAVE[holder]:-0}" != 1 ]; then
      record "$pt $key $rep failed - - - - - - - - -"; log "$tag: no idle-holder binary"; return
    fi
    base_fds=$(fd_count "$pid")
    taskset -c 1 "$BIN/idle-holder" --host 127.0.0.1 --port "$port" --count "$idle" >"$hout" 2>"$herr" &
    hpid=$!
    track "$hpid"
    now_us; deadline=$((NOW_US + 60000000))
    while ! grep -q '^idle-holder: holding' "$hout"; do
      kill -0 "$hpid" 2>/dev/null || { ok=0; break; }
      now_us; [ $NOW_US -gt $deadline ] && { ok=0; break; }
      sleep 0.05
    done
    # ... and the server must hold them all (accepted) before the active connections start.
    now_us; deadline=$((NOW_US + 30000000))
    while [ $ok = 1 ] && [ "$(fd_count "$pid")" -lt $((base_fds + idle)) ]; do
      now_us; [ $NOW_US -gt $deadline ] && { ok=0; note "${LABEL[$key]}: did not accept $idle idle connections within 30 s ($pt rep $rep)"; break; }
      sleep 0.05
    done
    if [ $ok = 1 ]; then
      # The server's CPU while it only holds the idle connections (their deadlines armed).
      local i1 i2 it1 it2
      i1=$(cpu_ns "$pid"); now_us; it1=$NOW_US
      sleep "$IDLE_SAMPLE"
      i2=$(cpu_ns "$pid"); now_us; it2=$NOW_US
      idle_pct=$(awk -v c=$((i2 - i1)) -v t=$((it2 - it1)) 'BEGIN { printf "%.2f", c / t / 10 }')
    fi
    if [ $ok = 0 ]; then
      record "$pt $key $rep failed - - - - - - - - -"
      log "$tag: FAILED to hold $idle idle connections: $(tail -n 2 "$herr" | tr '\n' ' ')"
      kill -TERM "$hpid" 2>/dev/null; reap "$hpid"
      settle "$pid"
      return
    fi
  fi
  taskset -c "$lg_cpus" "$LOADGEN" --host 127.0.0.1 --port "$port" --connections "$n" --size "$size" \
    --duration "$DURATION" --warmup "$WARMUP" "${extra[@]}" >"$out" 2>"$err" &
  LGPID=$!
  track "$LGPID"
  # The load generator starts its warm-up clock once every connection is dialled: wait for
  # its descriptors (<= 60 s) and align the measured window with its own (sampling ends
  # 100 ms before its window does, to stay inside it).
  now_us; deadline=$((NOW_US + 60000000))
  while [ "$(fd_count "$LGPID")" -lt "$lg_fds" ]; do
    kill -0 "$LGPID" 2>/dev/null || { ok=0; break; }
    now_us; [ $NOW_US -gt $deadline ] && { ok=0; break; }
    sleep 0.005
  done
  now_us; t_ready=$NOW_US
  if [ $ok = 1 ]; then
    sleep_until_us $((t_ready + W_US))
    # One-core points: what else ran on CPU 0 (the server's). All cores: what ran on any CPU
    # that was neither the server nor the load generator.
    if [ "$all" = 1 ]; then b1=$(all_busy_ns); else b1=$(cpu0_busy_ns); fi
    l1=$(cpu_ns "$LGPID"); c1=$(cpu_ns "$pid"); now_us; t1=$NOW_US
    sleep_until_us $((t_ready + W_US + D_US - 100000))
    c2=$(cpu_ns "$pid"); l2=$(cpu_ns "$LGPID")
    if [ "$all" = 1 ]; then b2=$(all_busy_ns); else b2=$(cpu0_busy_ns); fi
    now_us; t2=$NOW_US
    rss=$(status_kib "$pid" VmRSS)
    [ -n "$hpid" ] && sfds=$(fd_count "$pid")
  fi
  # Bounded wait for the load generator to finish.
  now_us; deadline=$((NOW_US + D_US + W_US + 30000000))
  while kill -0 "$LGPID" 2>/dev/null; do
    now_us; if [ $NOW_US -gt $deadline ]; then
      kill -KILL "$LGPID" 2>/dev/null; echo "killed: no result within the deadline" >>"$err"; break
    fi
    sleep 0.05
  done
  reap "$LGPID"; local rc=$?
  LGPID=''
  if [ -n "$hpid" ]; then
    kill -TERM "$hpid" 2>/dev/null
    now_us; deadline=$((NOW_US + 5000000))
    while kill -0 "$hpid" 2>/dev/null; do
      now_us; [ $NOW_US -gt $deadline ] && { kill -KILL "$hpid" 2>/dev/null; break; }
      sleep 0.05
    done
    reap "$hpid"
    local hclosed; hclosed=$(sed -n 's/^idle-holder: \([0-9]*\) of .*closed by the server.*/\1/p' "$herr")
    [ "${hclosed:-0}" != 0 ] && note "${LABEL[$key]}: closed $hclosed of the $idle idle connections during $pt rep $rep"
    [ -n "$sfds" ] && [ "$sfds" -lt $((base_fds + n + idle)) ] &&
      note "${LABEL[$key]}: held $((sfds - base_fds)) connections, not $((n + idle)), in the measured window of $pt rep $rep"
  fi
  local line; line=$(grep -m1 '^mode=pingpong' "$out")
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $line"; }
  local rt p50 p90 p99 p999 bad
  rt=$(get rt_per_s) p50=$(get p50_us) p90=$(get p90_us) p99=$(get p99_us) p999=$(get p999_us) bad=$(get bad_bytes)
  if [ $ok = 1 ] && [ $rc = 0 ] && [ -n "$rt" ] && [ "$bad" = 0 ] && [ "${rt%%.*}" -gt 0 ] && kill -0 "$pid" 2>/dev/null; then
    local cpu_rt cpu_pct other_pct lg_pct lg_other=0
    [ "$all" = 1 ] && lg_other=$((l2 - l1))
    other_pct=$(awk -v b=$((b2 - b1)) -v c=$((c2 - c1 + lg_other)) -v t=$((t2 - t1)) 'BEGIN { o = (b - c) / t / 10; if (o < 0) o = 0; printf "%.1f", o }')
    lg_pct=$(awk -v c=$((l2 - l1)) -v t=$((t2 - t1)) 'BEGIN { printf "%.1f", c / t / 10 }')
    if awk -v o="$other_pct" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }'; then
      if [ "$attempt" -lt "$RETRIES" ]; then
        log "$tag: other processes used ${other_pct}% of $([ "$all" = 1 ] && echo "a CPU (all CPUs)" || echo "CPU 0"); retrying ($((attempt + 1))/$RETRIES)"
        RETRIED=$((RETRIED + 1))
        settle "$pid"; sleep 1
        run_echo "$pt" "$key" "$rep" $((attempt + 1))
        return
      fi
      CONTENDED=$((CONTENDED + 1))
    fi
    cpu_rt=$(awk -v c=$((c2 - c1)) -v t=$((t2 - t1)) -v r="$rt" 'BEGIN { printf "%.0f", c * 1e6 / t / r }')
    cpu_pct=$(awk -v c=$((c2 - c1)) -v t=$((t2 - t1)) 'BEGIN { printf "%.1f", c / t / 10 }')
    record "$pt $key $rep ok $rt $p50 $p90 $p99 $p999 $cpu_rt $cpu_pct ${rss:--} $other_pct $idle_pct $lg_pct"
    log "$tag: rt/s=$rt p50=${p50}us p99=${p99}us server_cpu=${cpu_rt}ns/rt (${cpu_pct}%) loadgen_cpu=${lg_pct}% rss=${rss}KiB $([ "$all" = 1 ] && echo other || echo cpu0_other)=${other_pct}%$([ "$idle_pct" != - ] && echo " idle_only_cpu=${idle_pct}%")"
  else
    record "$pt $key $rep failed - - - - - - - - -"
    kill -0 "$pid" 2>/dev/null || note "${LABEL[$srv]}: server exited during $pt rep $rep: $(tail -n 2 "$RUN_DIR/server-$srv.log" | tr '\n' ' ')"
    log "$tag: FAILED (loadgen status $rc, bad_bytes=${bad:-?}): $(tail -n 2 "$err" | tr '\n' ' ')"
  fi
  settle "$pid"
}

RUNNING_ECHO=("${ECHO_SERVERS[@]}" "${ALL_SERVERS[@]}")
case " ${POINTS[*]} " in *" idle10k "*)
  for key in "${ECHO_SERVERS[@]}"; do [ -n "${CMD[$key-dl]:-}" ] && RUNNING_ECHO+=("$key-dl"); done ;;
esac
wait_quiet
for key in "${RUNNING_ECHO[@]}"; do start_server "$key"; done
# Prime every server once (1 s, 64 connections, not recorded): first-touch page faults, heap
# growth and lazy set-up stay out of the first recorded run. (All-cores instances: from every
# CPU, one client thread each, so that every one of their threads is primed.)
for key in "${RUNNING_ECHO[@]}"; do
  [ -n "${SPID[$key]:-}" ] || continue
  prime=(taskset -c 1 "$LOADGEN"); [ -n "${ALL_BASE[$key]:-}" ] && prime=(taskset -c "$ALL_CPUS" "$LOADGEN" --threads "$NPROC")
  timeout 20 "${prime[@]}" --host 127.0.0.1 --port "${SPORT[$key]}" --connections 64 --size 64 \
    --duration 1 --warmup 0 >"$RUN_DIR/prime-$key.out" 2>&1 ||
    log "priming ${LABEL[$key]} failed: $(tail -n 1 "$RUN_DIR/prime-$key.out")"
  settle "${SPID[$key]}"
done
now_us; BENCH_START=$NOW_US
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL=0
for pt in "${POINTS[@]}"; do servers_of "$pt"; TOTAL=$((TOTAL + REPS * ${#PT_SERVERS[@]})); done
[ $TOTAL -gt 0 ] && log "echo grid: ${#POINTS[@]} points x $REPS reps = $TOTAL runs of ${WARMUP}+${DURATION} s"
for pt in "${POINTS[@]}"; do
  servers_of "$pt"
  for rep in $(seq 1 "$REPS"); do
    for key in "${PT_SERVERS[@]}"; do run_echo "$pt" "$key" "$rep"; done
  done
done
declare -A SPEAK
for key in "${RUNNING_ECHO[@]}"; do
  [ -n "${SPID[$key]:-}" ] && SPEAK[$key]=$(status_kib "${SPID[$key]}" VmHWM)
  stop_server "$key"
done

# ---------------------------------------------------------------------------------------------
# HTTP: wrk (pinned to CPU 1) against keep-alive "hello" servers (pinned to CPU 0).
HTTP_RESULTS="$RUN_DIR/http.tsv"  # server rep status rps p50 p90 p99 cpu_ns_req other_pct
: >"$HTTP_RESULTS"
HTTP_SERVERS=()
if [ $DO_HTTP = 1 ] && command -v wrk >/dev/null; then
  for key in go-http nio-http poller-http; do
    [ "${HAVE[$key]:-0}" = 1 ] && HTTP_SERVERS+=("$key")
  done
  for key in "${HTTP_SERVERS[@]}"; do start_server "$key"; done
  to_us_lat() {  # wrk latency ("401.00us", "1.23ms", "2.00s") -> microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
      else if (v ~ /s$/) print n * 1e6; else print "-" }'
  }
  run_wrk() {  # run_wrk SERVER REP
    local key=$1 rep=$2 pid=${SPID[$1]:-} port=${SPORT[$1]:-} out="$RUN_DIR/wrk-$1-r$2.out"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      printf '%s\t%s\tfailed\t-\t-\t-\t-\t-\t-\n' "$key" "$rep" >>"$HTTP_RESULTS"; return
    fi
    local url="http://127.0.0.1:$port/" deadline c1 c2 b1 b2 t1 t2 rc
    # Warm-up invocation, then the measured one (server CPU sampled around it).
    taskset -c 1 wrk -t1 -c64 -d"${HTTP_WARMUP}s" "$url" >/dev/null 2>&1 &
    LGPID=$!; track "$LGPID"
    now_us; deadline=$((NOW_US + (HTTP_WARMUP + 20) * 1000000))
    while kill -0 "$LGPID" 2>/dev/null; do now_us; [ $NOW_US -gt $deadline ] && kill -KILL "$LGPID"; sleep 0.05; done
    reap "$LGPID"
    settle "$pid"
    b1=$(cpu0_busy_ns); c1=$(cpu_ns "$pid"); now_us; t1=$NOW_US
    taskset -c 1 wrk -t1 -c64 -d"${HTTP_DURATION}s" --latency "$url" >"$out" 2>&1 &
    LGPID=$!; track "$LGPID"
    now_us; deadline=$((NOW_US + (HTTP_DURATION + 20) * 1000000))
    while kill -0 "$LGPID" 2>/dev/null; do now_us; [ $NOW_US -gt $deadline ] && kill -KILL "$LGPID"; sleep 0.05; done
    reap "$LGPID"; rc=$?
    c2=$(cpu_ns "$pid"); b2=$(cpu0_busy_ns); now_us; t2=$NOW_US
    LGPID=''
    local rps reqs p50 p90 p99 errs
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    p50=$(to_us_lat "$(awk '$1 == "50%" { print $2 }' "$out")")
    p90=$(to_us_lat "$(awk '$1 == "90%" { print $2 }' "$out")")
    p99=$(to_us_lat "$(awk '$1 == "99%" { print $2 }' "$out")")
    errs=$(grep -E 'Socket errors|Non-2xx' "$out" | tr '\n' ' ')
    if [ $rc = 0 ] && [ -n "$rps" ] && [ -n "$reqs" ] && [ "$reqs" -gt 0 ] && [ -z "$errs" ]; then
      local cpu_req other; cpu_req=$(awk -v c=$((c2 - c1)) -v r="$reqs" 'BEGIN { printf "%.0f", c / r }')
      other=$(awk -v b=$((b2 - b1)) -v c=$((c2 - c1)) -v t=$((t2 - t1)) 'BEGIN { o = (b - c) / t / 10; if (o < 0) o = 0; printf "%.1f", o }')
      printf '%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$rep" "$rps" "$p50" "$p90" "$p99" "$cpu_req" "$other" >>"$HTTP_RESULTS"
      log "http $key r$rep: req/s=$rps p50=${p50}us p99=${p99}us server_cpu=${cpu_req}ns/req cpu0_other=${other}%"
    else
      printf '%s\t%s\tfailed\t-\t-\t-\t-\t-\t-\n' "$key" "$rep" >>"$HTTP_RESULTS"
      log "http $key r$rep: FAILED (wrk status $rc) $errs"
    fi
    settle "$pid"
  }
  for rep in $(seq 1 "$REPS"); do
    for key in "${HTTP_SERVERS[@]}"; do run_wrk "$key" "$rep"; done
  done
  for key in "${HTTP_SERVERS[@]}"; do stop_server "$key"; done
  [ "${HAVE[poller-http]:-0}" = 1 ] || note "poller-http: not built (no such product yet); its HTTP row is a placeholder."
fi
now_us; BENCH_SECS=$(( (NOW_US - BENCH_START) / 1000000 ))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
[ $QUIET_WAITS -gt 0 ] && note "--wait-quiet: waited $QUIET_WAITS time(s), ${QUIET_WAITED_S} s in all, for other builds and tests to finish before a run (included in the measuring time above)."
[ $RETRIED -gt 0 ] && note "$RETRIED echo run(s) were re-run because other processes used more than ${OTHER_MAX}% of CPU 0 (all-cores points: of a CPU, over all CPUs) during them."
[ $CONTENDED -gt 0 ] && note "$CONTENDED echo run(s) kept although other processes used more than ${OTHER_MAX}% of CPU 0 (all-cores points: of a CPU, over all CPUs; retries exhausted): see the \"CPU 0 other %\" and \"other %\" columns."
cleanup

# ---------------------------------------------------------------------------------------------
# Report.
# med FILE KEYCOLS... : median of column C over ok rows matching; see calls below.
median_of() {  # median_of FILE FIELD MATCH1 MATCH2 (column 1 and 2 must equal them; col 4 = ok)
  awk -F'\t' -v f="$2" -v a="$3" -v b="$4" -v sc="$5" '
    $1 == a && (b == "" || $2 == b) && $sc == "ok" && $f != "-" && $f != "" { v[n++] = $f + 0 }
    END {
      if (n == 0) { print ""; exit }
      for (i = 1; i < n; i++) { x = v[i]; j = i - 1; while (j >= 0 && v[j] > x) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
      if (n % 2) print v[int(n / 2)]; else print (v[n / 2 - 1] + v[n / 2]) / 2
    }' "$1"
}
count_ok() { awk -F'\t' -v a="$2" -v b="$3" -v sc="$4" '$1 == a && (b == "" || $2 == b) { t++; if ($sc == "ok") k++ }
  END { printf "%d/%d", k, t }' "$1"; }
fmt_int() { awk -v v="$1" 'BEGIN { if (v == "") { print "—"; exit } s = sprintf("%.0f", v); o = "";
  while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'; }
fmt_1() { [ -z "$1" ] && echo "—" || awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
ratio() { [ -z "$1" ] || [ -z "$2" ] && { echo "—"; return; }; awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "—"; else printf "%.2f", a / b }'; }
mib() { [ -z "$1" ] || [ "$1" = - ] && { echo "—"; return; }; awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
SWIFT_V=$(swift --version 2>&1 | awk '!f && match($0, /Swift version [^ ]*/) { print substr($0, RSTART, RLENGTH); f = 1 }')
[ -n "$SWIFT_V" ] || SWIFT_V=unknown
GO_V="not installed"
command -v go >/dev/null && GO_V=$(go version | awk '{ print $3 }')
NIO_V=$(awk '/"identity" : "swift-nio"/ { f = 1 } f && /"version"/ { gsub(/[",]/, "", $3); print $3; exit }' \
  "$ROOT/Benchmarks/Package.resolved" 2>/dev/null)
WRK_V="wrk not installed"
command -v wrk >/dev/null && WRK_V=$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')
KERNEL=$(uname -r)
[ -n "$NIO_V" ] || NIO_V=unknown

REPORT="$RUN_DIR/report.md"
{
  echo "# Benchmarks: poller-echo beside raw C epoll, Go's net and SwiftNIO"
  echo
  echo "Generated by \`$ORIG_CMD\` ($MODE mode) on $(date -u '+%Y-%m-%d %H:%M UTC'); about ${BENCH_SECS} s of measuring."
  echo
  echo "- Machine: $NPROC CPUs ($CPU_MODEL), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $KERNEL, loopback only"
  echo "- Toolchains: $SWIFT_V; Go $GO_V (Debian golang-go); SwiftNIO $NIO_V; $WRK_V; cc $(cc -dumpfullversion 2>/dev/null || cc -dumpversion)"
  echo "- Method: each server started once, pinned to CPU 0 (\`taskset -c 0\`); the load generator (\`poller-loadgen\`, single-threaded epoll, verifies every echoed byte) pinned to CPU 1$([ ${#ALL_SERVERS[@]} -gt 0 ] && echo " (all-cores points: see \"All cores\")")."
  echo "  Repetitions interleaved across servers (A B C … A B C …); $REPS repetition(s) per point; each run ${WARMUP} s warm-up + ${DURATION} s measured."
  echo "  Numbers are medians across repetitions. Server CPU = ns on CPU summed over the server's threads (/proc/PID/task/*/schedstat) over the measured window, divided by round trips in it."
  echo "  \"x C\" = value / raw C epoll's value (rt/s: higher is better; latency and CPU: lower is better). RSS = VmRSS at the end of the measured window."
  echo "  \"CPU 0 other %\" = CPU 0's busy time (/proc/stat, incl. steal) minus the server's own, as % of the window: anything well above 0 means something else ran on the server's CPU and that run is suspect."
  echo "- The 10,000 idle connections are opened by \`Benchmarks/peers/idle-holder\` (a third process, pinned to CPU 1) in batches of 256 and accepted by the server before the 64 active connections start, so the accept burst stays out of the measured window; they are reset (SO_LINGER 0) after the run. (\`poller-loadgen --idle\` dials all 10,000 at once and starts its warm-up clock only after, which made the window hard to align.)"
  echo "- Descriptor limit: soft $SOFT_NOFILE, hard $HARD_NOFILE (the hard limit cannot be raised here); the server and the load generator are separate processes, so each needs ~10,100 descriptors for the idle point (the server: 10,064 connections; idle-holder: 10,000)."
  echo "- Go's GOMAXPROCS is left at its default, which follows the affinity mask: 1 under \`taskset -c 0\`$([ ${#ALL_SERVERS[@]} -gt 0 ] && echo "; the all-cores instance gets GOMAXPROCS=$NPROC explicitly")."
  echo "- Load average (1, 5, 15 min) when measuring started: $LOAD_START; when it ended: $LOAD_END$([ $WAIT_QUIET = 1 ] && echo " (--wait-quiet: every run started while no swift-build, swift-frontend, swift-test, xctest or *PackageTests* process ran)")."
  echo "- Run-to-run noise on this VM is large: compare server CPU per round trip first, rt/s second."
  echo
  echo "## Echo"
  for pt in "${POINTS[@]}"; do
    [ "${P_ALL[$pt]:-0}" = 1 ] && continue  # in "All cores" below
    echo
    echo "### ${P_TITLE[$pt]}"
    echo
    echo "| server | rt/s | x C | p50 µs | x C | p99 µs | x C | p99.9 µs | server CPU ns/rt | x C | server CPU % | CPU 0 other % | RSS MiB | runs ok |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    c_rt=$(median_of "$RESULTS" 5 "$pt" c-epoll 4); c_p50=$(median_of "$RESULTS" 6 "$pt" c-epoll 4)
    c_p99=$(median_of "$RESULTS" 8 "$pt" c-epoll 4); c_cpu=$(median_of "$RESULTS" 10 "$pt" c-epoll 4)
    for key in "${ECHO_SERVERS[@]}"; do
      echo_medians "$pt" "$key"
      if [ -z "$rt" ]; then
        echo "| ${LABEL[$key]} | **failed** | | | | | | | | | | | | $okc |"
      else
        echo "| ${LABEL[$key]} | $(fmt_int "$rt") | $(ratio "$rt" "$c_rt") | $(fmt_1 "$p50") | $(ratio "$p50" "$c_p50") | $(fmt_1 "$p99") | $(ratio "$p99" "$c_p99") | $(fmt_1 "$p999") | $(fmt_int "$cpu") | $(ratio "$cpu" "$c_cpu") | $(fmt_1 "$pct") | $(fmt_1 "$oth") | $(mib "$rss") | $okc |"
      fi
    done
    case ",$SERVERS_WANTED," in *,poller-epoll,*|*,poller-uring,*)
      [ "${HAVE[poller-echo]:-0}" = 1 ] || echo "| poller-echo (epoll, io_uring) | *not built* | | | | | | | | | | | | |" ;;
    esac
  done
  echo
  echo "### Memory"
  echo
  echo "RSS with idle connections and its peak are those of the instance that served the idle point (with read deadlines, except raw C)."
  echo
  echo "| server | RSS after start MiB | RSS with 10,000 idle + 64 active MiB | per idle connection KiB | server CPU % holding only the 10,000 idle | peak RSS (VmHWM) MiB | SIGTERM |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for key in "${ECHO_SERVERS[@]}"; do
    local_dl=$key; [ -n "${SPID[$key-dl]:-}" ] && local_dl=$key-dl
    idle_rss=$(median_of "$RESULTS" 12 idle10k "$key" 4)
    per_idle=$(awk -v r="$idle_rss" -v s="${SSTART_RSS[$local_dl]:-}" 'BEGIN { if (r == "" || s == "") print "-"; else printf "%.1f", (r - s) / 10064 }')
    exits="${SEXIT[$key]:-not started}"; [ "$local_dl" != "$key" ] && exits="$exits; with deadlines: ${SEXIT[$local_dl]:-not started}"
    idle_cpu=$(median_of "$RESULTS" 14 idle10k "$key" 4)
    echo "| ${LABEL[$key]} | $(mib "${SSTART_RSS[$key]:-}") | $(mib "$idle_rss") | $per_idle | ${idle_cpu:--} | $(mib "${SPEAK[$local_dl]:-}") | $exits |"
  done
  if [ ${#ALL_SERVERS[@]} -gt 0 ]; then
    ALL_POINTS=()
    for pt in "${POINTS[@]}"; do [ "${P_ALL[$pt]:-0}" = 1 ] && ALL_POINTS+=("$pt"); done
    # scaling KEY POINT: rt/s at the all-cores POINT / the one-core instance's rt/s at its point.
    scaling() {
      local one=${P_ONECORE[$2]} a b
      a=$(median_of "$RESULTS" 5 "$2" "$1" 4)
      b=$(median_of "$RESULTS" 5 "$one" "${ALL_BASE[$1]}" 4)
      ratio "$a" "$b"
    }
    echo
    echo "## All cores"
    echo
    echo "Every server allowed on all $NPROC CPUs (\`taskset -c $ALL_CPUS\`) and using them: raw C epoll with one thread and one SO_REUSEPORT listener per CPU (the floor, \"x C\"), Go with GOMAXPROCS=$NPROC, SwiftNIO with $NPROC event loops (one acceptor handing connections to the loops in turn), poller-echo with a PollerGroup of $NPROC pollers (\`--threads 0\`) in both accept modes: \`shared\` (one listener, connections handed to the pollers in turn) and \`reuseport\` (one SO_REUSEPORT listener per poller, the kernel spreads). The load generator runs $NPROC client threads, also allowed on all $NPROC CPUs: **this machine has $NPROC CPUs, so the load generator competes with the server for them** and rt/s is what the two share, not what the server alone could do. Server CPU per round trip is the headline; \"scaling\" = rt/s here / the same server's one-core rt/s (pinned to CPU 0, load generator on CPU 1) at the same connection count in this run. \"other %\" = CPU time on all CPUs that was neither the server's nor the load generator's, in % of one CPU."
    echo
    echo "### Headline"
    echo
    hdr="| server |"; sep="|---|"
    for pt in "${ALL_POINTS[@]}"; do hdr="$hdr server CPU ns/rt, ${P_CONN[$pt]} conns | x C |"; sep="$sep---:|---:|"; done
    for pt in "${ALL_POINTS[@]}"; do hdr="$hdr rt/s, ${P_CONN[$pt]} conns | x C |"; sep="$sep---:|---:|"; done
    for pt in "${ALL_POINTS[@]}"; do hdr="$hdr scaling, ${P_CONN[$pt]} conns |"; sep="$sep---:|"; done
    echo "$hdr"; echo "$sep"
    for key in "${ALL_SERVERS[@]}"; do
      row="| ${LABEL[$key]} |"
      for pt in "${ALL_POINTS[@]}"; do
        cpu=$(median_of "$RESULTS" 10 "$pt" "$key" 4); c_cpu=$(median_of "$RESULTS" 10 "$pt" c-epoll-all 4)
        row="$row $(fmt_int "$cpu") | $(ratio "$cpu" "$c_cpu") |"
      done
      for pt in "${ALL_POINTS[@]}"; do
        rt=$(median_of "$RESULTS" 5 "$pt" "$key" 4); c_rt=$(median_of "$RESULTS" 5 "$pt" c-epoll-all 4)
        row="$row $(fmt_int "$rt") | $(ratio "$rt" "$c_rt") |"
      done
      for pt in "${ALL_POINTS[@]}"; do row="$row $(scaling "$key" "$pt") |"; done
      echo "$row"
    done
    for pt in "${ALL_POINTS[@]}"; do
      echo
      echo "### ${P_TITLE[$pt]}"
      echo
      echo "| server | rt/s | x C | p50 µs | p99 µs | x C | p99.9 µs | server CPU ns/rt | x C | server CPU % (of 1 CPU) | load gen CPU % | other % | scaling | runs ok |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      c_rt=$(median_of "$RESULTS" 5 "$pt" c-epoll-all 4); c_p99=$(median_of "$RESULTS" 8 "$pt" c-epoll-all 4)
      c_cpu=$(median_of "$RESULTS" 10 "$pt" c-epoll-all 4)
      for key in "${ALL_SERVERS[@]}"; do
        echo_medians "$pt" "$key"
        if [ -z "$rt" ]; then
          echo "| ${LABEL[$key]} | **failed** | | | | | | | | | | | | $okc |"
        else
          echo "| ${LABEL[$key]} | $(fmt_int "$rt") | $(ratio "$rt" "$c_rt") | $(fmt_1 "$p50") | $(fmt_1 "$p99") | $(ratio "$p99" "$c_p99") | $(fmt_1 "$p999") | $(fmt_int "$cpu") | $(ratio "$cpu" "$c_cpu") | $(fmt_1 "$pct") | $(fmt_1 "$lgp") | $(fmt_1 "$oth") | $(scaling "$key" "$pt") | $okc |"
        fi
      done
    done
  fi
  if [ $DO_HTTP = 1 ]; then
    echo
    echo "## HTTP/1.1 keep-alive \"hello\""
    echo
    echo "\`wrk -t1 -c64 -d${HTTP_DURATION}s --latency\` pinned to CPU 1 after a ${HTTP_WARMUP} s warm-up run; servers pinned to CPU 0. Server CPU per request = schedstat delta over the measured wrk run / its requests. \"x Go\" = value / Go net/http's."
    echo
    echo "poller-http parses every request in full (its own streaming parser, \`Sources/HTTPParsing\`, RFC 9112): the request line (HTTP/1.0 and 1.1), header fields (token names, no obsolete folding, no control bytes), Content-Length and chunked bodies (extensions and trailers; both framings at once, differing lengths or a final coding other than chunked refused), keep-alive and pipelining, \`Expect: 100-continue\`, and the limits (414, 431, 413). wrk's requests are \`GET / HTTP/1.1\` with a Host header and no body."
    echo
    if ! command -v wrk >/dev/null; then
      echo "*Skipped: wrk is not installed.*"
    else
      echo "| server | req/s | x Go | p50 µs | p90 µs | p99 µs | x Go | server CPU ns/req | x Go | CPU 0 other % | runs ok |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      g_rps=$(median_of "$HTTP_RESULTS" 4 go-http "" 3); g_p99=$(median_of "$HTTP_RESULTS" 7 go-http "" 3)
      g_cpu=$(median_of "$HTTP_RESULTS" 8 go-http "" 3)
      for key in go-http nio-http poller-http; do
        if [ "${HAVE[$key]:-0}" != 1 ]; then
          echo "| ${LABEL[$key]} | *not built* | | | | | | | | | |"; continue
        fi
        rps=$(median_of "$HTTP_RESULTS" 4 "$key" "" 3); p50=$(median_of "$HTTP_RESULTS" 5 "$key" "" 3)
        p90=$(median_of "$HTTP_RESULTS" 6 "$key" "" 3); p99=$(median_of "$HTTP_RESULTS" 7 "$key" "" 3)
        cpu=$(median_of "$HTTP_RESULTS" 8 "$key" "" 3); oth=$(median_of "$HTTP_RESULTS" 9 "$key" "" 3); okc=$(count_ok "$HTTP_RESULTS" "$key" "" 3)
        if [ -z "$rps" ]; then
          echo "| ${LABEL[$key]} | **failed** | | | | | | | | | $okc |"
        else
          echo "| ${LABEL[$key]} | $(fmt_int "$rps") | $(ratio "$rps" "$g_rps") | $(fmt_1 "$p50") | $(fmt_1 "$p90") | $(fmt_1 "$p99") | $(ratio "$p99" "$g_p99") | $(fmt_int "$cpu") | $(ratio "$cpu" "$g_cpu") | $(fmt_1 "$oth") | $okc |"
        fi
      done
      echo
      for key in "${HTTP_SERVERS[@]}"; do echo "- ${LABEL[$key]}: ${SEXIT[$key]:-not started}"; done
    fi
  fi
  echo
  echo "## Notes"
  echo
  if [ ${#NOTES[@]} -eq 0 ]; then echo "- none"; else for n in "${NOTES[@]}"; do echo "- $n"; done; fi
  echo "- Raw logs and per-run numbers: \`${RUN_DIR#$ROOT/}/\` (not committed)."
} >"$REPORT"
cp "$REPORT" "$OUT"
echo
cat "$REPORT"
echo
log "report written to ${OUT#$ROOT/} (logs in ${RUN_DIR#$ROOT/})"
