#!/bin/bash
# A consistent restore point always exists (DESIGN.md guarantee 6): when
# the link comes back after an outage and the replica becomes a resync
# target, the secondary first takes a "before-resync" snapshot, complete
# before the resync overwrites anything it needs.  Restored from the store,
# it equals the replica as it was when the link was cut; the resync still
# ends with identical volumes; and a second outage gives a second one.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

make_pattern_image primary.img 64 >/dev/null
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S")
PAIR_PROXY=1 start_outage_pair sync --peer-timeout 3
wait_in_sync pri sec

for round in 1 2; do
    scatter $((round * 10)) 300 flush
    wait_in_sync pri
    proxy_cmd px cut >/dev/null
    wait_until -m "round $round: primary notices the cut" \
        '[ "$(status_field pri connection)" != connected ]'
    # Nothing reaches the replica now: this is the state to keep.
    cp --sparse=always replica.img "before$round.img"
    scatter $((round * 10 + 1)) 300 flush
    proxy_cmd px restore >/dev/null
    wait_in_sync pri sec
    wait_until -t 120 -m "round $round: no snapshot copying" \
        "[ \"\$(status_json sec | jq '.snapshots.copying')\" = 0 ]"
done
compare_volumes primary.img replica.img
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot list --json >list.json
jq -e '[.[] | select(.reason == "before-resync" and .state == "complete")] | length == 2' \
    list.json >/dev/null || fail "expected two complete before-resync snapshots: $(cat list.json)"
ids=$(jq -r '.[] | select(.reason == "before-resync") | .id' list.json)
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
round=1
for id in $ids; do
    "$DUPLEX_BUILD/duplex-store" --store S restore "$id" --to "snap$id.img" >/dev/null ||
        fail "restore of snapshot $id failed"
    compare_volumes "before$round.img" "snap$id.img"
    round=$((round + 1))
done
log "each before-resync snapshot equals the replica as it was when the link was cut"
