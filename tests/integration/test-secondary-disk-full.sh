#!/bin/bash
# The secondary's disk fills up: the replica (sparse, 128 MiB) lives on a
# 64 MiB ext4 file system mounted from a loop device, and 100 MiB of random
# data are written through NBD (sync mode).  The secondary must stop
# applying and say which file, offset and error (status and log); the
# primary keeps answering writes and tracks what the replica misses.  Then
# the operator fixes the disk (secondary stopped, the file system grown to
# 256 MiB, the secondary started again with the same arguments): the missed
# blocks are resynced and the volumes end byte-identical, with resync bytes
# <= 2x the bytes the replica missed.
# A second round fills the (now larger) file system again with a ballast
# file and new writes; this time the secondary stays up, the operator
# deletes the ballast and runs `duplexctl resume`, and the pair converges
# the same way.
source "$(dirname "$0")/functions.sh"
requires_root
requires_loop
requires_python_nbd
requires nbdcopy mkfs.ext4 e2fsck resize2fs mount umount mountpoint fallocate

MiB=$((1024 * 1024))
WRITE_MIB=100

# sfield NAME FIELD: one status field, raw; unlike status_field also when
# it is false or null (jq -e treats those as failures).
sfield() {
    local out
    out=$(status_json "$1") || return 1
    jq -r --arg f "$2" '.[$f]' <<<"$out"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b ? a / b : 0}'; }

MNT=$TESTDIR/mnt
FSIMG=$TESTDIR/fs.img
LOOPDEV=
# The replica is open while the secondary runs: stop it before unmounting.
cleanup_disk() {
    local n
    for n in sec sec2; do
        stop_agent "$n" || true
    done
    if mountpoint -q "$MNT"; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT" ||
            echo "$TEST_NAME: cannot unmount $MNT" >&2
    fi
    if [ -n "$LOOPDEV" ]; then
        losetup -d "$LOOPDEV" || echo "$TEST_NAME: cannot detach $LOOPDEV" >&2
        LOOPDEV=
    fi
}
cleanup_fn cleanup_disk

# mount_fs: attach fs.img to a free loop device and mount it on $MNT.
mount_fs() {
    LOOPDEV=$(losetup -f --show "$FSIMG") || fail "losetup -f --show $FSIMG failed"
    mount "$LOOPDEV" "$MNT" || fail "mount $LOOPDEV $MNT failed"
}
umount_fs() {
    umount "$MNT" || fail "umount $MNT failed"
    losetup -d "$LOOPDEV" || fail "losetup -d $LOOPDEV failed"
    LOOPDEV=
}

mkdir "$MNT"
truncate -s 64M "$FSIMG"
mkfs.ext4 -q -F "$FSIMG" || fail "mkfs.ext4 failed"
mount_fs
log "replica file system: $(df -B1 --output=size,avail "$MNT" | tail -1) bytes (size, available) on $LOOPDEV"

truncate -s 128M primary.img
head -c $((WRITE_MIB * MiB)) /dev/urandom >data.bin
make_certs "$CERTS" primary secondary

SEC_ARGS=(--volume "$MNT/replica.img" --meta "$TESTDIR/replica.meta"
          --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key"
          --tls-ca "$CERTS/ca.pem" --peer-name primary)
start_secondary sec "${SEC_ARGS[@]}" --listen 127.0.0.1:0
port=$SECONDARY_PORT
start_primary pri --volume "$TESTDIR/primary.img" \
    --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/pri.sock" \
    --peer "127.0.0.1:$port" --mode sync --peer-timeout 3 \
    --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name secondary
NBD_SOCK=$TESTDIR/pri.sock
NBD_URI="nbd+unix:///?socket=$NBD_SOCK"
wait_in_sync pri sec
compare_volumes primary.img "$MNT/replica.img"
log "after the initial sync the replica uses $(du -B1 "$MNT/replica.img" | cut -f1) bytes"

# ---- fill the disk ----

t0=$SECONDS
timeout $((120 * SLOW)) nbdcopy data.bin "$NBD_URI" ||
    fail "writing $WRITE_MIB MiB through NBD failed while the replica's disk filled up"
log "$WRITE_MIB MiB written through NBD in $((SECONDS - t0)) s"
wait_until -t 60 -m "secondary reports the full disk" \
    '[ "$(sfield sec last_error)" != null ]'
err=$(sfield sec last_error)
log "secondary: $(status_json sec | jq -c '{connection, sync, replication_paused, applied_bytes, last_error}')"
[[ "$err" == *"$MNT/replica.img"* ]] || fail "secondary last_error does not name the replica file: $err"
[[ "$err" == *"No space left on device"* ]] || fail "secondary last_error does not say \"No space left on device\": $err"
[[ "$err" =~ [0-9]{4,} ]] || fail "secondary last_error does not give an offset: $err"
grep -q "No space left on device" sec.log || fail "sec.log does not report \"No space left on device\""
grep "No space left on device" sec.log | grep -qF "$MNT/replica.img" ||
    fail "sec.log does not name the replica file with the error"

