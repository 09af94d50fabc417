#!/bin/bash
# Disaster-recovery drill, unplanned failover and back (DR_MODE=sync or
# async, default both in turn):
#
#   1. A pair replicating (the secondary keeps snapshots); the link is cut
#      and the primary writes blocks the secondary never receives (what a
#      site loses in a disaster: async writes in flight, writes during an
#      outage); then kill -9 of the primary.
#   2. Failover: duplex-primary on the secondary's volume and metadata
#      (listening); clients write there.
#   3. The old primary returns as duplex-secondary on its own volume and
#      metadata (dialling, with a snapshot store of its own): refused as a
#      split brain, nothing overwritten; `resolve --discard-local` there;
#      the resync covers the union of the blocks written on either side
#      since the failover (plus the regions the crashed primary's activity
#      log held), never the whole volume: asserted against what the drill
#      wrote; the returning node's state before the resync is kept as a
#      before-resync snapshot, byte-exact.
#   4. Planned switchover back (demote) with 0 bytes resynced; the volumes
#      byte-identical at every step.
#   5. The same with ext4 (drill_ext4): files written on the primary
#      through nbdfuse + loop, more while the link is cut, kill -9; the
#      failover primary mounts it (journal replay), changes files and
#      unmounts; resolve, resync (only what differs: bounded against the
#      blocks that differ between the three states); demote back with 0
#      bytes resynced; both volumes byte-identical, e2fsck -fn clean, and
#      exactly the files and hashes the failover primary left.
# Prints FIGURES lines: bytes resynced vs bytes changed.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fs-functions.sh"
requires_python_nbd
requires_root
requires_fuse
requires_loop
requires mkfs.ext4 e2fsck sha256sum mount umount

SIZE_MIB=256

