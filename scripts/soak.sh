#!/usr/bin/env bash
# Reliability soak: poller-echo under poller-soak (Sources/poller-soak) for each backend.
#
#   scripts/soak.sh              60 s active phase per backend
#   scripts/soak.sh --short      CI form: 10 s active phase per backend
#
# Options:
#   --backend epoll|io_uring|both   backend(s) to soak, one after the other (default both)
#   --connections N                 concurrent client connections (default 10000)
#   --duration S                    active phase seconds (overrides --short / the default 60)
#   --seed N                        client seed (default 1)
#   --no-build                      use the binaries already built
#
# Per backend: poller-echo starts with --idle-timeout 8 (after raising `ulimit -n` to the hard
# limit); poller-soak keeps N connections in random echo conversations (early closes, resets,
# idles past the server's timeout) for the active phase, then holds all N open and silent for
# a 5 s idle phase, then closes them. Checked:
#   - the client's verdict (no corrupted or lost bytes, no unexpected server closes);
#   - the server's open fd count before the client starts == after it exits (settles <= 5 s);
#   - server RSS (VmRSS) in the first half (once all connections are open) and the second half
#     of the active phase: growth <= 50% (<= 100% for runs under 30 s, whose first half is
#     still warm-up: each busy connection's buffer grows once from 4 KiB to 64 KiB);
#   - server CPU time (utime+stime from /proc/PID/stat) over the client's idle phase: reported
#     (should be near zero: no busy wake-ups with N parked deadlines);
#   - SIGTERM: the server exits 0 and prints its final line; `parked W` must be 0.
# Every process this script starts is ended by its PID on exit. Loopback (127.0.0.1) only.
set -uo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=60 DURATION_SET='' BACKENDS="epoll io_uring" CONNECTIONS=10000 SEED=1 DO_BUILD=1
IDLE_TIMEOUT=8 IDLE_PHASE=5
while [ $# -gt 0 ]; do
  case "$1" in
    --short) DURATION=10 ;;
    --backend)
      case "${2:-}" in
        epoll|io_uring) BACKENDS=$2 ;;
        both) BACKENDS="epoll io_uring" ;;
        *) echo "soak: --backend needs epoll, io_uring or both" >&2; exit 2 ;;
      esac
      shift ;;
    --connections) CONNECTIONS=${2:?}; shift ;;
    --duration) DURATION_SET=${2:?}; shift ;;
    --seed) SEED=${2:?}; shift ;;
    --no-build) DO_BUILD=0 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$DURATION_SET" ] && DURATION=$DURATION_SET

log() { printf 'soak: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Clean-up: every PID started here is tracked until reaped; whatever is left is ended on exit.
source "$ROOT/scripts/tracked-processes.sh"
WORK=$(mktemp -d /tmp/poller-soak.XXXXXX)
cleanup() {
  end_tracked_processes
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
if [ $DO_BUILD = 1 ]; then
  for product in poller-echo poller-soak; do
    log "building $product (release)"
    swift build -c release --product "$product" >"$WORK/build.log" 2>&1 || {
      cat "$WORK/build.log" >&2; log "build of $product failed"; exit 1; }
  done
fi
BIN=$(swift build -c release --show-bin-path 2>/dev/null) || BIN="$ROOT/.build/release"
ECHO="$BIN/poller-echo" SOAK="$BIN/poller-soak"
for b in "$ECHO" "$SOAK"; do [ -x "$b" ] || { log "missing $b"; exit 1; }; done

HARD=$(ulimit -Hn)
ulimit -n "$HARD" || { log "cannot raise ulimit -n to $HARD"; exit 1; }
if [ "$HARD" != unlimited ] && [ "$HARD" -lt $((CONNECTIONS + 64)) ]; then
  log "ulimit -n hard limit $HARD is too low for $CONNECTIONS connections"; exit 1
fi
CLK_TCK=$(getconf CLK_TCK)

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $(( t / 1000 )); }  # bash >= 5
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }  # utime+stime
# No `| head` in pipelines here: under pipefail the writer's SIGPIPE fails the pipeline at random.
kv() { [[ " $2" =~ [[:space:]]$1=([^ ]*) ]] && echo "${BASH_REMATCH[1]}"; }

declare -A R=()   # results: R[backend:key]
FAILED=0

