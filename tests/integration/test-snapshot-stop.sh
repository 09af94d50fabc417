#!/bin/bash
# SIGTERM while the snapshot copier reads at full speed: the secondary
# waits for the replica reads it has in flight (their buffers belong to the
# kernel until they complete), stops cleanly (exit 0, under the sanitizer
# build no leak report), and the next start finishes the snapshot, which
# then restores byte-exact.  It used to exit at once and leak (or free)
# the copier's read buffers.
source "$(dirname "$0")/functions.sh"

head -c $((512 << 20)) /dev/urandom >primary.img
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S")
start_outage_pair sync
wait_in_sync pri sec
out=$("$DUPLEXCTL" --control "$TESTDIR/pri.ctl" snapshot create --json) ||
    fail "snapshot create: $out"
id=$(jq -r .id <<<"$out")
stops=0
for round in 1 2 3; do
    copying=$(status_json sec | jq '.snapshots.copying')
    [ "$copying" != 0 ] || break
    stop_agent sec || fail "round $round: the secondary did not stop cleanly while copying"
    grep -q "still copying" sec.log || fail "round $round: no 'still copying' in the log"
    stops=$((stops + 1))
    restart_secondary
    wait_in_sync pri sec
done
[ "$stops" -ge 1 ] || fail "the copy finished before the first stop; nothing was tested"
log "$stops stops while copying, each clean"
wait_until -t 300 -m "snapshot $id complete" \
    '[ "$(status_json sec | jq ".snapshots.copying")" = 0 ]'
stop_agent pri || fail "the primary did not stop cleanly"
stop_agent sec || fail "the secondary did not stop cleanly"
"$DUPLEX_BUILD/duplex-store" --store S restore "$id" --to snap.img >/dev/null ||
    fail "restore of snapshot $id failed"
compare_volumes primary.img snap.img
