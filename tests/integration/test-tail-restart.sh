#!/bin/bash
# Issue 11: tail capture started while the workload already runs, killed
# with SIGKILL in the middle of it, started again.
#
# The applications never notice: the workload (fio random writes with
# fsync, cp -a of a tree of files) runs through the start, the kill and the
# restart without an error.  Each start compares the whole device with the
# secondary by checksums (what the agent did not see: before its start,
# while it was dead); afterwards only traced changes travel.  At the end,
# after an unmount, the replica is byte-identical to the device, and the
# bytes sent are at most twice the bytes written to the device during the
# test plus what the two scans found different.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fs-functions.sh"
source "$(dirname "$0")/tail-functions.sh"
requires_tail

make_device 128
w0=$(sectors_written)
start_tail_secondary
start_load
t0=$SECONDS
wait_until -m "the workload writes" '[ "$(sectors_written)" -gt "$w0" ]'

# ---- start while the load runs, kill -9 in the middle ----
start_tail_primary
wait_status pri connection connected
wait_tracing
scan1=$(status_json pri | jq -r .capture.scan_sent_bytes)
wait_until -m "traced changes sent" \
    '[ "$(status_json pri | jq -r .capture.traced_sent_bytes)" -gt 0 ]'
st=$(status_json pri)
log "first agent: scan sent $scan1 bytes, then $(jq -r .capture.traced_sent_bytes <<<"$st") traced; killing it"
kill9_agent pri
# Writes no agent traces: O_DIRECT into a file, synced (the load's own
# writes in this gap may all still be in the page cache).
dd if=/dev/urandom of="$MNT/while-dead.bin" bs=64K count=8 oflag=direct \
    conv=fsync status=none || fail "dd while the agent was dead failed"

# ---- restart while the load still runs ----
start_tail_primary
wait_status pri connection connected
wait_tracing
# The second agent traces the load too before it stops.
t2=$(status_json pri | jq -r .capture.traced_sent_bytes)
wait_until -m "the second agent sends traced changes" \
    '[ "$(status_json pri | jq -r .capture.traced_sent_bytes)" -gt "$t2" ]'
stop_load
log "the load ran for $((SECONDS - t0)) s without an error"

release mount "$MNT"
written=$((($(sectors_written) - w0) * 512))
drain_point end
wait_until -m "the secondary applied everything" \
    '[ "$(status_field sec replication_lag_bytes)" = 0 ]'
compare_volumes "$TESTDIR/device.img" "$TESTDIR/replica.img"
e2fsck -fn "$TESTDIR/replica.img" >replica.fsck 2>&1 ||
    { cat replica.fsck >&2; fail "e2fsck -fn of the replica failed"; }

st=$(status_json pri)
scan2=$(jq -r .capture.scan_sent_bytes <<<"$st")
sec=$(status_json sec)
sent=$(($(jq -r .applied_bytes <<<"$sec") + $(jq -r .zeroed_bytes <<<"$sec")))
limit=$((2 * written + scan1 + scan2))
log "written to $DEV: $written bytes; scans found different: $scan1 + $scan2 bytes; sent (applied on the secondary): $sent bytes; limit 2 x written + scans = $limit"
[ "$sent" -le "$limit" ] || fail "sent $sent bytes, more than $limit"
[ "$scan2" -ge 524288 ] ||
    fail "the restart's scan found $scan2 bytes different, less than the 512 KiB written while no agent ran"
log "PASS: byte-identical after kill -9 and restart under load; sent $sent <= $limit"
