#!/usr/bin/env bash
# What convergence costs, on this machine: a coordinator and three `cohort
# node` processes (fsync durability) hold RECORDS records of 100 B (tenant
# N = 3).
#
# 1. Hint delivery: node-3 is stopped, HINTED more keys are written (each
#    leaves a hint on the replica that coordinated it), node-3 starts again,
#    and the time until the other nodes report no pending hint is measured.
# 2. Anti-entropy on an idle, converged cluster: CPU time and bytes read by
#    the four processes over WINDOW seconds, with anti-entropy off and then
#    on with repair.round = ROUND (every range of the tenant exchanged once
#    per ROUND; the default round is 10m, so the default costs ROUND/10m of
#    the figure).
#
# Writes the figures to OUT (default loadtest/results/convergence.md).
#
#   loadtest/convergence.sh [--records 100000] [--hinted 10000] [--round 60s] [--window 60] [--out FILE]
set -euo pipefail

RECORDS=100000
HINTED=10000
ROUND=60s
WINDOW=60
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/loadtest/results/convergence.md"
while [ $# -gt 0 ]; do
    case "$1" in
        --records) RECORDS=$2; shift 2 ;;
        --hinted) HINTED=$2; shift 2 ;;
        --round) ROUND=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { printf '[convergence %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cd "$ROOT"
log "building release binaries"
cargo build --release -q -p cohort-cli -p cohort-loadtest
COHORT=$ROOT/target/release/cohort
LOADTEST=$ROOT/target/release/cohort-loadtest
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cohort-convergence.XXXXXX")
PIDS=()
NAMES=()
# shellcheck source=loadtest/processes.sh
. "$ROOT/loadtest/processes.sh"

# node I [ADDRESS]: starts node-I (on ADDRESS when given).
node() {
    start "node$1" "$COHORT" node --id "node-$1" --data-dir "$WORK/node$1" --listen "${2:-127.0.0.1:0}" \
        --metrics-listen 127.0.0.1:0
}
address_of() { wait_line "$1" 'listening on' | awk '{print $NF}'; }
metrics_of() { wait_line "$1" '^metrics on' | sed -e 's|.*http://||' -e 's|/metrics||'; }
# coordinator NAME ENABLED: starts the coordinator with anti-entropy on or off.
coordinator() {
    cat >"$WORK/$1.toml" <<EOF
[repair]
enabled = $2
round = "$ROUND"
EOF
    start "$1" "$COHORT" coordinator --config "$WORK/$1.toml" --id coordinator-1 --data-dir "$WORK/coordinator" \
        --metadata-backend embedded --idempotency-backend embedded --listen "${ADDRESS:-127.0.0.1:0}" \
        --metrics-listen 127.0.0.1:0
}
stop() { # stop NAME: SIGTERM to the named process, and wait for it
    local i
    for i in "${!NAMES[@]}"; do
        if [ "${NAMES[$i]}" = "$1" ] && kill -0 "${PIDS[$i]}" 2>/dev/null; then
            kill -TERM "${PIDS[$i]}"
            wait "${PIDS[$i]}" 2>/dev/null || true
        fi
    done
}
pid_of() { local i; for i in "${!NAMES[@]}"; do [ "${NAMES[$i]}" = "$1" ] && echo "${PIDS[$i]}"; done | tail -n 1; }
gauge() { curl -s "http://$1/metrics" | awk -v name="$2" '$1 == name {print $2}' | tail -n 1; }

NODES=()
for i in 1 2 3; do
    node "$i"
    NODES+=("$(address_of "node$i")")
done
coordinator coordinator false
ADDRESS=$(address_of coordinator)
ENDPOINT="http://$ADDRESS"
for i in 1 2 3; do
    "$COHORT" admin node add --wait --id "node-$i" --address "${NODES[$((i - 1))]}" --endpoint "$ENDPOINT" >/dev/null
done
"$COHORT" admin tenant create bench --replication 3 --endpoint "$ENDPOINT" >/dev/null
load() { # load PREFIX COUNT
    "$LOADTEST" run --target "cohort://$ADDRESS" --tenant bench --records "$2" --key-prefix "$1" \
        --value-size 100 --workload c --concurrency 64 --operations 1 --json "$WORK/load-$1.json" >/dev/null
}
log "loading $RECORDS records"
load conv- "$RECORDS"

log "hint delivery: node-3 stopped while $HINTED keys are written"
stop node3
load hint- "$HINTED"
M1=$(metrics_of node1)
M2=$(metrics_of node2)
pending() {
    local a b
    a=$(gauge "$M1" cohort_node_hints_pending)
    b=$(gauge "$M2" cohort_node_hints_pending)
    echo $(( ${a:-0} + ${b:-0} ))
}
# The gauge is set by each delivery sweep (every second): wait until two
# sweeps agree.
PENDING=-1
for _ in $(seq 20); do
    now=$(pending)
    [ "$now" -eq "$PENDING" ] && break
    PENDING=$now
    sleep 1.2
done
node 3 "${NODES[2]}"
STARTED=$(date +%s.%N)
while [ "$(pending)" -ne 0 ]; do sleep 0.05; done
DELIVERY=$(python3 -c "import time; print(f'{time.time() - $STARTED:.2f}')")
log "$PENDING hint records delivered $DELIVERY s after node-3 started"

# ticks PIDS…: CPU clock ticks (user + system) used so far by the processes.
ticks() { local p t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
# io FIELD PIDS…: a field of /proc/PID/io summed over the processes.
io() { local f=$1 p t=0; shift; for p in "$@"; do t=$((t + $(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/io"))); done; echo "$t"; }
measure() { # measure LABEL: CPU seconds, bytes read from disk and bytes read in all over WINDOW
    local procs=("$(pid_of node1)" "$(pid_of node2)" "$(pid_of node3)" "$(pid_of "$1")")
    local t0 r0 c0
    t0=$(ticks "${procs[@]}"); r0=$(io read_bytes "${procs[@]}"); c0=$(io rchar "${procs[@]}")
    sleep "$WINDOW"
    echo "$(( $(ticks "${procs[@]}") - t0 )) $(( $(io read_bytes "${procs[@]}") - r0 )) $(( $(io rchar "${procs[@]}") - c0 ))"
}
log "idle, anti-entropy off: measuring $WINDOW s"
read -r OFF_TICKS OFF_DISK OFF_READ < <(measure coordinator)
stop coordinator
coordinator coordinator-ae true
address_of coordinator-ae >/dev/null
CM=$(metrics_of coordinator-ae)
log "idle, anti-entropy on (round $ROUND): measuring $WINDOW s"
E0=$(gauge "$CM" cohort_repair_exchanges_total); E0=${E0:-0}
read -r ON_TICKS ON_DISK ON_READ < <(measure coordinator-ae)
EXCHANGES=$(( $(gauge "$CM" cohort_repair_exchanges_total) - ${E0%.*} ))
REPAIRED=$(gauge "$CM" cohort_repair_keys_repaired_total)
HZ=$(getconf CLK_TCK)

mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" <<PY
import sys
hz, window = $HZ, $WINDOW
off, on = $OFF_TICKS / hz, $ON_TICKS / hz
rows = [
    ("anti-entropy off", off, $OFF_DISK, $OFF_READ),
    ("anti-entropy on, round $ROUND", on, $ON_DISK, $ON_READ),
]
lines = [
    "# Convergence costs",
    "",
    "Measured by \`loadtest/convergence.sh --records $RECORDS --hinted $HINTED --round $ROUND --window $WINDOW\`:",
    "a coordinator and three \`cohort node\` processes (fsync), tenant N = 3, $RECORDS records of 100 B, on this",
    "machine's two cores.",
    "",
    "## Hint delivery",
    "",
    f"node-3 was stopped while $HINTED keys were written: $PENDING hint records waited on nodes 1 and 2.",
    f"After node-3 started again, the last was delivered in **$DELIVERY s**.",
    "",
    "## Anti-entropy on an idle, converged cluster",
    "",
    f"Over {window} s, the four processes together ($EXCHANGES exchanges with anti-entropy on, "
    f"{'${REPAIRED:-0}'.split('.')[0]} keys repaired):",
    "",
    "| | CPU s per minute | disk reads per minute | bytes read per minute (page cache included) |",
    "|---|--:|--:|--:|",
]
for name, cpu, disk, read in rows:
    lines.append(f"| {name} | {cpu * 60 / window:.2f} | {disk * 60 / window / 1e6:.2f} MB | {read * 60 / window / 1e6:.2f} MB |")
extra = (on - off) * 60 / window
lines += [
    "",
    f"Anti-entropy's own cost at this round: {extra:.2f} CPU s per minute; the default round (10m) costs about "
    f"{extra * float('$ROUND'.rstrip('s')) / 600:.3f} CPU s per minute.",
]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
