#!/bin/bash
# Retention under a schedule: --snapshot-every 1s --keep last=3 keeps the
# three newest scheduled snapshots while new ones keep coming; a manual
# snapshot is kept until deleted (no --keep-manual); every kept snapshot
# still restores exactly from the store; deletes shrink it.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

make_pattern_image primary.img 32 >/dev/null
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S" --snapshot-every 1s --keep last=3)
start_pair sync
wait_in_sync pri sec
manual=$("$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot create --name keep-me --json | jq -r .id) ||
    fail "manual snapshot failed"
cp primary.img manual.img

# Changes between the scheduled snapshots, so that deltas hold data.
i=0
until [ "$(status_json sec | jq '.snapshots.taken')" -ge 8 ]; do
    scatter "$i" 20
    i=$((i + 1))
    [ "$i" -lt 400 ] || fail "fewer than 8 snapshots taken"
    _check_agents_alive
    sleep 0.2
done
# Once an expiry is through: 3 scheduled + the manual one (new ones keep
# coming, so the list checked is the one that satisfied the condition).
wait_until -t 30 -m "retention settles at 3 scheduled + 1 manual" \
    "\"\$DUPLEXCTL\" --control \"\$TESTDIR/sec.ctl\" snapshot list --json >list.json &&
     jq -e '([.[] | select(.reason == \"schedule\" and .state == \"complete\")] | length) == 3 and
            ([.[] | select(.reason == \"manual\")] | length) == 1 and length == 4' list.json >/dev/null"
taken=$(status_json sec | jq '.snapshots.taken')
log "taken $taken, kept: $(jq -c '[.[] | {id, reason}]' list.json)"
# The scheduled ones kept are the newest.
newest=$(jq '[.[] | select(.reason == "schedule") | .id] | max' list.json)
jq -e --argjson n "$newest" '[.[] | select(.reason == "schedule") | .id] == [$n - 2, $n - 1, $n]' \
    list.json >/dev/null || fail "the kept scheduled snapshots are not the three newest: $(cat list.json)"
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
"$DUPLEX_BUILD/duplex-store" --store S verify >verify.out || fail "verify: $(cat verify.out)"
"$DUPLEX_BUILD/duplex-store" --store S restore "$manual" --to restored.img >/dev/null ||
    fail "restore of the manual snapshot failed"
compare_volumes manual.img restored.img
"$DUPLEX_BUILD/duplex-store" --store S restore "$newest" --to newest.img >/dev/null ||
    fail "restore of snapshot $newest failed"
