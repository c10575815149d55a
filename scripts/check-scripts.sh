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
# Integrations package's example service; the lines between each pair of markers there (the
# markers may be indented, as inside a type: the block is compared with that indentation
# removed) must appear verbatim in the README or an article, or the docs show code nobody
# compiles.
if ! python3 - Examples/*/main.swift Integrations/Sources/poller-service/*.swift <<'PY'
import glob, re, sys
docs = "".join(open(d).read() for d in ["README.md"] + glob.glob("Sources/*/*.docc/*.md"))
bad = 0
for path in sys.argv[1:]:
    block, indent = None, ""
    for line in open(path).read().split("\n"):
        marker = re.fullmatch(r"(\s*)// README (begin|end)", line)
        if marker and marker.group(2) == "begin":
            block, indent = [], marker.group(1)
        elif marker and block is not None:
            text = "\n".join(l[len(indent):] if l.startswith(indent) else l for l in block)
            if text not in docs:
                print(f"check-scripts: no copy of {path}'s example in the README or a DocC article matches the compiled example:", file=sys.stderr)
                print(text.split("\n")[0], file=sys.stderr)
                bad = 1
            block = None
        elif block is not None:
            block.append(line)
sys.exit(bad)
PY
then
  exit 1
fi

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
