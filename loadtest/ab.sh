#!/usr/bin/env bash
# Two builds of Cohort side by side, in one run, on one shape: `procs` (a
# `cohort coordinator` and three `cohort node` processes, the default) or
# `dev` (`cohort dev`, all in one process); fsync, one runtime worker per
# process unless --workers says otherwise. For each round
# and each build, a fresh cluster loads RECORDS records and runs YCSB A at 64
# in flight, YCSB C at 64 in flight and YCSB A at 1 in flight. The builds
# alternate from round to round; prints every run and the medians.
#
#   loadtest/ab.sh OLD_BIN_DIR NEW_BIN_DIR [--rounds 3] [--records 10000] [--duration 5s]
#                  [--workers N|default] [--shape procs|dev]
#
# Each BIN_DIR holds a `cohort` and a `cohort-loadtest` binary, e.g. a
# worktree's target/release.
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
OLD=$1
NEW=$2
shift 2
ROUNDS=3
RECORDS=10000
DURATION=5s
WORKERS=1
SHAPE=procs
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --records) RECORDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --shape) SHAPE=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$SHAPE" in procs | dev) ;; *) echo "--shape is procs or dev, not $SHAPE" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[ab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cohort-ab.XXXXXX")
PIDS=()
NAMES=()
# shellcheck source=loadtest/processes.sh
. "$ROOT/loadtest/processes.sh"

# one LABEL BIN_DIR ROUND: a fresh cluster of BIN_DIR's build, both loads.
one() {
    local label=$1 bin=$2 round=$3 dir="$WORK/$1-$3" i nodes=() endpoint
    mkdir -p "$dir"
    local workers=()
    [ "$WORKERS" = default ] || workers=(TOKIO_WORKER_THREADS="$WORKERS")
    if [ "$SHAPE" = dev ]; then
        start "$label$round-dev" env "${workers[@]}" "$bin/cohort" dev --data-dir "$dir/dev" \
            --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
        endpoint=$(wait_line "$label$round-dev" '^  API:' | awk '{print $2}')
    else
        for i in 1 2 3; do
            start "$label$round-node$i" env "${workers[@]}" "$bin/cohort" node --id "node-$i" \
                --data-dir "$dir/node$i" --listen 127.0.0.1:0
            nodes+=("$(wait_line "$label$round-node$i" 'listening on' | awk '{print $NF}')")
        done
        start "$label$round-coordinator" env "${workers[@]}" "$bin/cohort" coordinator --id c1 \
            --data-dir "$dir/coordinator" --metadata-backend embedded --idempotency-backend embedded \
            --listen 127.0.0.1:0 --metrics-listen ""
        endpoint="http://$(wait_line "$label$round-coordinator" 'listening on' | awk '{print $NF}')"
        for i in 1 2 3; do
            "$bin/cohort" admin node add --wait --id "node-$i" --address "${nodes[$((i - 1))]}" --endpoint "$endpoint" >/dev/null
        done
    fi
    "$bin/cohort" admin tenant create bench --replication 3 --endpoint "$endpoint" >/dev/null
    local target="cohort://${endpoint#http://}"
    "$bin/cohort-loadtest" run --target "$target" --tenant bench --records "$RECORDS" --workload a \
        --concurrency 64 --duration "$DURATION" --warmup 1s --json "$WORK/$label-$round-64.json" >/dev/null
    "$bin/cohort-loadtest" run --skip-load --target "$target" --tenant bench --records "$RECORDS" --workload c \
        --concurrency 64 --duration "$DURATION" --warmup 1s --json "$WORK/$label-$round-c64.json" >/dev/null
    "$bin/cohort-loadtest" run --skip-load --target "$target" --tenant bench --records "$RECORDS" --workload a \
        --concurrency 1 --duration "$DURATION" --warmup 1s --json "$WORK/$label-$round-1.json" >/dev/null
    for i in "${!NAMES[@]}"; do
        case "${NAMES[$i]}" in "$label$round-"*) kill -TERM "${PIDS[$i]}" 2>/dev/null || true; wait "${PIDS[$i]}" 2>/dev/null || true ;; esac
    done
    python3 - "$WORK/$label-$round-64.json" "$WORK/$label-$round-1.json" "$label" "$WORK/$label-$round-c64.json" <<'PY'
import json, sys
busy, single, label = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
reads = json.load(open(sys.argv[4]))
update = single["operations"].get("update", {})
read = single["operations"].get("read", {})
print(f"{label}: A@64 {busy['ops_per_sec']:.0f} ops/s; C@64 {reads['ops_per_sec']:.0f} ops/s; "
      f"A@1 {single['ops_per_sec']:.0f} ops/s, update p50 {update.get('p50_us', 0)} us, read p50 {read.get('p50_us', 0)} us")
PY
}

for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order=(old new); else order=(new old); fi
    for label in "${order[@]}"; do
        if [ "$label" = old ]; then bin=$OLD; else bin=$NEW; fi
        log "round $round: $label"
        one "$label" "$bin" "$round"
    done
done
python3 - "$WORK" <<'PY'
import glob, json, os, statistics, sys
work = sys.argv[1]
for label in ("old", "new"):
    busy = [json.load(open(f))["ops_per_sec"] for f in glob.glob(os.path.join(work, f"{label}-*-64.json"))]
    reads = [json.load(open(f))["ops_per_sec"] for f in glob.glob(os.path.join(work, f"{label}-*-c64.json"))]
    single = [json.load(open(f)) for f in glob.glob(os.path.join(work, f"{label}-*-1.json"))]
    p50 = [s["operations"].get("update", {}).get("p50_us", 0) for s in single]
    read_p50 = [s["operations"].get("read", {}).get("p50_us", 0) for s in single]
    print(f"{label}: median A@64 {statistics.median(busy):.0f} ops/s over {len(busy)} runs {sorted(round(b) for b in busy)}; "
          f"median C@64 {statistics.median(reads):.0f} ops/s {sorted(round(r) for r in reads)}; "
          f"median update p50 at 1 in flight {statistics.median(p50):.0f} us {sorted(p50)}; "
          f"median read p50 at 1 in flight {statistics.median(read_p50):.0f} us {sorted(read_p50)}")
PY
