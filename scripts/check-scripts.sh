#!/usr/bin/env bash
# Regression check for the scripts themselves (issue 11, item 1: "ensure-deps fails about one
# run in ten on a fresh machine"). Under `set -o pipefail`, `producer | grep -q` and
# `producer | head` fail at random: the reader exits early, the producer dies of SIGPIPE,
# and the pipeline reports that death. So:
#   1. no script may pipe into `grep -q`, `grep -m`, `head` or `sed ...q` (comments aside);
#   2. (and the README's examples match Examples/*, which the build compiles;
#      and no plain Mutex.withLock in Sources, see below);
#   3. scripts/ensure-deps.sh must succeed 50 times in a row on a machine where it succeeds once.
# Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

bad=0
for f in scripts/*.sh .ci/run; do
  # Strip comments, then look for a pipe into an early-exiting reader.
  hits=$(sed -e 's/^[[:space:]]*#.*$//' -e 's/[[:space:]]#[[:space:]].*$//' "$f" |
    grep -nE '\|[[:space:]]*(grep[[:space:]]+(-[a-zA-Z]*[qm]|--quiet|--max-count)|head([[:space:]]|$))' || true)
  if [ -n "$hits" ]; then
    echo "check-scripts: $f pipes into an early-exiting reader (SIGPIPE under pipefail):" >&2
    echo "$hits" | sed "s|^|  $f:|" >&2
    bad=1
  fi
done
[ "$bad" = 0 ] || exit 1

# The README's (and the DocC articles') code blocks are compiled as Examples/* and the
# Integrations package's example service; the lines between the markers there must appear
# verbatim in the README or an article, or the docs show code nobody compiles.
for f in Examples/*/main.swift Integrations/Sources/poller-service/*.swift; do
  block=$(sed -n '/^\/\/ README begin$/,/^\/\/ README end$/p' "$f" | sed '1d;$d')
  [ -n "$block" ] || continue
  if ! python3 -c 'import sys, glob; docs = ["README.md"] + glob.glob("Sources/*/*.docc/*.md"); sys.exit(0 if any(sys.argv[1] in open(d).read() for d in docs) else 1)' "$block"; then
    echo "check-scripts: no copy of $f's example in the README or a DocC article matches the compiled example" >&2
    exit 1
  fi
done

# Every Mutex critical section in Sources goes through withLockAnnotated (AnnotatedLock.swift):
# Synchronization's Mutex locks inside the uninstrumented runtime, so under ThreadSanitizer a
# plain withLock shows as a data race (found in CI: ServeRun.admit, Serving.swift).
plain=$(grep -rnE '\.withLock[[:space:]]*[({]' Sources --include='*.swift' | grep -v '^Sources/Poller/AnnotatedLock.swift:' || true)
if [ -n "$plain" ]; then
  echo "check-scripts: use withLockAnnotated, not withLock, in Sources (TSan cannot see Mutex):" >&2
  echo "$plain" >&2
  exit 1
fi

for i in $(seq 1 50); do
  if ! bash scripts/ensure-deps.sh >/dev/null 2>"${TMPDIR:-/tmp}/ensure-deps.err"; then
    echo "check-scripts: scripts/ensure-deps.sh failed on run $i of 50:" >&2
    cat "${TMPDIR:-/tmp}/ensure-deps.err" >&2
    exit 1
  fi
done
echo "check-scripts: no pipe into an early-exiting reader; ensure-deps.sh passed 50 of 50 runs"