soak_one() {
  local backend=$1 dir="$WORK/$1" fails=()
  mkdir -p "$dir"
  log "[$backend] starting poller-echo (idle timeout ${IDLE_TIMEOUT}s)"
  "$ECHO" --host 127.0.0.1 --port 0 --backend "$backend" --idle-timeout "$IDLE_TIMEOUT" \
    >"$dir/server.out" 2>"$dir/server.err" &
  local spid=$!
  PIDS[$spid]=1
  local port='' i
  for i in $(seq 1 100); do
    port=$(sed -n 's/^poller-echo: listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p;T;q' "$dir/server.out" 2>/dev/null)
    [ -n "$port" ] && break
    alive "$spid" || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    log "[$backend] server did not start"; cat "$dir/server.err" >&2
    R[$backend:verdict]=FAIL R[$backend:failures]="server did not start"; FAILED=1
    kill -KILL "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; unset "PIDS[$spid]"
    return
  fi
  R[$backend:listen]=$(head -1 "$dir/server.out" | sed 's/^poller-echo: listening on //')
  log "[$backend] ${R[$backend:listen]}"
  sleep 0.2
  local fd_before; fd_before=$(fd_count "$spid")
  local rss_start; rss_start=$(rss_kb "$spid")

  log "[$backend] poller-soak: $CONNECTIONS connections, ${DURATION}s active, ${IDLE_PHASE}s idle phase"
  "$SOAK" --host 127.0.0.1 --port "$port" --connections "$CONNECTIONS" --duration "$DURATION" \
    --idle-timeout "$IDLE_TIMEOUT" --idle-phase "$IDLE_PHASE" --seed "$SEED" \
    >"$dir/client.out" 2>"$dir/client.err" &
  local cpid=$!
  PIDS[$cpid]=1
  local t0; t0=$(now_ms)
  # Sample while the client runs. RSS: the maximum over each half of the active phase, the
  # first half counted only once the client has opened all its connections (its "ramp
  # complete" marker; before that RSS measures the ramp, not a leak); if the ramp ends after
  # the half, the first sample after it stands for the first half. CPU time: across the
  # client's idle-phase markers.
  local dur_ms half_ms limit_ms rss1=0 rss2=0 cpu_a='' cpu_b='' t_a='' t_b='' e r ramp_ms=''
  dur_ms=$(awk -v d="$DURATION" 'BEGIN { printf "%d", d * 1000 }')
  half_ms=$(( dur_ms / 2 ))
  limit_ms=$(( dur_ms + (IDLE_TIMEOUT + IDLE_PHASE + 60) * 1000 ))
  while alive "$cpid"; do
    e=$(( $(now_ms) - t0 ))
    if [ -z "$ramp_ms" ] && grep -q 'ramp complete' "$dir/client.err" 2>/dev/null; then ramp_ms=$e; fi
    if [ -z "$cpu_a" ] && grep -q 'idle phase begin' "$dir/client.err" 2>/dev/null; then
      cpu_a=$(cpu_ticks "$spid"); t_a=$(now_ms)
    fi
    if [ -n "$cpu_a" ] && [ -z "$cpu_b" ] && grep -q 'idle phase end' "$dir/client.err" 2>/dev/null; then
      cpu_b=$(cpu_ticks "$spid"); t_b=$(now_ms)
    fi
    if [ -z "$cpu_a" ] && [ -n "$ramp_ms" ] && [ $e -lt $dur_ms ]; then
      r=$(rss_kb "$spid"); r=${r:-0}
      if [ $e -lt $half_ms ] || [ "$rss1" = 0 ]; then
        [ "$r" -gt "$rss1" ] && rss1=$r
      else
        [ "$r" -gt "$rss2" ] && rss2=$r
      fi
    fi
    if [ $e -gt $limit_ms ]; then
      log "[$backend] client still running after $(( limit_ms / 1000 ))s: killing it"
      kill -KILL "$cpid" 2>/dev/null
      fails+=("client hung")
      break
    fi
    sleep 0.05
  done
  wait "$cpid"; local crc=$?
  unset "PIDS[$cpid]"
  local cline; cline=$(tail -1 "$dir/client.out" 2>/dev/null)
  R[$backend:client_rc]=$crc
  R[$backend:client]=$cline
  [ $crc = 0 ] || fails+=("client exit $crc")
  if grep -q '^poller-soak: ' "$dir/client.err"; then
    grep -v -e 'idle phase' -e 'ramp complete' -e 'progress' "$dir/client.err" | sed -n "1,20s/^/soak: [$backend] client: /p" >&2
  fi

  # Server fd count must settle back to where it was.
  local fd_after i
  for i in $(seq 1 50); do
    fd_after=$(fd_count "$spid")
    [ "$fd_after" = "$fd_before" ] && break
    sleep 0.1
  done
  R[$backend:fd_before]=$fd_before R[$backend:fd_after]=$fd_after R[$backend:fd_pair]="$fd_before/$fd_after"
  [ "$fd_after" = "$fd_before" ] || fails+=("fd count $fd_before -> $fd_after")

  R[$backend:rss_start]=$rss_start R[$backend:rss1]=$rss1 R[$backend:rss2]=$rss2
  R[$backend:ramp_s]=$( [ -n "$ramp_ms" ] && awk -v m="$ramp_ms" 'BEGIN { printf "%.1f", m / 1000 }' || echo n/a)
  R[$backend:rss_end]=$(rss_kb "$spid")
  if [ "$rss1" -gt 0 ] && [ "$rss2" -gt 0 ]; then
    R[$backend:rss_growth]=$(awk -v a="$rss1" -v b="$rss2" 'BEGIN { printf "%+.1f%%", (b - a) * 100 / a }')
    limit=1.5
    awk -v d="$DURATION" 'BEGIN { exit !(d < 30) }' && limit=2.0
    awk -v a="$rss1" -v b="$rss2" -v l="$limit" 'BEGIN { exit !(b > a * l) }' && fails+=("RSS growth ${R[$backend:rss_growth]}")
  else
    R[$backend:rss_growth]=n/a
    fails+=("RSS not sampled")
  fi

  if [ -n "$cpu_a" ] && [ -n "$cpu_b" ]; then
    R[$backend:idle_cpu_ms]=$(( (cpu_b - cpu_a) * 1000 / CLK_TCK ))
    R[$backend:idle_window_s]=$(awk -v a="$t_a" -v b="$t_b" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
  else
    R[$backend:idle_cpu_ms]=n/a R[$backend:idle_window_s]=n/a
    fails+=("idle phase not observed")
  fi

  # Stop the server; it must exit 0 and print its final line.
  kill -TERM "$spid" 2>/dev/null
  local srcrc=''
  for i in $(seq 1 150); do
    alive "$spid" || break
    sleep 0.1
  done
  if alive "$spid"; then
    log "[$backend] server did not exit within 15 s of SIGTERM: killing it"
    kill -KILL "$spid" 2>/dev/null
    fails+=("server hung on SIGTERM")
  fi
  wait "$spid"; srcrc=$?
  unset "PIDS[$spid]"
  R[$backend:server_rc]=$srcrc
  [ "$srcrc" = 0 ] || fails+=("server exit $srcrc")
  local final; final=$(grep '^poller-echo: stopped' "$dir/server.out" | tail -1)
  R[$backend:server_final]=${final:-"(none)"}
  [ -n "$final" ] || fails+=("no final server line")
  local parked; parked=$(sed -n 's/.*parked \([0-9][0-9]*\).*/\1/p' <<<"$final")
  R[$backend:parked]=${parked:-n/a}
  if [ -n "$parked" ] && [ "$parked" != 0 ]; then fails+=("parked $parked"); fi
  if [ -n "$(grep -v -e '^poller-echo: stopping$' "$dir/server.err")" ]; then
    grep -v -e '^poller-echo: stopping$' "$dir/server.err" | sort | uniq -c | sort -rn \
      | sed -n "1,10s/^/soak: [$backend] server stderr: /p" >&2
  fi

  if [ ${#fails[@]} = 0 ]; then
    R[$backend:verdict]=PASS R[$backend:failures]=-
  else
    R[$backend:verdict]=FAIL
    R[$backend:failures]=$(IFS=';'; echo "${fails[*]}")
    FAILED=1
  fi
  log "[$backend] ${R[$backend:verdict]} ${R[$backend:failures]}"
}

for backend in $BACKENDS; do soak_one "$backend"; done

# ---------------------------------------------------------------------------------------------
echo
echo "Soak: $CONNECTIONS connections, ${DURATION}s active + ${IDLE_PHASE}s idle phase, server idle timeout ${IDLE_TIMEOUT}s, seed $SEED"
row() {
  local label=$1 key=$2 b v
  printf '  %-28s' "$label"
  for b in $BACKENDS; do
    v=${R[$b:$key]:-n/a}
    printf ' %-22s' "$v"
  done
  printf '\n'
}
ckv() {  # a client key as a pseudo-result
  local b
  for b in $BACKENDS; do R[$b:c_$1]=$(kv "$1" "${R[$b:client]:-}"); R[$b:c_$1]=${R[$b:c_$1]:-n/a}; done
  row "$2" "c_$1"
}
printf '  %-28s' ''; for b in $BACKENDS; do printf ' %-22s' "$b"; done; printf '\n'
row "verdict" verdict
ckv connections_opened "connections opened"
ckv conversations "conversations (round trips)"
ckv bytes_echoed "bytes echoed (verified)"
ckv bytes_corrupted "bytes corrupted"
ckv bytes_lost "bytes lost"
ckv early_closes "early closes"
ckv resets "resets"
ckv idles_started "idles started"
ckv idle_closed_by_server "idle closed by server"
ckv idle_not_closed "idle not closed"
ckv connect_failures "connect failures"
ckv stalls "stalled messages"
ckv unexpected_server_closes "unexpected server closes"
ckv idle_phase_connections "idle-phase connections"
row "client exit" client_rc
row "server fds before/after" fd_pair
row "client ramp complete (s)" ramp_s
row "server RSS start (KiB)" rss_start
row "server RSS 1st half (KiB)" rss1
row "server RSS 2nd half (KiB)" rss2
row "server RSS growth" rss_growth
row "server RSS end (KiB)" rss_end
row "idle-phase window (s)" idle_window_s
row "idle-phase server CPU (ms)" idle_cpu_ms
row "server exit" server_rc
row "parked at end" parked
row "failures" failures
echo
for b in $BACKENDS; do
  echo "  [$b] client: ${R[$b:client]:-(none)}"
  echo "  [$b] server: ${R[$b:server_final]:-(none)}"
done
exit $FAILED
