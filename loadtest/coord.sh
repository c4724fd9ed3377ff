#!/usr/bin/env bash
# The coordination primitives side by side with etcd, in one run, on this
# machine: a 3-member etcd and Cohort as a coordinator and three storage
# nodes (cohort-procs), each its own process. For every round, both
# systems run, in turn: compare-and-set at 1 and 64 in flight (etcd: a txn
# comparing mod_revision), a plain write at 1 (Cohort: a quorum put, the
# yardstick of the CAS latency target), lock acquire+release cycles at 1 and
# 16 (etcd: its concurrency lock), and compare-and-set with 16 workers on
# one key. Prints the medians and writes them to
# loadtest/results/NAME.md (raw JSON lines beside it in NAME.jsonl).
# The registry and watch operations (discover:64 heartbeat:64 watch:100,
# the last with 100 watchers) are measured with --ops and --name.
#
#   loadtest/coord.sh [--rounds 3] [--duration 5s] [--warmup 1s] [--out DIR]
#                     [--ops "cas:1 cas:64 put:1 lock:1 lock:16 contended:16"]
#                     [--systems "cohort etcd"] [--name coordination]
#
# Needs etcd (Debian package etcd-server), protoc (protobuf-compiler) and
# curl: installed with apt-get when missing.
set -euo pipefail

ROUNDS=3
DURATION=5s
WARMUP=1s
OPS="cas:1 cas:64 put:1 lock:1 lock:16 contended:16"
SYSTEMS="cohort etcd"
NAME=coordination
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/loadtest/results"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --ops) OPS=$2; shift 2 ;;
        --systems) SYSTEMS=$2; shift 2 ;;
        --name) NAME=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "--rounds must be a positive number" >&2; exit 2 ;; esac
log() { printf '[coord %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || { "${sudo[@]}" apt-get update -q >/dev/null \
            && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

log "building (release)"
(cd "$ROOT" && cargo build --release -q -p cohort-cli -p cohort-loadtest --features cohort-loadtest/etcd)
COHORT="$ROOT/target/release/cohort"
LOADTEST="$ROOT/target/release/cohort-loadtest"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cohort-coord.XXXXXX")
PIDS=()
NAMES=()
# shellcheck source=loadtest/processes.sh
. "$ROOT/loadtest/processes.sh"

start_etcd_cluster
log "etcd: $ETCD_ENDPOINTS"
start_cohort_procs "$COHORT" "$WORK/procs"
"$COHORT" admin tenant create bench --replication 3 --read 2 --write 2 --endpoint "$PROCS" >/dev/null
log "cohort-procs: $PROCS"

mkdir -p "$OUT"
RAW="$OUT/$NAME.jsonl"
: >"$RAW"
# bench SYSTEM TARGET OP IN_FLIGHT: one run, its JSON line appended to $RAW.
bench() {
    log "$1 $3 at $4"
    "$LOADTEST" coord --target "$2" --label "$1" --op "$3" --in-flight "$4" \
        --duration "$DURATION" --warmup "$WARMUP" --tenant bench >>"$RAW"
}
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for system in $SYSTEMS; do
        case "$system" in
            cohort) target="cohort://${PROCS#http://}" ;;
            etcd) target="etcd://$ETCD_ENDPOINTS" ;;
            *) echo "unknown system $system (cohort, etcd)" >&2; exit 2 ;;
        esac
        for item in $OPS; do
            bench "$system" "$target" "${item%:*}" "${item#*:}"
        done
    done
done

{
    echo "# Coordination primitives: Cohort beside etcd"
    echo
    echo "\`loadtest/coord.sh --rounds $ROUNDS --duration $DURATION --warmup $WARMUP --name $NAME\` (ops: $OPS), $(date -u +%Y-%m-%d),"
    echo "commit $(cd "$ROOT" && git rev-parse --short HEAD), $(nproc) cores. Cohort: a coordinator and three"
    echo "storage nodes, each its own process (tenant N=3); etcd: three members. Medians of $ROUNDS runs."
    echo
    "$LOADTEST" coord --summarise "$RAW"
} >"$OUT/$NAME.md"
cat "$OUT/$NAME.md"
