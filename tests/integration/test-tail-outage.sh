#!/bin/bash
# Issue 11: everything else keeps working in tail mode: a link cut during
# the load, a SIGKILL of the secondary, online verify.
#
# ext4 on a loop device written by fio and cp loops, tailed by
# duplex-primary whose link to the secondary goes through a proxy.  The
# link is cut for 2 s mid-load (changes pile up in the bitmap, the link
# comes back and they are resynced), then the secondary is killed with
# SIGKILL and restarted.  After the load and an unmount the replica is
# byte-identical to the device, and `duplexctl verify` finds nothing out of
# sync.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fs-functions.sh"
source "$(dirname "$0")/tail-functions.sh"
requires_tail

make_device 128
start_tail_secondary
sec_real_port=$sec_port
start_proxy px "$sec_port"
sec_port=$PROXY_PORT
start_tail_primary
wait_status pri connection connected
wait_tracing

start_load
wait_until -m "traced changes sent" \
    '[ "$(status_json pri | jq -r .capture.traced_sent_bytes)" -gt 0 ]'

# ---- a link cut ----
proxy_cmd px cut
wait_until -m "the primary sees the link down" \
    '[ "$(status_field pri connection)" != connected ]'
sleep_until=$((SECONDS + 2))
while [ $SECONDS -lt $sleep_until ]; do
    _check_agents_alive
    sleep 0.2
done
lag=$(status_json pri | jq -r .capture.lag_bytes)
log "link cut for 2 s: $lag bytes waiting in the bitmap"
[ "$lag" -gt 0 ] || fail "nothing waited while the link was cut"
proxy_cmd px restore
wait_status pri connection connected

# ---- SIGKILL of the secondary ----
kill9_agent sec
start_secondary sec --volume "$TESTDIR/replica.img" \
    --meta "$TESTDIR/replica.meta" --listen "127.0.0.1:$sec_real_port" \
    --snapshot-store "$TESTDIR/S" \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary
wait_status pri connection connected
t2=$(status_json pri | jq -r .capture.traced_sent_bytes)
wait_until -m "traced changes sent to the restarted secondary" \
    '[ "$(status_json pri | jq -r .capture.traced_sent_bytes)" -gt "$t2" ]'
stop_load

release mount "$MNT"
drain_point end
wait_until -m "the secondary applied everything" \
    '[ "$(status_field sec replication_lag_bytes)" = 0 ]'
compare_volumes "$TESTDIR/device.img" "$TESTDIR/replica.img"

out=$("$DUPLEXCTL" --control pri.ctl verify 2>&1) || fail "verify failed to start: $out"
wait_until -t 120 -m "verify done" \
    'case $(status_json pri | jq -r .verify.state) in done|aborted) true ;; *) false ;; esac'
st=$(status_json pri)
[ "$(jq -r .verify.state <<<"$st")" = done ] || fail "verify: $(jq -c .verify <<<"$st")"
[ "$(jq -r .verify_out_of_sync_bytes <<<"$st")" = 0 ] ||
    fail "verify found $(jq -r .verify_out_of_sync_bytes <<<"$st") bytes out of sync"
log "PASS: link cut and secondary SIGKILL under load; byte-identical; verify finds 0 bytes out of sync"
