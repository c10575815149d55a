# Sourced by bench.sh and soak.sh: every PID a script starts is tracked until reaped, and
# whatever is still tracked is ended (SIGTERM, up to 3 s, then SIGKILL) by
# end_tracked_processes, which the scripts call from their EXIT trap. A reaped PID is
# untracked at once, so a reused PID is never signalled.
declare -A PIDS=()
track() { PIDS[$1]=1; }
reap() { wait "$1" 2>/dev/null; local st=$?; unset "PIDS[$1]"; return $st; }
end_tracked_processes() {
  local pid i alive
  for pid in "${!PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for i in $(seq 1 30); do
    alive=0
    for pid in "${!PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${!PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  PIDS=()
}
