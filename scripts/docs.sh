#!/usr/bin/env bash
# Builds the DocC documentation of the two libraries (Poller, PollerNet) from their catalogs
# and symbol graphs with the toolchain's `docc`, failing on any warning: an unresolved
# ``link``, an undocumented parameter, an ambiguous symbol. Archives land in
# .build-docs/archives/ (open them with `docc preview`, or serve the folders).
#
#   scripts/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh

command -v docc >/dev/null || { echo "docs: no docc in the toolchain; skipped"; exit 0; }
scratch=.build-docs
graphs=$scratch/symbol-graphs
# The graphs are kept between runs: a build with nothing to recompile does not write them again.
rm -rf "$scratch/archives"
mkdir -p "$graphs" "$scratch/archives"
swift build --scratch-path "$scratch" --target PollerNet \
  -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc "$PWD/$graphs" 2>&1 | tail -n 1

for module in Poller PollerNet; do
  rm -rf "$graphs/$module" && mkdir -p "$graphs/$module"
  cp "$graphs/$module.symbols.json" "$graphs/$module/"
  docc convert "Sources/$module/$module.docc" \
    --additional-symbol-graph-dir "$graphs/$module" \
    --fallback-display-name "$module" --fallback-bundle-identifier "$module" \
    --output-path "$scratch/archives/$module.doccarchive" --warnings-as-errors >"$scratch/$module.log" 2>&1 || {
      cat "$scratch/$module.log"
      echo "docs: $module has documentation warnings"
      exit 1
    }
  echo "docs: $module built without warnings ($scratch/archives/$module.doccarchive)"
done
