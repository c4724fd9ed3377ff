# Process helpers shared by the scripts in loadtest/: they start servers in
# the background with their output in $WORK/NAME.log, wait for a line of a
# log, and stop every process they started (SIGTERM, then SIGKILL after 10 s)
# and remove $WORK on exit. The sourcing script sets WORK, PIDS=() and
# NAMES=(), and defines log().

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

