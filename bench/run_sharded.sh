#!/usr/bin/env bash
# The full lineage benchmark on a machine with many cores: the zoo built with JOBS workers, the pairs
# run as one `modeltrace bench` per A model (JOBS at a time), their rows merged, and the report
# written by one last run that finds every pair done. Same results as `make bench --no-peers`.
#   bench/run_sharded.sh [JOBS] [ZOO_FLAG]      ZOO_FLAG: empty (full zoo), --quick or --tiny
set -euo pipefail
JOBS=${1:-$(nproc)}
ZOO_FLAG=${2:-}
PY=${PY:-python3}
CACHE=${CACHE:-bench/cache}
OUT=${OUT_DIR:-bench/results/full}
DOCS=${DOCS:-docs/benchmarks/lineage.md}
ZOO="$CACHE/zoo${ZOO_FLAG:+-${ZOO_FLAG#--}}"

$PY -m modeltrace.benchmark.zoo $ZOO_FLAG --cache "$ZOO" --workers "$JOBS"
MAN="$ZOO/manifest.json"
mkdir -p "$OUT/shards"
$PY - "$MAN" > "$OUT/groups.txt" <<'PYEOF'
import json, sys
print("\n".join(sorted({p["id"].split("~")[0] for p in json.load(open(sys.argv[1]))["pairs"]})))
PYEOF
xargs -P "$JOBS" -I{} sh -c "$PY -m modeltrace bench --manifest '$MAN' --pairs '{}~*' --out '$OUT/shards/{}' \
    --no-peers --no-behaviour --no-realmodels --docs '$OUT/shards/{}/lineage.md' >'$OUT/shards/{}.log' 2>&1 \
    || echo 'shard {} failed: see $OUT/shards/{}.log'" < "$OUT/groups.txt"
cat "$OUT"/shards/*/pairs.jsonl > "$OUT/pairs.jsonl"
if [ -n "${REALMODELS:-}" ]; then REAL=(--realmodels "$REALMODELS"); else REAL=(--no-realmodels); fi
$PY -m modeltrace bench --manifest "$MAN" --out "$OUT" --no-peers --no-behaviour "${REAL[@]}" --docs "$DOCS"
