#!/usr/bin/env bash
# Rewrites the key tables of docs/config.md from the schema in the code (`lmtune config --keys`),
# between its keys:begin and keys:end markers. A unit test fails while they differ.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lmtune=${LMTUNE_BIN:-$root/build/lmtune}
docs=$root/docs/config.md
begin='<!-- keys:begin (scripts/update-config-docs.sh) -->'
end='<!-- keys:end -->'
tables=$(mktemp)
trap 'rm -f "$tables"' EXIT
"$lmtune" config --keys >"$tables"
awk -v begin="$begin" -v end="$end" -v tables="$tables" '
  $0 == begin { print; while ((getline line < tables) > 0) print line; skipping = 1; next }
  $0 == end { skipping = 0 }
  !skipping { print }
' "$docs" >"$docs.tmp"
mv "$docs.tmp" "$docs"
