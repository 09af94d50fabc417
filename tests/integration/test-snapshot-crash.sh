#!/bin/bash
# kill -9 of the secondary while snapshots are being copied, and a clean
# restart while one is: each snapshot ends complete and exact.  Two
# snapshots of a 256 MiB volume are taken on the primary with writes after
# each (so copy-before-write journals old contents), the secondary is
# killed while both are still copying, restarted, and finishes them; each
# restored from the store equals the primary's volume at its instant.
# Then the same with SIGTERM instead of kill -9; then a small snapshot
# finishing its copy before a big earlier one commits after it.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

head -c $((256 << 20)) /dev/urandom >primary.img
# Copies slow enough (~16 s for the volume) to be interrupted for sure.
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S" --snapshot-copy-rate 16M)
start_outage_pair sync
wait_in_sync pri sec

# snap NAME: a snapshot through the primary; the volume at that instant
# is kept as NAME.img (no writes run meanwhile).
declare -A ids=()
snap() {
    local out
    out=$("$DUPLEXCTL" --control "$TESTDIR/pri.ctl" snapshot create --name "$1" --json) ||
        fail "snapshot create $1: $out"
    ids[$1]=$(jq -r .id <<<"$out")
    cp --sparse=always primary.img "$1.img"
}

# bulk SEED: 128 MiB of new data, so that the next snapshot has much to copy.
bulk() {
    nbd_python "$NBD_SOCK" "$1" <<'PY' || fail "bulk writes failed"
import random, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
for i in range(128):
    h.pwrite(rng.randbytes(1 << 20), i << 20)
h.shutdown()
PY
}

round() {
    local how=$1
    [ "$how" = kill ] || bulk 3
    snap "$how-a"
    scatter 1 100
    snap "$how-b"
    scatter 2 100
    copying=$(status_json sec | jq '.snapshots.copying')
    [ "$copying" -ge 1 ] || fail "$how: nothing is copying any more before the $how (the copy was faster than the test)"
    log "$how: $copying snapshots copying"
    if [ "$how" = kill ]; then
        kill9_agent sec
    else
        stop_agent sec || fail "secondary did not stop cleanly"
    fi
    restart_secondary
    wait_in_sync pri sec
    wait_until -t 300 -m "$how: the snapshots finish after the restart" \
        "[ \"\$(status_json sec | jq '.snapshots.copying')\" = 0 ]"
    grep -q "resumed" sec.log || fail "$how: the secondary did not resume the copies"
}

round kill
round term

# Commit order: a big snapshot, then a small one that finishes copying
# long before it (its blocks are written again at once, so copy-before-
# write hands them all over while the big one still copies at 16 MB/s).
# The small one, a delta on the big one, must commit after it, and both
# end complete and exact.
bulk 4
snap order-a
scatter 3 100
snap order-b
scatter 3 100
wait_until -t 300 -m "order: the snapshots finish" \
    "[ \"\$(status_json sec | jq '.snapshots.copying')\" = 0 ]"
failed=$(status_json sec | jq '.snapshots.failed')
[ "$failed" = 0 ] || fail "order: $failed snapshots failed: $(status_json sec | jq -r '.snapshots.last_error')"
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
"$DUPLEX_BUILD/duplex-store" --store S verify >verify.out || fail "verify: $(cat verify.out)"
for name in "${!ids[@]}"; do
    "$DUPLEX_BUILD/duplex-store" --store S restore "${ids[$name]}" --to "r-$name.img" >/dev/null ||
        fail "restore of $name (${ids[$name]}) failed"
    compare_volumes "$name.img" "r-$name.img"
done
