#!/usr/bin/env bash
# The whole test suite, every behavioural test on both backends (epoll and io_uring; the
# io_uring cases are reported as skipped, with the reason, where io_uring cannot run).
# Then the same suite under ThreadSanitizer. Installs liburing-dev first if it is missing.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    the plain suite only, no sanitizer
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh

quick=0
[ "${1:-}" = "--quick" ] && quick=1

echo "== build (debug, warnings are errors)"
swift build --build-tests -Xswiftc -warnings-as-errors 2>&1 | tail -n 3

echo "== io_uring on this machine"
swift run -q poller-demo io_uring >/dev/null 2>&1 && echo "io_uring: available" ||
  echo "io_uring: unavailable here; its test cases will be skipped with the reason"

echo "== tests (both backends)"
swift test --skip-build --no-parallel 2>&1 | tee .test-output.log | grep -vE '^(◇|↳) |^Test Suite|^\s+Executed' || true
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || { echo "tests failed (exit $status)"; exit "$status"; }

if [ "$quick" = 0 ]; then
  echo "== tests under ThreadSanitizer (both backends)"
  swift test --sanitize=thread --scratch-path .build-tsan --no-parallel 2>&1 | tee .tsan-output.log |
    grep -E 'WARNING: ThreadSanitizer|ThreadSanitizer: reported|✘|Test run with' || true
  status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || { echo "ThreadSanitizer run failed (exit $status)"; exit "$status"; }
fi
grep -E 'Test run with' .test-output.log | tail -n 1