# The primary keeps serving, and tracks what the secondary misses.
timeout $((60 * SLOW)) "$PYTHON" - "$NBD_SOCK" <<'PY' || fail "the primary does not serve writes and reads after the replica's disk filled up"
import os, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
d = os.urandom(1 << 20)
h.pwrite(d, 110 << 20)
h.flush()
assert h.pread(1 << 20, 110 << 20) == d, "read back differs"
h.shutdown()
PY
wait_until -t 60 -m "the primary tracks what the secondary misses" \
    's=$(status_json pri) && jq -e ".out_of_sync_bytes > 0 and (.connection != \"connected\" or .sync != \"in-sync\")" >/dev/null <<<"$s"'
s=$(status_json pri)
log "primary: $(jq -c '{connection, sync, out_of_sync_bytes, bytes_written, last_error}' <<<"$s")"
written=$(jq -r .bytes_written <<<"$s")
applied=$(sfield sec applied_bytes)
missed=$((written - applied))
oos_before=$(jq -r .out_of_sync_bytes <<<"$s")
cmp -s primary.img "$MNT/replica.img" && fail "the replica is identical although its disk is full"

# ---- the operator enlarges the file system ----

stop_agent sec || fail "secondary did not stop cleanly with a full disk"
umount_fs
truncate -s 256M "$FSIMG"
e2fsck -fy "$FSIMG" >e2fsck.log 2>&1 || [ $? -eq 1 ] || fail "e2fsck -fy failed: $(cat e2fsck.log)"
resize2fs "$FSIMG" >resize2fs.log 2>&1 || fail "resize2fs failed: $(cat resize2fs.log)"
mount_fs
log "replica file system grown: $(df -B1 --output=size,avail "$MNT" | tail -1) bytes (size, available)"

SEC=sec2
start_secondary sec2 "${SEC_ARGS[@]}" --listen "127.0.0.1:$port"
wait_in_sync pri sec2
compare_volumes primary.img "$MNT/replica.img"
[ "$(sfield sec2 last_error)" = null ] || fail "secondary still reports an error: $(sfield sec2 last_error)"

s=$(status_json pri)
resync=$(jq -r .resync_bytes_sent <<<"$s")
fig1="restart: written $written bytes, applied on the replica before the disk filled $applied, missed $missed, primary out_of_sync_bytes $oos_before; resync_bytes_total=$(jq -r .resync_bytes_total <<<"$s") resync_bytes_sent=$resync (data $(jq -r .resync_data_bytes_sent <<<"$s"), zero $(jq -r .resync_zero_bytes_sent <<<"$s")); ratio=$(ratio "$resync" "$missed")"
[ "$resync" -le $((2 * missed)) ] ||
    fail "resync sent $resync bytes for $missed bytes the replica missed (more than 2x)"

# ---- round 2: full again, fixed without a restart (resume) ----

# Leave 8 MiB free, then write 24 MiB where the replica has no blocks yet
# (100..124 MiB of the volume).
avail=$(df -B1 --output=avail "$MNT" | tail -1 | tr -d ' ')
fallocate -l $((avail - 8 * MiB)) "$MNT/ballast" || fail "fallocate of the ballast file failed"
log "ballast of $((avail - 8 * MiB)) bytes: $(df -B1 --output=avail "$MNT" | tail -1 | tr -d ' ') bytes left"
w0=$(status_field pri bytes_written)
applied0=$(sfield sec2 applied_bytes)
timeout $((60 * SLOW)) "$PYTHON" - "$NBD_SOCK" <<'PY' || fail "writing 24 MiB through NBD failed while the replica's disk filled up again"
import os, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
for i in range(24):
    h.pwrite(os.urandom(1 << 20), (100 + i) << 20)
h.flush()
h.shutdown()
PY
wait_until -t 60 -m "secondary reports the full disk again" \
    '[ "$(sfield sec2 last_error)" != null ]'
err=$(sfield sec2 last_error)
log "secondary: $(status_json sec2 | jq -c '{connection, sync, replication_paused, applied_bytes, last_error}')"
[[ "$err" == *"$MNT/replica.img"* && "$err" == *"No space left on device"* ]] ||
    fail "secondary last_error does not name the replica file and the error: $err"
wait_until -t 60 -m "the primary tracks what the secondary misses" \
    's=$(status_json pri) && jq -e ".out_of_sync_bytes > 0 and (.connection != \"connected\" or .sync != \"in-sync\")" >/dev/null <<<"$s"'
s=$(status_json pri)
written2=$(($(jq -r .bytes_written <<<"$s") - w0))
applied2=$(($(sfield sec2 applied_bytes) - applied0))
missed2=$((written2 - applied2))
oos2=$(jq -r .out_of_sync_bytes <<<"$s")

rm "$MNT/ballast"
sync -f "$MNT"
out=$("$DUPLEXCTL" --control "$TESTDIR/sec2.ctl" resume 2>&1) ||
    fail "duplexctl resume failed: $out"
log "resume: $out"
wait_in_sync pri sec2
compare_volumes primary.img "$MNT/replica.img"
[ "$(sfield sec2 last_error)" = null ] || fail "secondary still reports an error after resume: $(sfield sec2 last_error)"
s=$(status_json pri)
resync2=$(jq -r .resync_bytes_sent <<<"$s")
echo "FIGURES: secondary-disk-full: $fig1; resume: written $written2, applied before full $applied2, missed $missed2, out_of_sync_bytes $oos2, resync_bytes_sent=$resync2, ratio=$(ratio "$resync2" "$missed2")"
[ "$resync2" -le $((2 * missed2)) ] ||
    fail "resync after resume sent $resync2 bytes for $missed2 bytes the replica missed (more than 2x)"
