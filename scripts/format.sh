#!/usr/bin/env bash
# The Swift sources in the project's style (.swift-format: 4 spaces, 140 columns), with the
# toolchain's swift-format.
#
#   scripts/format.sh           rewrite the files in place
#   scripts/format.sh --check   change nothing; fail (exit 1) on any finding: what CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=(Sources Tests Examples Integrations/Sources Integrations/Tests Benchmarks/Sources Benchmarks/Micro/Benchmarks)
if [ "${1:-}" = "--check" ]; then
  if ! swift format lint --strict -r "${DIRS[@]}"; then
    echo "format: swift format lint found the above; scripts/format.sh rewrites the files" >&2
    exit 1
  fi
  echo "format: swift format lint --strict: no finding"
else
  swift format format -i -r "${DIRS[@]}"
fi
