#!/usr/bin/env bash
# Cohort beside a 3-member etcd cluster and the no-op gRPC ceiling, on this
# machine, in one run. Writes loadtest/results/REPORT.md, latency.svg and the
# raw JSON of every run under loadtest/results/raw/.
#
#   loadtest/compare.sh [--runs N] [--duration 5s] [--warmup 1s] [--records N]
#                       [--workloads "a b c f"] [--concurrency "1 16 64"]
#                       [--out DIR] [--quick]
#
# Systems: cohort-procs (a `cohort coordinator` and three `cohort node`
# processes), cohort-colocated (three `cohort node` processes, the first also
# running the coordinator: three processes, as etcd has), cohort-dev (`cohort
# dev`: three storage nodes and a coordinator in one process), etcd (3
# members, default linearizable reads), and noop (a unary tonic call that
# does nothing). Every cell (workload × concurrency) is run against each
# system in turn, the order rotating from one repeat to the next; then open
# loops of workload A: each system at half of its own median peak, and all
# of them at one common rate, half of the slowest system's peak. Every load run is bounded by --duration; everything
# listens on 127.0.0.1 only; the processes started here are stopped by PID on
# exit. Needs etcd (Debian package etcd-server) and protoc (protobuf-compiler,
# for the etcd client): both are installed with apt-get when missing.
set -euo pipefail

RUNS=3
DURATION=5s
WARMUP=1s
RECORDS=10000
WORKLOADS="a b c f"
CONCURRENCY="1 16 64"
OPEN_SLOTS=1024
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/loadtest/results"

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --records) RECORDS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --quick) RUNS=1; DURATION=2s; WARMUP=0s; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$RUNS" in ''|*[!0-9]*|0) echo "--runs must be a positive number" >&2; exit 2 ;; esac

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools ---------------------------------------------------------------
install_packages() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
        || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] || install_packages "${missing[@]}"

log "building (release)"
(cd "$ROOT" && cargo build --release -q -p cohort-cli -p cohort-loadtest --features cohort-loadtest/etcd)
COHORT="$ROOT/target/release/cohort"
LOADTEST="$ROOT/target/release/cohort-loadtest"

# --- processes -----------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cohort-compare.XXXXXX")
PIDS=()
NAMES=()
# shellcheck source=loadtest/processes.sh
. "$ROOT/loadtest/processes.sh"

start_etcd_cluster
log "etcd: $ETCD_ENDPOINTS"

# cohort-dev: the whole cluster in one process.
start dev "$COHORT" dev --data-dir "$WORK/dev" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
DEV=$(wait_line dev '^  API:' | awk '{print $2}')
DEV_METRICS=$(wait_line dev '^  metrics:' | awk '{print $2}')
wait_http "${DEV_METRICS%/metrics}/health/ready"
log "cohort-dev: $DEV"

# cohort-procs: a coordinator and three storage nodes, each its own process.
start_cohort_procs "$COHORT" "$WORK/procs"
log "cohort-procs: $PROCS (nodes ${NODES[*]})"

# cohort-colocated: three node processes; the first also runs the
# coordinator, which calls it directly and lets it coordinate every write.
cat >"$WORK/colocated.toml" <<TOML
[coordinator]
id = "coordinator-1"
data_dir = "$WORK/colocated-coordinator"
metrics_listen = ""
[coordinator.metadata]
backend = "embedded"
[coordinator.idempotency]
backend = "embedded"
TOML
COLOCATED_NODES=()
for i in 1 2 3; do
    extra=()
    [ "$i" -eq 1 ] && extra=(--config "$WORK/colocated.toml" --coordinator-listen 127.0.0.1:0)
    start "colocated$i" "$COHORT" node --id "node-$i" --data-dir "$WORK/colocated$i" --listen 127.0.0.1:0 "${extra[@]}"
    COLOCATED_NODES+=("$(wait_line "colocated$i" 'node .* listening on' | awk '{print $NF}')")
done
COLOCATED="http://$(wait_line colocated1 'coordinator .* listening on' | awk '{print $NF}')"
for i in 1 2 3; do
    "$COHORT" admin node add --wait --id "node-$i" --address "${COLOCATED_NODES[$((i - 1))]}" --endpoint "$COLOCATED" >/dev/null
done
log "cohort-colocated: $COLOCATED (nodes ${COLOCATED_NODES[*]})"

# Every Cohort cluster: a tenant with N=3, R=2, W=2 (quorum).
for endpoint in "$DEV" "$PROCS" "$COLOCATED"; do
    "$COHORT" admin tenant create bench --replication 3 --read 2 --write 2 --endpoint "$endpoint" >/dev/null
done

start noop "$LOADTEST" noop-server --listen 127.0.0.1:0
NOOP=$(wait_line noop 'listening on' | awk '{print $NF}')
log "noop: $NOOP"