# offsets SEED COUNT...: the distinct 4 KiB block numbers `scatter SEED
# COUNT` writes (same generator), for every SEED COUNT pair.
offsets() {
    "$PYTHON" - "$((SIZE_MIB * 1024 * 1024))" "$@" <<'PY'
import random, sys
size = int(sys.argv[1])
blocks = set()
args = sys.argv[2:]
for i in range(0, len(args), 2):
    rng = random.Random(int(args[i]))
    for _ in range(int(args[i + 1])):
        blocks.add(rng.randrange(size // 4096))
for b in sorted(blocks):
    print(b)
PY
}

drill() {
    local mode=$1 lost new union_blocks al_regions s total sent zeroed limit id
    log "==== drill, $mode mode ===="
    rm -rf "$TESTDIR"/*.img "$TESTDIR"/*.meta "$TESTDIR"/S-* "$TESTDIR"/px.*
    make_pattern_image primary.img "$SIZE_MIB" >/dev/null
    PRI=pri SEC=sec
    SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S-sec")
    PAIR_PROXY=1 start_outage_pair "$mode"
    wait_in_sync pri sec
    scatter 11 300 flush
    wait_in_sync pri sec

    # ---- 1: writes the secondary never gets, then the disaster ----
    proxy_cmd px cut >/dev/null
    wait_until -t 30 -m "primary notices the cut" \
        '[ "$(status_field pri connection)" != connected ]'
    scatter 12 150 flush
    kill9_agent pri
    stop_agent sec || fail "the secondary did not stop cleanly"
    stop_proxy px

    # ---- 2: failover ----
    start_primary pri2 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
        --nbd "unix:$TESTDIR/pri2.sock" --listen 127.0.0.1:0 --mode "$mode" \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary
    NBD_SOCK=$TESTDIR/pri2.sock scatter 13 200 flush

    # ---- 3: the old primary returns as a secondary ----
    cp --sparse=always primary.img returning-before.img
    start_secondary sec2 --volume "$TESTDIR/primary.img" --meta "$TESTDIR/primary.meta" \
        --peer "127.0.0.1:$PRIMARY_PORT" --snapshot-store "$TESTDIR/S-old" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary
    wait_until -t 30 -m "split brain seen by both" \
        '[ "$(status_field pri2 split_brain)" = true ] && [ "$(status_field sec2 split_brain)" = true ]'
    cmp -s primary.img returning-before.img ||
        fail "the returning node's volume changed before anyone resolved"
    al_regions=$(grep -o 'the [0-9]* regions it was writing' sec2.log | grep -o '[0-9]*' || echo 0)
    "$DUPLEXCTL" --control "$TESTDIR/sec2.ctl" resolve --discard-local >/dev/null ||
        fail "resolve --discard-local failed"
    PRI=pri2 SEC=sec2
    wait_in_sync pri2 sec2
    compare_volumes replica.img primary.img

    lost=$(offsets 12 150 | wc -l)
    new=$(offsets 13 200 | wc -l)
    union_blocks=$(offsets 12 150 13 200 | wc -l)
    s=$(status_json pri2)
    total=$(jq -r .resync_total_bytes <<<"$s")
    sent=$(jq -r .resync_data_bytes_sent <<<"$s")
    zeroed=$(jq -r .resync_zero_bytes_sent <<<"$s")
    # What travels: the union of the blocks written on either side; the
    # regions the crashed primary's log held are compared by checksum, so
    # they add only blocks that differ (the ones it wrote: in the union).
    limit=$((union_blocks * 4096 * 11 / 10))
    echo "FIGURES: $TEST_NAME $mode: resync sent $sent bytes of block data for $union_blocks distinct blocks changed since the failover ($lost on the old primary, $new on the new one: $((union_blocks * 4096)) bytes): ratio $(awk -v a="$sent" -v b="$((union_blocks * 4096))" 'BEGIN { printf "%.3f", a / b }') (blocks that are zero on the new primary travel as zero ranges: $zeroed bytes); $total bytes were marked ($al_regions activity-log regions of 4 MiB of the crashed primary, compared by checksum)"
    [ $((sent + zeroed)) -le "$limit" ] ||
        fail "$mode: $((sent + zeroed)) bytes resynced (data and zero ranges), more than 1.1 x the $((union_blocks * 4096)) bytes changed on either side"
    [ $((sent + zeroed)) -ge $((union_blocks * 4096)) ] ||
        fail "$mode: $((sent + zeroed)) bytes resynced, fewer than the $((union_blocks * 4096)) bytes changed on either side"
    [ "$sent" -ge $((new * 4096)) ] ||
        fail "$mode: only $sent bytes resynced, fewer than the $new blocks the new primary wrote"

    # The returning node's state before the resync, as a snapshot.
    "$DUPLEXCTL" --control "$TESTDIR/sec2.ctl" snapshot list --json >list.json
    id=$(jq -r '[.[] | select(.reason == "before-resync")][0].id' list.json)
    [ -n "$id" ] && [ "$id" != null ] ||
        fail "$mode: no before-resync snapshot on the returning node: $(cat list.json)"
    wait_until -t 120 -m "snapshot $id complete" \
        "\"\$DUPLEXCTL\" --control \"\$TESTDIR/sec2.ctl\" snapshot list --json | jq -e '.[] | select(.id == $id) | .state == \"complete\"' >/dev/null"

    # ---- 4: planned switchover back ----
    NBD_SOCK=$TESTDIR/pri2.sock scatter 14 50 flush
    wait_in_sync pri2 sec2
    demote_failover "$mode"
    "$DUPLEX_BUILD/duplex-store" --store S-old restore "$id" --to before.img >/dev/null ||
        fail "$mode: restoring the before-resync snapshot failed"
    compare_volumes before.img returning-before.img
    back_on_original "$mode"
}

# demote_failover MODE: planned switchover of pri2 (the failover primary)
# to sec2 (the returning node): demote, pri2 exits 0, sec2 stops.
demote_failover() {
    "$DUPLEXCTL" --control "$TESTDIR/pri2.ctl" demote >out.txt 2>&1 ||
        fail "$1: demote failed: $(cat out.txt)"
    agent_exit pri2
    [ "$AGENT_EXIT" = 0 ] || fail "$1: pri2 exited with status $AGENT_EXIT"
    stop_agent sec2 || fail "sec2 did not stop cleanly"
    _outage_forget pri2; _outage_forget sec2
}

# back_on_original MODE: the original roles again (pri3 on primary.img,
# sec3 on replica.img): in sync with 0 bytes resynced; both stopped,
# volumes identical.
back_on_original() {
    local mode=$1 s
    start_secondary sec3 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
        --listen 127.0.0.1:0 \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary
    start_primary pri3 --volume "$TESTDIR/primary.img" --meta "$TESTDIR/primary.meta" \
        --nbd "unix:$TESTDIR/pri3.sock" --peer "127.0.0.1:$SECONDARY_PORT" --mode "$mode" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary
    PRI=pri3 SEC=sec3
    wait_in_sync pri3 sec3
    s=$(status_json pri3)
    jq -e '.resync_total_bytes == 0 and .resync_data_bytes_sent == 0' <<<"$s" >/dev/null ||
        fail "$mode: the switchover back resynced: $(jq -c '{resync_total_bytes, resync_data_bytes_sent, sync_decision}' <<<"$s")"
    log "$mode: back on the original primary, 0 bytes resynced"
    stop_agent pri3 || fail "pri3 did not stop cleanly"
    stop_agent sec3 || fail "sec3 did not stop cleanly"
    compare_volumes primary.img replica.img
    _outage_forget pri3; _outage_forget sec3; _outage_forget pri; _outage_forget sec
}

# write_tree DIR SEED N: N MiB of files of random data under DIR/SEED
# (one large file, small files, a rewrite of a file of an earlier tree if
# there is one), each fsynced.
write_tree() {
    "$PYTHON" - "$@" <<'PY' || fail "writing files under $1 failed"
import os, random, sys
root, seed, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
def put(path, data, mode="wb"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
put(f"{root}/t{seed}/big", os.urandom(mib << 19))
for i in range(200):
    put(f"{root}/t{seed}/small/f{i}", os.urandom(rng.randrange(0, 8000)))
for d in sorted(os.listdir(root)):
    if d.startswith("t") and d != f"t{seed}":
        with open(f"{root}/{d}/big", "r+b") as f:
            f.seek(rng.randrange(0, os.path.getsize(f"{root}/{d}/big")))
            f.write(os.urandom(65536))
            os.fsync(f.fileno())
        break
PY
}

# blocks_in A B [C]: 4 KiB blocks where A and B differ (or, with C, where
# A differs from B or B from C: the union of two changes).
blocks_in() {
    "$PYTHON" - "$@" <<'PY'
import sys
fs = [open(p, "rb") for p in sys.argv[1:]]
n = 0
while True:
    bufs = [f.read(1 << 20) for f in fs]
    if not bufs[0]:
        break
    for i in range(0, len(bufs[0]), 4096):
        blk = [b[i:i + 4096] for b in bufs]
        if any(blk[k] != blk[k + 1] for k in range(len(blk) - 1)):
            n += 1
print(n)
PY
}

drill_ext4() {
    local mode=$1 s sent zeroed total d_union d_need
    log "==== ext4 drill, $mode mode ===="
    rm -rf "$TESTDIR"/*.img "$TESTDIR"/*.meta "$TESTDIR"/S-* "$TESTDIR"/px.*
    VOLUME_SIZE=$((128 << 20))
    truncate -s "$VOLUME_SIZE" primary.img
    PRI=pri SEC=sec
    SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S-sec")
    PAIR_PROXY=1 start_outage_pair "$mode"
    wait_in_sync pri sec
    attach live "$NBD_SOCK"
    timeout $((120 * SLOW)) mkfs.ext4 -q -F -b 4096 \
        -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" ||
        fail "mkfs.ext4 through the primary failed"
    mkdir -p mnt
    mount -t ext4 "$LOOP" mnt || fail "mounting ext4 failed"
    hold mount "$TESTDIR/mnt"
    write_tree mnt 1 8
    sync -f mnt
    wait_in_sync pri sec

    # ---- the disaster: files the secondary never gets, kill -9 ----
    proxy_cmd px cut >/dev/null
    wait_until -t 30 -m "primary notices the cut" \
        '[ "$(status_field pri connection)" != connected ]'
    write_tree mnt 2 4
    sync -f mnt
    kill9_agent pri
    # The mount, loop device and nbdfuse of a dead server: forced.
    umount -l mnt 2>/dev/null || true
    losetup -d "$LOOP" 2>/dev/null || true
    fusermount3 -u live.fuse 2>/dev/null || umount -l live.fuse 2>/dev/null || true
    held=()
    ! mountpoint -q mnt || fail "$mode: mnt is still mounted after the primary died"
    stop_agent sec || fail "the secondary did not stop cleanly"
    stop_proxy px
    cp --sparse=always replica.img failover-start.img

    # ---- failover: the replica serves, its ext4 mounts and changes ----
    start_primary pri2 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
        --nbd "unix:$TESTDIR/pri2.sock" --listen 127.0.0.1:0 --mode "$mode" \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary
    attach fo "$TESTDIR/pri2.sock"
    mount -t ext4 "$LOOP" mnt || fail "$mode: the replica's ext4 does not mount after the failover"
    hold mount "$TESTDIR/mnt"
    [ -f mnt/t1/big ] || fail "$mode: the files written before the cut are not on the replica"
    write_tree mnt 3 4
    rm -rf mnt/t1/small
    manifest mnt manifest.final
    release mount "$TESTDIR/mnt"
    release loop "$LOOP"
    release fuse "$TESTDIR/fo.fuse"

    # ---- the old primary returns, is resolved and resynced ----
    cp --sparse=always primary.img returning-before.img
    start_secondary sec2 --volume "$TESTDIR/primary.img" --meta "$TESTDIR/primary.meta" \
        --peer "127.0.0.1:$PRIMARY_PORT" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary
    wait_until -t 30 -m "split brain seen by both" \
        '[ "$(status_field pri2 split_brain)" = true ] && [ "$(status_field sec2 split_brain)" = true ]'
    "$DUPLEXCTL" --control "$TESTDIR/sec2.ctl" resolve --discard-local >/dev/null ||
        fail "resolve --discard-local failed"
    PRI=pri2 SEC=sec2
    wait_in_sync pri2 sec2
    compare_volumes replica.img primary.img
    s=$(status_json pri2)
    total=$(jq -r .resync_total_bytes <<<"$s")
    sent=$(jq -r .resync_data_bytes_sent <<<"$s")
    zeroed=$(jq -r .resync_zero_bytes_sent <<<"$s")
    # Changed since the failover: the old primary's blocks (its volume
    # against the replica when it took over) and the new primary's.
    d_union=$(blocks_in returning-before.img failover-start.img replica.img)
    # At least: the blocks where the returning node differed from the
    # result (a block both sides changed to the same contents need not
    # travel).
    d_need=$(blocks_in returning-before.img replica.img)
    echo "FIGURES: $TEST_NAME ext4 $mode: resync moved $((sent + zeroed)) bytes ($sent data, $zeroed zero ranges; $total marked) for $((d_union * 4096)) bytes in blocks changed on either side since the failover ($((d_need * 4096)) differing at the end): ratio $(awk -v a="$((sent + zeroed))" -v b="$((d_union * 4096))" 'BEGIN { printf "%.3f", a / b }'); the volume is $VOLUME_SIZE bytes"
    [ $((sent + zeroed)) -ge $((d_need * 4096)) ] ||
        fail "$mode: $((sent + zeroed)) bytes resynced, fewer than the $((d_need * 4096)) bytes that differed"
    [ $((sent + zeroed)) -le $((d_union * 4096 * 11 / 10)) ] ||
        fail "$mode: $((sent + zeroed)) bytes resynced, more than 1.1 x the $((d_union * 4096)) bytes changed on either side"

    # ---- planned switchover back, 0 bytes resynced ----
    demote_failover "$mode"
    back_on_original "$mode"
    e2fsck -fn primary.img >fsck.out 2>&1 || { cat fsck.out >&2; fail "$mode: e2fsck -fn failed"; }
    log "$mode: e2fsck -fn: $(tail -n 1 fsck.out)"
    mount -t ext4 -o ro,loop primary.img mnt || fail "$mode: mounting the result failed"
    hold mount "$TESTDIR/mnt"
    manifest mnt manifest.result
    release mount "$TESTDIR/mnt"
    diff -u manifest.final manifest.result >manifest.diff ||
        { head -n 20 manifest.diff >&2; fail "$mode: the files differ from those the failover primary left"; }
    log "$mode: ext4 after failover and failback: $(wc -l <manifest.result) files with the expected hashes"
}

for m in ${DR_MODE:-sync async}; do
    drill "$m"
done
for m in ${DR_MODE:-sync async}; do
    drill_ext4 "$m"
done
