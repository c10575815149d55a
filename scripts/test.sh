#!/usr/bin/env bash
# The format check (swift format lint, scripts/format.sh --check), then the whole test suite,
# every behavioural test on both backends (epoll and io_uring; the io_uring cases are reported
# as skipped, with the reason, where io_uring cannot run), then
# the same suite on a group of two pollers (POLLER_THREADS=2: the test helpers put each test
# on a member of a PollerGroup; skipped with the reason on one CPU), then the Integrations
# package (the ecosystem's packages; the root package must declare none), then the same suite
# under ThreadSanitizer and under AddressSanitizer, then the short soak
# (10,000 connections against poller-echo, 10 s per backend), then the DocC documentation
# of both libraries, which must build without a warning (scripts/docs.sh). Installs liburing-dev first if
# it is missing.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    the plain suite only (on one poller, then on a group of two)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh

quick=0
[ "${1:-}" = "--quick" ] && quick=1

echo "== the scripts (no SIGPIPE-prone pipelines; ensure-deps 50 times)"
bash scripts/check-scripts.sh

echo "== the Swift sources' format (swift format lint --strict, .swift-format)"
bash scripts/format.sh --check

echo "== build (debug, warnings are errors)"
swift build --build-tests -Xswiftc -warnings-as-errors 2>&1 | tail -n 3

echo "== the README's examples"
swift run -q example-go-style
swift run -q example-swift-style

echo "== io_uring on this machine"
swift run -q poller-demo io_uring >/dev/null 2>&1 && echo "io_uring: available" ||
  echo "io_uring: unavailable here; its test cases will be skipped with the reason"

# Swift Testing prints a line per test start; keep results, skips and failures.
show() { grep -vE '^(◇|↳) |^Test Suite|^[[:space:]]+Executed' "$1" || true; }

echo "== tests (both backends)"
set +e
swift test --skip-build --no-parallel >.test-output.log 2>&1
status=$?
set -e
show .test-output.log
[ "$status" = 0 ] || { echo "tests failed (exit $status)"; exit "$status"; }

echo "== tests on a group of two pollers (POLLER_THREADS=2, both backends)"
set +e
POLLER_THREADS=2 swift test --skip-build --no-parallel >.test-group-output.log 2>&1
status=$?
set -e
show .test-group-output.log
[ "$status" = 0 ] || { echo "tests on a group of two pollers failed (exit $status)"; exit "$status"; }

echo "== the root package fetches nothing: a package using Poller or PollerNet builds no other package"
deps=$(swift package show-dependencies 2>&1)
case "$deps" in
  *"No external dependencies found"*) echo "no external dependencies" ;;
  *) echo "Package.swift declares dependencies; they belong in Integrations/Package.swift:"; echo "$deps"; exit 1 ;;
esac

echo "== the integrations package (swift-service-lifecycle, swift-log, swift-system, swift-argument-parser)"
swift build --package-path Integrations --build-tests -Xswiftc -warnings-as-errors 2>&1 | tail -n 3
set +e
swift test --package-path Integrations --skip-build --no-parallel >.integrations-output.log 2>&1
status=$?
set -e
show .integrations-output.log
[ "$status" = 0 ] || { echo "integrations tests failed (exit $status)"; exit "$status"; }

if [ "$quick" = 0 ]; then
  echo "== tests under ThreadSanitizer (both backends)"
  set +e
  TSAN_OPTIONS="suppressions=$PWD/scripts/tsan-suppressions.txt" \
    swift test --sanitize=thread --scratch-path .build-tsan --no-parallel >.tsan-output.log 2>&1
  status=$?
  set -e
  grep -E 'WARNING: ThreadSanitizer|ThreadSanitizer: reported|SUMMARY|✘|Test run with' .tsan-output.log || true
  [ "$status" = 0 ] || { echo "ThreadSanitizer run failed (exit $status)"; exit "$status"; }

  # XCTest's own allocations trip LeakSanitizer, so XCTest is left out (Swift Testing only).
  echo "== tests under AddressSanitizer (both backends)"
  set +e
  swift test --sanitize=address --disable-xctest --scratch-path .build-asan --no-parallel >.asan-output.log 2>&1
  status=$?
  set -e
  grep -E 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|SUMMARY|✘|Test run with' .asan-output.log || true
  [ "$status" = 0 ] || { echo "AddressSanitizer run failed (exit $status)"; exit "$status"; }

  echo "== short soak (both backends)"
  bash scripts/soak.sh --short

  echo "== documentation (DocC, warnings are errors)"
  bash scripts/docs.sh
fi
echo "== result"
grep -E 'Test run with' .test-output.log | tail -n 1
grep -E 'Test run with' .test-group-output.log | tail -n 1
