#!/bin/bash
# Connecting never stalls.  A user feels the time from starting a pair to
# "connected" (in sync mode every client write waits for it), and from a
# link coming back to "connected".  Both must be short every time, not on
# average: a handshake whose last bytes were left unread inside OpenSSL
# used to stall a fresh pair for the whole peer timeout (10 s) in about a
# quarter of the starts.
#
#   1. 20 fresh pairs on a 1 GiB volume of random data (synced to disk
#      first), each: secondary, then primary; connected within 2 s of the
#      primary's start.
#   2. One pair behind the link proxy: 10 cuts of 0.2-3 s, each
#      reconnecting within 2 s of the link's return and in sync again.
#      Each outage starts exactly one new data generation, however many
#      reconnect attempts failed.
#   3. The primary's op counters agree once it is idle (ops_acked used to
#      run one ahead of ops_sent after an initial sync).
#
# PAIR_DIRECTION=reverse (ctest integration/test-connect-time-reverse):
# the primary listens and the secondary dials it; fresh pairs start the
# primary first and count from the secondary's start, the proxy sits in
# front of the primary.
#
# Prints FIGURES lines with the distributions (min/median/max).
source "$(dirname "$0")/functions.sh"
requires_python_nbd

STARTS=${CONNECT_STARTS:-20}
CUTS=${CONNECT_CUTS:-10}
LIMIT_MS=$((2000 * SLOW))

# log_ms LINE: the epoch milliseconds of an agent's log line
# (2026-11-26T12:54:19.295Z duplex-primary[...]: ...).
log_ms() {
    local ts=${1%% *}
    echo $(($(date -u -d "${ts%.*}Z" +%s) * 1000 + 10#$(sed -E 's/.*\.([0-9]{3})Z$/\1/' <<<"$ts")))
}

# wait_connected_ms NAME T0_MS LIMIT_MS: poll NAME's status every 20 ms
# until connected; prints the milliseconds from T0_MS to the agent's own
# "connected to secondary" log line (polling adds its own delay).  Fails
# past the limit (reporting how long it really took, up to 15 s).
wait_connected_ms() {
    local name=$1 t0=$2 limit=$3 now c line
    while :; do
        c=$("$DUPLEXCTL" --control "$TESTDIR/$name.ctl" status --json 2>/dev/null |
            jq -r .connection 2>/dev/null) || c=
        now=$(now_ms)
        if [ "$c" = connected ]; then
            line=$(grep 'connected to secondary' "$TESTDIR/$name.log" | tail -n 1)
            [ -n "$line" ] || fail "$name is connected but did not log it"
            echo $(($(log_ms "$line") - t0))
            return 0
        fi
        if [ $((now - t0)) -gt $((limit + 15000)) ]; then
            fail "$name not connected $((now - t0)) ms after start"
        fi
        _check_agents_alive
        sleep 0.02
    done
}

# stats MS...: "min=.. median=.. max=.." (ms)
stats() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 }
        END { printf "min=%d median=%d max=%d n=%d", v[1],
              (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2),
              v[NR], NR }'
}

make_certs "$CERTS" primary secondary
head -c $((1024 * 1024 * 1024)) /dev/urandom >primary.img
sync primary.img

# ---- 1: fresh pairs ----
times=()
slow=()
for ((i = 1; i <= STARTS; i++)); do
    rm -f replica.img replica.meta primary.meta
    SEC=sec$i PRI=pri$i
    # The listening side first; the clock starts with the dialling one.
    if [ "${PAIR_DIRECTION:-}" = reverse ]; then
        _pair_primary sync --listen 127.0.0.1:0
        t0=$(now_ms)
        _pair_secondary --peer "127.0.0.1:$PRIMARY_PORT"
    else
        _pair_secondary --listen 127.0.0.1:0
        t0=$(now_ms)
        _pair_primary sync --peer "127.0.0.1:$SECONDARY_PORT"
    fi
    ms=$(wait_connected_ms "$PRI" "$t0" "$LIMIT_MS")
    times+=("$ms")
    log "start $i: connected after $ms ms"
    [ "$ms" -le "$LIMIT_MS" ] || slow+=("start $i: $ms ms")
    stop_agent "$PRI" || fail "$PRI did not stop cleanly"
    stop_agent "$SEC" || fail "$SEC did not stop cleanly"
done
echo "FIGURES: $TEST_NAME fresh pair start -> connected (ms): $(stats "${times[@]}")"
[ ${#slow[@]} -eq 0 ] || fail "connected later than $LIMIT_MS ms: ${slow[*]}"

# ---- 2: link cuts ----
# write_apart CUT PART: 16 scattered 4 KiB writes through NBD.
write_apart() {
    nbd_python "$NBD_SOCK" "$1" "$2" <<'PY' || fail "cut $1: writes without the secondary failed"
import os, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
i, part = int(sys.argv[2]), int(sys.argv[3])
for k in range(16):
    h.pwrite(os.urandom(4096), ((i * 7919 + part * 331 + k * 104729) % 65536) * 4096)
h.shutdown()
PY
}

rm -f replica.img replica.meta primary.meta
truncate -s 256M primary.img
SEC=sec PRI=pri
PAIR_PROXY=1 start_pair sync
wait_in_sync pri sec
times=()
slow=()
for ((i = 1; i <= CUTS; i++)); do
    proxy_cmd px cut >/dev/null
    wait_until -t 30 -m "cut $i: primary notices" \
        '[ "$(status_field pri connection)" != connected ]'
    # Writes while apart, so that every return also resyncs something: at
    # the start of the outage and again at its end, after failed attempts.
    write_apart "$i" 0
    # Apart for 0.2 .. 3 s: the primary's retries are at different points
    # of their backoff when the link returns.
    sleep "$(awk -v i="$i" 'BEGIN { printf "%.1f", 0.2 + (i * 7 % 10) * 0.3 }')"
    write_apart "$i" 1
    t0=$(now_ms)
    proxy_cmd px restore >/dev/null
    ms=$(wait_connected_ms pri "$t0" "$LIMIT_MS")
    times+=("$ms")
    log "cut $i: reconnected $ms ms after the link returned"
    [ "$ms" -le "$LIMIT_MS" ] || slow+=("cut $i: $ms ms")
    wait_in_sync pri sec
done
echo "FIGURES: $TEST_NAME link back -> connected (ms): $(stats "${times[@]}")"
[ ${#slow[@]} -eq 0 ] || fail "reconnected later than $LIMIT_MS ms: ${slow[*]}"
# One new data generation per outage (the first write the secondary did
# not get), however many connection attempts failed meanwhile.
gens=$(grep -c "new data generation" pri.log || true)
[ "$gens" -eq "$CUTS" ] ||
    fail "$gens new data generations for $CUTS outages (failed reconnect attempts must not start one)"
compare_volumes primary.img replica.img

# ---- 3: counters ----
s=$(status_json pri)
sent=$(jq -r .ops_sent <<<"$s")
acked=$(jq -r .ops_acked <<<"$s")
log "idle primary: ops_sent=$sent ops_acked=$acked"
[ "$sent" -gt 0 ] || fail "ops_sent is $sent after $CUTS resyncs"
[ "$acked" = "$sent" ] || fail "idle and in sync, but ops_acked=$acked != ops_sent=$sent"