declare -A TARGETS=(
    [etcd]="etcd://$ETCD_ENDPOINTS"
    [cohort-dev]="cohort://${DEV#http://}"
    [cohort-procs]="cohort://${PROCS#http://}"
    [cohort-colocated]="cohort://${COLOCATED#http://}"
    [noop]="noop://$NOOP"
)
SYSTEMS=(cohort-procs cohort-colocated cohort-dev etcd)

# --- runs ----------------------------------------------------------------
RAW="$OUT/raw"
mkdir -p "$RAW/floor"
rm -f "$RAW"/*.json "$RAW"/floor/*.json

# measure LABEL FILE ARGS…: one bounded load run, its JSON in $RAW/FILE.json.
measure() {
    local label=$1 file=$2; shift 2
    log "$file"
    "$LOADTEST" run --target "${TARGETS[$label]}" --label "$label" --tenant bench --records "$RECORDS" \
        --key-prefix "$file-" --duration "$DURATION" --warmup "$WARMUP" --json "$RAW/$file.json" "$@" \
        >"$WORK/last-run.txt" 2>&1 || { cat "$WORK/last-run.txt" >&2; return 1; }
}

STARTED=$(date -u +"%Y-%m-%d %H:%M UTC")
for run in $(seq "$RUNS"); do
    # Rotate the order of the systems from one repeat to the next.
    shift_by=$(((run - 1) % ${#SYSTEMS[@]}))
    order=("${SYSTEMS[@]:$shift_by}" "${SYSTEMS[@]:0:$shift_by}")
    # The machine's floor under a quorum put, on the disk the nodes use.
    log "floor-r$run"
    "$LOADTEST" floor --dir "$WORK" --json "$RAW/floor/floor-r$run.json" >/dev/null
    for c in $CONCURRENCY; do
        measure noop "noop-c$c-r$run" --workload a --concurrency "$c"
    done
    for w in $WORKLOADS; do
        for c in $CONCURRENCY; do
            for system in "${order[@]}"; do
                measure "$system" "$system-$w-c$c-r$run" --workload "$w" --concurrency "$c"
            done
        done
    done
done

COMMON="not run"
if [[ " $WORKLOADS " == *" a "* ]]; then
    declare -A HALF
    COMMON=""
    for system in "${SYSTEMS[@]}"; do
        HALF[$system]=$("$LOADTEST" report --results "$RAW" --print-half-peak "$system")
        if [ -z "$COMMON" ] || [ "${HALF[$system]}" -lt "$COMMON" ]; then COMMON=${HALF[$system]}; fi
    done
    log "open loops: each system at half its own peak on workload a; all at $COMMON ops/s (half the slowest peak)"
    for run in $(seq "$RUNS"); do
        for system in "${SYSTEMS[@]}"; do
            measure "$system" "$system-open-r$run" --workload a --rate "${HALF[$system]}" --concurrency "$OPEN_SLOTS"
            measure "$system" "$system-common-r$run" --workload a --rate "$COMMON" --concurrency "$OPEN_SLOTS"
        done
    done
fi

# --- report --------------------------------------------------------------
{
    echo "Measured by \`loadtest/compare.sh --runs $RUNS --duration $DURATION --warmup $WARMUP\` on $STARTED,"
    echo "commit \`$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)\`."
    echo
    echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/^Mem:/ {print $2}') GiB;"
    echo "  client and every server share it."
    echo "- etcd $(etcd --version | awk '/etcd Version/ {print $3}'), 3 members on 127.0.0.1, default (linearizable) reads."
    echo "- Cohort: tenant \`bench\`, N=3, R=2, W=2, fsync durability; \`cohort-procs\` is a \`cohort coordinator\` and"
    echo "  three \`cohort node\` processes, \`cohort-colocated\` three \`cohort node\` processes of which the first"
    echo "  also runs the coordinator (\`--coordinator-listen\`), \`cohort-dev\` is \`cohort dev\` (all in one process)."
    echo "- Every run: $RECORDS records of 100 B loaded first, YCSB key choice zipfian, then $WARMUP of warmup and"
    echo "  $DURATION measured. Open loops (at most $OPEN_SLOTS in flight): workload A at half of each system's own"
    echo "  median peak, and all systems at $COMMON ops/s, half of the slowest system's peak."
    echo "- The floor of a quorum put (\`cohort-loadtest floor\`, once per repeat, medians of 500 samples each):"
    echo "  two TCP round trips on 127.0.0.1 and one fdatasync of an appended 128 B record in the nodes' directory."
} >"$WORK/preamble.md"
"$LOADTEST" report --results "$RAW" --floor "$RAW/floor" --output "$OUT/REPORT.md" --plot "$OUT/latency.svg" \
    --preamble "$WORK/preamble.md"
log "done: $OUT/REPORT.md"
