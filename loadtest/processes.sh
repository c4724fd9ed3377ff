# Process helpers shared by the scripts in loadtest/: they start servers in
# the background with their output in $WORK/NAME.log, wait for a line of a
# log, and stop every process they started (SIGTERM, then SIGKILL after 10 s)
# and remove $WORK on exit; and start the clusters the comparisons share (a
# 3-member etcd, Cohort as four processes). The sourcing script sets WORK,
# PIDS=() and NAMES=(), and defines log().

cleanup() {
    local i pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "${NAMES[$i]} (pid $pid) did not stop within 10 s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND…: runs COMMAND in the background, logging to $WORK/NAME.log.
start() {
    local name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
}

# wait_line NAME PATTERN: the first line of NAME's log matching PATTERN (30 s at most).
wait_line() {
    local line
    for _ in $(seq 300); do
        line=$(grep -m1 -E "$2" "$WORK/$1.log" || true)
        if [ -n "$line" ]; then echo "$line"; return 0; fi
        sleep 0.1
    done
    echo "$1 did not print /$2/ within 30 s; its log:" >&2
    tail -20 "$WORK/$1.log" >&2
    return 1
}


# wait_http URL: until URL answers 2xx (30 s at most).
wait_http() {
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not answer within 30 s" >&2
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_ports N FROM: N free ports at or above FROM.
free_ports() {
    local wanted=$1 port=$2 found=()
    while [ ${#found[@]} -lt "$wanted" ]; do
        port_free "$port" && found+=("$port")
        port=$((port + 1))
        [ "$port" -lt 65000 ] || { echo "no free ports" >&2; return 1; }
    done
    echo "${found[@]}"
}

# start_etcd_cluster: three etcd members on 127.0.0.1 under $WORK, healthy
# when it returns; sets ETCD_ENDPOINTS (host:port,host:port,host:port).
start_etcd_cluster() {
    local ports cluster="" i client peer
    read -r -a ports <<<"$(free_ports 6 32379)"
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${ports[$((i + 2))]}"
    done
    ETCD_ENDPOINTS=""
    for i in 1 2 3; do
        client=${ports[$((i - 1))]} peer=${ports[$((i + 2))]}
        start "etcd$i" etcd --name "m$i" --data-dir "$WORK/etcd$i" \
            --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$cluster" --initial-cluster-token cohort-loadtest --initial-cluster-state new \
            --logger zap --log-level warn
        ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1:$client"
    done
    for i in 1 2 3; do wait_http "http://127.0.0.1:${ports[$((i - 1))]}/health"; done
}

# start_cohort_procs COHORT DIR: a coordinator and three storage nodes, each
# its own process, data under DIR, ready when it returns; sets PROCS (the
# coordinator's http:// endpoint) and NODES (the nodes' addresses).
start_cohort_procs() {
    local cohort=$1 dir=$2 i metrics
    NODES=()
    for i in 1 2 3; do
        start "node$i" "$cohort" node --id "node-$i" --data-dir "$dir/node$i" --listen 127.0.0.1:0
        NODES+=("$(wait_line "node$i" 'listening on' | awk '{print $NF}')")
    done
    start coordinator "$cohort" coordinator --id coordinator-1 --data-dir "$dir/coordinator" \
        --metadata-backend embedded --idempotency-backend embedded \
        --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
    metrics=$(wait_line coordinator '^metrics on ' | awk '{print $3}')
    PROCS="http://$(wait_line coordinator 'listening on' | awk '{print $NF}')"
    for i in 1 2 3; do
        "$cohort" admin node add --wait --id "node-$i" --address "${NODES[$((i - 1))]}" --endpoint "$PROCS" >/dev/null
    done
    wait_http "${metrics%/metrics}/health/ready"
}
