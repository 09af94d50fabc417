#!/bin/bash
# Issue 11: tail capture of an ext4 file system in use, with consistency
# points.
#
# ext4 on a loop device, mounted; a file workload (fio random writes with
# fsync, and cp -a of a tree of files, over and over) writes it directly,
# never through duplex.  duplex-primary tails the loop device with a
# consistency point every second: its pre-hook pauses the workload
# (SIGSTOP to its process group, as a database's lock would) and records
# the files and their hashes under the point's name (DUPLEX_POINT), the
# agent freezes the file system, drains every captured change, places the
# snapshot and thaws, the post-hook resumes the workload.  After the load
# stops and a final point, every snapshot on the secondary is exported and
# must be a clean ext4 (e2fsck -fn, no journal to replay) holding exactly
# the files and hashes recorded at its point; after an unmount the replica
# must be byte-identical to the device and pass e2fsck -fn too.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fs-functions.sh"
source "$(dirname "$0")/tail-functions.sh"
requires_tail

make_device 128
mkdir -p points
cat >pre-hook.sh <<EOF
#!/bin/bash
set -e
cd "$TESTDIR"
touch load.pgid.hold # a load starting from now on waits (tail-functions.sh)
# (the load may have just ended, and the test removes load.pgid then)
g=\$(cat load.pgid 2>/dev/null || true)
if [ -n "\$g" ]; then
    kill -STOP -- -\$g 2>/dev/null || true
    # kill returns before the signal lands: wait until every thread of
    # every process of the load is stopped (fio's jobs are threads: one
    # still inside write() would change a file after it was hashed)
    for i in \$(seq 1 500); do
        busy=0
        for pid in \$(pgrep -g "\$g"); do
            for task in /proc/\$pid/task/*; do
                st=\$(awk '{print \$3}' \$task/stat 2>/dev/null) || continue
                case \$st in T|t|Z|X) ;; *) busy=1 ;; esac
            done
        done
        [ \$busy = 0 ] && break
        sleep 0.01
    done
    [ \$busy = 0 ] || { echo "the load did not stop within 5 s" >&2; exit 1; }
fi
# Points go on after the unmount: their snapshots hold the final files.
if ! mountpoint -q "$MNT"; then echo unmounted >"points/\$DUPLEX_POINT.manifest"; exit 0; fi
(cd "$MNT" && find . -type f ! -path './lost+found/*' -print0 | sort -z |
    xargs -0 -r sha256sum) >"points/\$DUPLEX_POINT.manifest"
EOF
cat >post-hook.sh <<EOF
#!/bin/bash
cd "$TESTDIR"
rm -f load.pgid.hold
g=\$(cat load.pgid 2>/dev/null || true)
if [ -n "\$g" ]; then kill -CONT -- -\$g 2>/dev/null || true; fi
exit 0
EOF
chmod +x pre-hook.sh post-hook.sh

start_tail_secondary
start_tail_primary --snapshot-every 1 --freeze "$MNT" \
    --pre-hook "$TESTDIR/pre-hook.sh" --post-hook "$TESTDIR/post-hook.sh"
wait_status pri connection connected
[ "$(status_field pri consistency)" = points ] || fail "the primary does not say consistency: points"
wait_until -m "the secondary says consistency: points" \
    '[ "$(status_field sec consistency)" = points ]'
wait_tracing

w0=$(sectors_written)
start_load
wait_until -m "the load writes files" '[ -s "$MNT/load.0.0" ] && [ -d "$MNT/copy2" ]'
# Six points with the load writing between them, however long that takes.
p0=$(status_json pri | jq -r .points.taken)
wait_until -t 120 -m "six consistency points under the load" \
    '[ "$(status_json pri | jq -r .points.taken)" -ge $((p0 + 6)) ]'
stop_load
rm -f load.pgid
written=$((($(sectors_written) - w0) * 512))
log "the workload wrote $written bytes to $DEV"

out=$(take_point final --freeze "$MNT")
final_id=$(jq -r .id <<<"$out")
log "final point: snapshot $final_id, frozen $(jq -r .frozen_ms <<<"$out") ms"
st=$(status_json pri)
taken=$(jq -r .points.taken <<<"$st")
failed=$(jq -r .points.failed <<<"$st")
log "points: $taken taken, $failed failed; capture: $(jq -c .capture <<<"$st")"
[ "$taken" -ge 4 ] || fail "only $taken consistency points were taken"
[ "$failed" -eq 0 ] || fail "$failed consistency points failed: $(jq -r .points.last_error <<<"$st")"
[ "$(jq -r .capture.records_lost <<<"$st")" = 0 ] ||
    fail "trace records were lost with the default buffer"

# ---- the replica: byte-identical after an unmount, a clean ext4 ----
# (a point's hook may be reading the files right now: retry)
wait_until -m "$MNT unmounted" 'umount "$MNT" 2>/dev/null'
forget mount "$MNT"
drain_point after-umount
wait_until -m "the secondary applied everything" \
    '[ "$(status_field sec replication_lag_bytes)" = 0 ]'
compare_volumes "$TESTDIR/device.img" "$TESTDIR/replica.img"
e2fsck -fn "$TESTDIR/replica.img" >replica.fsck 2>&1 ||
    { cat replica.fsck >&2; fail "e2fsck -fn of the replica failed"; }
log "replica: byte-identical to $DEV, e2fsck -fn: $(tail -n 1 replica.fsck)"

# ---- every snapshot: the file system at its point ----
wait_until -t 120 -m "every snapshot copied into the store" \
    '"$DUPLEXCTL" --control sec.ctl snapshot list --json | jq -e "all(.[]; .state == \"complete\")" >/dev/null'
"$DUPLEXCTL" --control sec.ctl snapshot list --json >snapshots.json
n=$(jq length snapshots.json)
[ "$n" -ge "$taken" ] || fail "$n snapshots on the secondary, $taken points taken"
checked=0
while read -r id name; do
    m=points/$name.manifest
    # (taken after the unmount: the files of the final point)
    [ "$(cat "$m" 2>/dev/null)" = unmounted ] && m=points/final.manifest
    [ -e "$m" ] || fail "snapshot $id ($name): no manifest was recorded at that point"
    "$DUPLEXCTL" --control sec.ctl snapshot export "$id" --nbd "unix:$TESTDIR/exp.sock" \
        >/dev/null || fail "snapshot export $id failed"
    rm -f snap.img
    nbdcopy "nbd+unix:///?socket=$TESTDIR/exp.sock" snap.img ||
        fail "nbdcopy of snapshot $id failed"
    "$DUPLEXCTL" --control sec.ctl snapshot unexport "$id" >/dev/null ||
        fail "snapshot unexport $id failed"
    dumpe2fs -h snap.img >snap.dumpe2fs 2>&1 || fail "snapshot $id: dumpe2fs failed"
    ! grep -q '^Filesystem features:.*needs_recovery' snap.dumpe2fs ||
        fail "snapshot $id ($name): the journal needs recovery: the freeze did not reach it"
    e2fsck -fn snap.img >snap.fsck 2>&1 ||
        { cat snap.fsck >&2; fail "snapshot $id ($name): e2fsck -fn failed"; }
    mkdir -p snap.mnt
    mount -o ro,loop snap.img snap.mnt || fail "snapshot $id: mount failed"
    hold mount "$TESTDIR/snap.mnt"
    manifest snap.mnt snap.manifest
    if ! diff -u "$m" snap.manifest >snap.diff; then
        head -n 20 snap.diff >&2
        fail "snapshot $id ($name): the files differ from those at its point"
    fi
    release mount "$TESTDIR/snap.mnt"
    checked=$((checked + 1))
    log "snapshot $id ($name): clean ext4, $(wc -l <snap.manifest) files with the hashes of its point"
done < <(jq -r '.[] | "\(.id) \(.name)"' snapshots.json)
[ "$checked" -ge 5 ] || fail "only $checked snapshots checked"
[ "$(jq -r --argjson id "$final_id" '.[] | select(.id == $id) | .name' snapshots.json)" = final ] ||
    fail "the final snapshot is not named final"
log "PASS: $checked snapshots, each the file system at its point; replica identical"
