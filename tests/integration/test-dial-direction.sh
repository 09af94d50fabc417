#!/bin/bash
# Either agent can dial.  The primary listens (--listen) and the secondary
# dials it (--peer), as when the replica sits behind NAT:
#
#   1. a sync pair through the link proxy replicates a write load; both
#      status forms say who dials whom; the replica is byte-identical.
#   2. the secondary is stopped (SIGTERM, then kill -9, alternately) and
#      restarted 6 times: each time it dials back and is connected within
#      2 s of its start, in sync again, nothing lost.
#   3. the primary restarts on its port: the dialling secondary finds it
#      again within 2 s of the primary's start.
#   4. replacement: with the secondary frozen (SIGSTOP: no FIN, no RST,
#      the primary still believes in its link), a copy of its replica
#      dials the primary directly; the primary takes the newly verified
#      connection at once (logged "replaced by a new connection") instead
#      of waiting for its 10 s peer timeout, and the copy ends identical.
#   5. a cut link (proxy): the secondary dials again within 2 s of the
#      link's return.
# The TLS refusals in this direction are test-tls-reverse; fresh starts
# and link cuts in numbers test-connect-time-reverse.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

LIMIT_MS=$((2000 * SLOW))
PAIR_DIRECTION=reverse

# connected_within LABEL T0_MS: the primary reports connected no later than
# LIMIT_MS after T0_MS (polled every 20 ms); logs the time.
connected_within() {
    local label=$1 t0=$2 now
    while :; do
        now=$(now_ms)
        [ "$(status_field pri connection)" != connected ] || break
        [ $((now - t0)) -le "$LIMIT_MS" ] ||
            fail "$label: not connected $((now - t0)) ms after it started (limit $LIMIT_MS ms)"
        _check_agents_alive
        sleep 0.02
    done
    log "$label: connected $((now - t0)) ms after the start"
}

make_pattern_image primary.img 64 >/dev/null

# ---- 1 ----
PAIR_PROXY=1 start_outage_pair sync
wait_in_sync pri sec
p=$(status_json pri)
s=$(status_json sec)
jq -e --argjson port "$PRIMARY_PORT" \
    '.direction == "listen" and .listen_port == $port' <<<"$p" >/dev/null ||
    fail "primary status does not say it listens on $PRIMARY_PORT: $p"
jq -e --arg addr "127.0.0.1:$PROXY_PORT" \
    '.direction == "dial" and .primary_address == $addr and .listen_port == null' \
    <<<"$s" >/dev/null || fail "secondary status does not say it dials $PROXY_PORT: $s"
"$DUPLEXCTL" --control "$TESTDIR/pri.ctl" status | grep -q "listening on port $PRIMARY_PORT" ||
    fail "the primary's status text does not show its listening port"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" status | grep -q "primary" ||
    fail "the secondary's status text does not name its primary"
scatter 1 500 flush
wait_in_sync pri sec
compare_volumes primary.img replica.img

# ---- 2: the dialling secondary comes and goes ----
for i in 1 2 3 4 5 6; do
    if [ $((i % 2)) = 1 ]; then
        stop_agent sec || fail "round $i: the secondary did not stop cleanly"
    else
        kill9_agent sec
    fi
    wait_until -t 30 -m "round $i: primary notices" \
        '[ "$(status_field pri connection)" != connected ]'
    scatter $((i + 10)) 50
    t0=$(now_ms)
    restart_secondary
    connected_within "round $i (secondary restarted)" "$t0"
    wait_in_sync pri sec
done
compare_volumes primary.img replica.img

# ---- 3: the listening primary restarts on its port ----
stop_agent pri || fail "the primary did not stop cleanly"
wait_until -t 30 -m "secondary notices" \
    '[ "$(status_field sec connection)" != connected ]'
# Let the secondary's retries back off to --connect-interval (500 ms).
sleep 1
t0=$(now_ms)
restart_primary
connected_within "primary restarted" "$t0"
wait_in_sync pri sec

# ---- 4: a new connection replaces a dead one the primary still holds ----
# The secondary is frozen (SIGSTOP: its socket stays open, the primary
# sees nothing for its 10 s peer timeout); a copy of its replica and
# metadata is started as a second secondary dialling the primary
# directly.  The primary must take it at once.
sec_pid=$(agent_pid sec)
kill -STOP "$sec_pid"
cp --sparse=always replica.img replica2.img
cp replica.meta replica2.meta
[ "$(status_field pri connection)" = connected ] ||
    fail "the primary dropped the frozen secondary already; nothing to replace"
before=$(grep -c "replaced by a new connection" pri.log || true)
# sec2's metadata copy is locked by nobody; the frozen one holds its own.
sec2_args=(--volume "$TESTDIR/replica2.img" --meta "$TESTDIR/replica2.meta"
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key"
    --tls-ca "$CERTS/ca.pem" --peer-name primary)
t0=$(now_ms)
start_secondary sec2 "${sec2_args[@]}" --peer "127.0.0.1:$PRIMARY_PORT"
connected_within "second secondary replacing the frozen one" "$t0"
after=$(grep -c "replaced by a new connection" pri.log || true)
[ "$after" -gt "$before" ] ||
    fail "the primary did not log replacing the old connection"
kill9_agent sec
scatter 30 100 flush
SEC=sec2
wait_in_sync pri sec2
compare_volumes primary.img replica2.img

# ---- 5: a cut link, the secondary dialling through the proxy ----
stop_agent sec2 || fail "sec2 did not stop cleanly"
_outage_forget sec2
start_secondary sec2 "${sec2_args[@]}" --peer "127.0.0.1:$PROXY_PORT"
wait_in_sync pri sec2
proxy_cmd px cut >/dev/null
wait_until -t 30 -m "primary notices the cut" \
    '[ "$(status_field pri connection)" != connected ]'
scatter 40 50
sleep 1
t0=$(now_ms)
proxy_cmd px restore >/dev/null
connected_within "link back" "$t0"
wait_in_sync pri sec2
compare_volumes primary.img replica2.img
stop_agent pri || fail "the primary did not stop cleanly"
stop_agent sec2 || fail "sec2 did not stop cleanly"
