#!/bin/bash
# duplexctl restore on the primary (DESIGN.md "Roles, direction and the way
# back"): five snapshots under writes, a known change after the last, then
# `restore --snapshot` of the third.  Only the blocks that differ travel
# (within 1.1x of the 4 KiB blocks where the volume and the snapshot
# differ, and at least all of them); the volume ends equal to the snapshot
# as `duplex-store restore` writes it, the replica equal to the volume.
# The safety snapshot taken first undoes it exactly.  A restore survives
# kill -9 of the primary and of the secondary in the middle (the record
# resumes it; the link is throttled to 1 MB/s, so the middle lasts
# seconds), and
# `restore --replica` moves exactly the blocks changed behind duplex's
# back.  The pair replicates afterwards.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

make_pattern_image primary.img 128 >/dev/null
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S")
PAIR_PROXY=1 start_outage_pair sync
wait_in_sync pri sec
CTL=("$DUPLEXCTL" --control "$TESTDIR/pri.ctl")

ids=()
for k in 1 2 3 4 5; do
    scatter "$k" 300 flush
    wait_in_sync pri
    id=$("${CTL[@]}" snapshot create --name "s$k" --json | jq -r .id) ||
        fail "snapshot $k not taken"
    ids+=("$id")
done
# The known change: after the last snapshot, not in any.
scatter 6 200 flush
wait_in_sync pri sec
wait_until -t 60 -m "snapshots copied" \
    "[ \"\$(status_json sec | jq '.snapshots.copying')\" = 0 ]"
id3=${ids[2]}
# The snapshot's contents, as the running secondary exports them (the
# store itself is compared with duplex-store restore at the end).
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot export "$id3" \
    --nbd "unix:$TESTDIR/exp.sock" >/dev/null || fail "export of snapshot $id3 failed"
nbdcopy "nbd+unix:///?socket=$TESTDIR/exp.sock" snap3.img ||
    fail "nbdcopy of snapshot $id3 failed"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot unexport "$id3" >/dev/null ||
    fail "unexport failed"
cp --sparse=always primary.img before.img
# blocks_differ A B: the number of 4 KiB blocks where A and B differ.
blocks_differ() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys
n = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(1 << 20), b.read(1 << 20)
        if not x and not y:
            break
        for i in range(0, max(len(x), len(y)), 4096):
            if x[i:i + 4096] != y[i:i + 4096]:
                n += 1
print(n)
EOF
}
differ=$(blocks_differ before.img snap3.img)
[ "$differ" -gt 100 ] || fail "only $differ blocks differ from snapshot $id3: the test's change is too small"
log "the volume differs from snapshot $id3 in $differ blocks of 4 KiB"

# restore_and_wait ARGS...: run restore, wait until done; sets RESTORE
# (the status object) and ELAPSED_MS.
restore_and_wait() {
    local t0 out
    t0=$(now_ms)
    out=$("${CTL[@]}" restore "$@") || fail "restore $* failed: $out"
    log "restore $*: $out"
    wait_until -t 120 -m "restore $* done" \
        '[ "$(status_json pri | jq -r .restore.state)" = done ] && [ "$(status_field pri sync)" = in-sync ]'
    ELAPSED_MS=$(($(now_ms) - t0))
    RESTORE=$(status_json pri | jq -c .restore)
    log "restore $*: $RESTORE"
}

# A snapshot the secondary does not have: refused, nothing changes.
out=$("${CTL[@]}" restore --snapshot 999 2>&1) && fail "restore of a missing snapshot was accepted: $out"
grep -q 'no complete snapshot 999' <<<"$out" || fail "restore --snapshot 999: unclear refusal: $out"
log "restore --snapshot 999: $out"
jq -e '.restore.state == "not-started" and .sync == "in-sync" and .restore.safety_snapshot == 0' \
    <(status_json pri) >/dev/null || fail "after a refused restore: $(status_json pri | jq -c '{sync, restore}')"
cmp -s primary.img before.img || fail "a refused restore changed the volume"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot list --json |
    jq -e 'length == 5' >/dev/null || fail "a refused restore took a snapshot"

