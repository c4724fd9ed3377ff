#!/usr/bin/env bash
# What a join costs, on this machine: a coordinator and three `cohort node`
# processes (fsync durability) hold RECORDS records of 100 B (tenant N = 3);
# an open loop of YCSB A runs at RATE ops/s for DURATION without a
# migration, then again while a fourth node joins. Prints the migration's
# throughput (keys/s and MB/s of sibling sets copied) and the client p50/p99
# of both runs, and writes them to OUT (default
# loadtest/results/migration.md) with the raw JSON beside it.
#
#   loadtest/migration.sh [--records 200000] [--rate 1000] [--duration 20s] [--out FILE]
set -euo pipefail

RECORDS=200000
RATE=1000
DURATION=20s
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/loadtest/results/migration.md"
while [ $# -gt 0 ]; do
    case "$1" in
        --records) RECORDS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { printf '[migration %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cd "$ROOT"
log "building release binaries"
cargo build --release -q -p cohort-cli -p cohort-loadtest
COHORT=$ROOT/target/release/cohort
LOADTEST=$ROOT/target/release/cohort-loadtest
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cohort-migration.XXXXXX")
RAW="$(dirname "$OUT")/raw"
mkdir -p "$RAW"
PIDS=()
NAMES=()
# shellcheck source=loadtest/processes.sh
. "$ROOT/loadtest/processes.sh"

NODES=()
for i in 1 2 3 4; do
    start "node$i" "$COHORT" node --id "node-$i" --data-dir "$WORK/node$i" --listen 127.0.0.1:0
    NODES+=("$(wait_line "node$i" 'listening on' | awk '{print $NF}')")
done
start coordinator "$COHORT" coordinator --id coordinator-1 --data-dir "$WORK/coordinator" \
    --metadata-backend embedded --idempotency-backend embedded \
    --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
ENDPOINT="http://$(wait_line coordinator 'listening on' | awk '{print $NF}')"
for i in 1 2 3; do
    "$COHORT" admin node add --wait --id "node-$i" --address "${NODES[$((i - 1))]}" --endpoint "$ENDPOINT" >/dev/null
done
"$COHORT" admin tenant create bench --replication 3 --endpoint "$ENDPOINT" >/dev/null

run() {
    "$LOADTEST" run --target "cohort://${ENDPOINT#http://}" --tenant bench --records "$RECORDS" \
        --key-prefix mig- --value-size 100 "$@"
}
log "loading $RECORDS records"
run --workload c --concurrency 64 --operations 1 --json "$WORK/load.json" >/dev/null
log "open loop of workload A at $RATE ops/s for $DURATION, no migration"
run --skip-load --workload a --concurrency 256 --rate "$RATE" --duration "$DURATION" --warmup 2s \
    --label steady --json "$RAW/migration-steady.json" >/dev/null

log "the same open loop while node-4 joins"
ID=$("$COHORT" admin node add --json --id node-4 --address "${NODES[3]}" --endpoint "$ENDPOINT" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["migration"]["id"])')
run --skip-load --workload a --concurrency 256 --rate "$RATE" --duration "$DURATION" --warmup 0s \
    --label migrating --json "$RAW/migration-during.json" >/dev/null
"$COHORT" admin migration wait "$ID" --json --endpoint "$ENDPOINT" >"$RAW/migration-result.json"

python3 - "$RAW" "$OUT" "$RECORDS" "$RATE" "$DURATION" <<'PY'
import json, sys, os
raw, out, records, rate, duration = sys.argv[1:]
m = json.load(open(os.path.join(raw, "migration-result.json")))[0]
def latency(name):
    doc = json.load(open(os.path.join(raw, name)))
    a = doc["all"]
    return doc["ops_per_sec"], a["p50_us"], a["p99_us"], doc.get("errors", 0)
took = (m["updated_at_ms"] - m["created_at_ms"]) / 1000.0
keys_s = m["migrated"] / took if took else 0
mb_s = m["bytes_copied"] / took / 1e6 if took else 0
lines = [
    "# What a join costs",
    "",
    f"`loadtest/migration.sh --records {records} --rate {rate} --duration {duration}`: a coordinator and",
    "three `cohort node` processes (fsync) on this machine, tenant N = 3, records of 100 B; node-4 joins.",
    "",
    f"- migration {m['id']}: {m['state']}, {m['ranges_done']}/{m['ranges_total']} ranges, "
    f"{m['migrated']} keys and {m['bytes_copied']} bytes of sibling sets copied in {took:.1f} s: "
    f"**{keys_s:,.0f} keys/s, {mb_s:.2f} MB/s** (default budget 32 MiB/s)",
    "",
    "| open loop of YCSB A | ops/s | p50 | p99 | errors | raw JSON |",
    "|---|--:|--:|--:|--:|---|",
]
steady, during = latency("migration-steady.json"), latency("migration-during.json")
for label, (ops, p50, p99, errors), name in [("without a migration", steady, "steady"), ("while node-4 joins", during, "during")]:
    lines.append(f"| {label} | {ops:,.0f} | {p50} µs | {p99} µs | {errors} | `raw/migration-{name}.json` |")
lines += ["", f"p99 while migrating / without: **{during[2] / steady[2]:.2f}×** (goal ≤ 2×)"]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