recv0=$(status_field pri bytes_received)
restore_and_wait --snapshot "$id3"
recv1=$(status_field pri bytes_received)
fetched=$(jq -r .fetched_bytes <<<"$RESTORE")
safety=$(jq -r .safety_snapshot <<<"$RESTORE")
[ "$safety" -gt "${ids[4]}" ] || fail "no safety snapshot taken: $RESTORE"
want=$((differ * 4096))
[ "$fetched" -ge "$want" ] || fail "fetched $fetched bytes, but $want differ"
[ $((fetched * 10)) -le $((want * 11)) ] ||
    fail "fetched $fetched bytes for $want differing: more than 1.1x"
link=$((recv1 - recv0))
[ $((link * 10)) -le $((want * 11)) ] ||
    fail "$link bytes came over the link for $want differing: more than 1.1x"
log "FIGURE restore from snapshot: $want bytes differ, $fetched fetched, $link over the link ($(awk "BEGIN{printf \"%.3f\", $link/$want}")x), $ELAPSED_MS ms"
compare_volumes primary.img snap3.img
compare_volumes primary.img replica.img

# The safety snapshot undoes it.
restore_and_wait --snapshot "$safety"
compare_volumes primary.img before.img
compare_volumes primary.img replica.img

# kill -9 of either agent in the middle: resumed, exact.
proxy_cmd px throttle 1000000 >/dev/null
for victim in pri sec; do
    "${CTL[@]}" restore --snapshot "$id3" >/dev/null || fail "restore (kill $victim) not started"
    wait_until -t 60 -m "restore under way before killing $victim" \
        '[ "$(status_json pri | jq -r .restore.done_bytes)" -gt 0 ]'
    [ "$(status_json pri | jq -r .restore.state)" = copying ] ||
        fail "restore not in the middle when $victim was to be killed"
    kill9_agent "$victim"
    if [ "$victim" = pri ]; then
        restart_primary
        jq -e '.restore.resumed == true' <(status_json pri) >/dev/null ||
            fail "the restarted primary did not resume the restore"
        # NBD is refused until it is done.
        ! nbd_python "$NBD_URI" <<'EOF' 2>/dev/null || fail "NBD client accepted during the restore"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
EOF
    else
        restart_secondary
    fi
    proxy_cmd px throttle 0 >/dev/null
    wait_until -t 120 -m "restore done after killing $victim" \
        '[ "$(status_json pri | jq -r .restore.state)" = done ] && [ "$(status_field pri sync)" = in-sync ]'
    compare_volumes primary.img snap3.img
    compare_volumes primary.img replica.img
    restore_and_wait --snapshot "$safety"
    compare_volumes primary.img before.img
    proxy_cmd px throttle 1000000 >/dev/null
done
proxy_cmd px throttle 0 >/dev/null

# --replica: blocks changed behind duplex's back, found by hashes.
stop_agent pri || fail "primary did not stop cleanly"
"$PYTHON" - "$TESTDIR/primary.img" <<'EOF'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for i in range(37):
        f.seek((i * 97 + 3) * 4096 * 8)
        f.write(os.urandom(4096))
EOF
restart_primary
wait_in_sync pri sec
bad=$(blocks_differ primary.img replica.img)
[ "$bad" -eq 37 ] || fail "expected 37 blocks to differ behind duplex's back, found $bad"
restore_and_wait --replica
fetched=$(jq -r .fetched_bytes <<<"$RESTORE")
[ "$fetched" -eq $((bad * 4096)) ] ||
    fail "restore --replica fetched $fetched bytes for $bad differing blocks"
compare_volumes primary.img replica.img
compare_volumes primary.img before.img

# The pair goes on replicating.
scatter 7 100 flush
wait_in_sync pri sec
compare_volumes primary.img replica.img
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
"$DUPLEX_BUILD/duplex-store" --store S restore "$id3" --to store3.img >/dev/null ||
    fail "duplex-store restore of snapshot $id3 failed"
compare_volumes store3.img snap3.img
"$DUPLEX_BUILD/duplex-store" --store S list --json |
    jq -e '[.[] | select(.reason == "before-restore")] | length >= 4' >/dev/null ||
    fail "expected a before-restore snapshot per restore from a snapshot"
