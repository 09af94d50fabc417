#!/bin/bash
# Issue 9: ext4 on the primary, a snapshot taken on the primary, and the
# snapshot is that filesystem at that instant.
#
# ext4 is made on a sync primary through nbdfuse + a loop device and filled
# with a tree of files (random data, many small files, a file overwritten
# and one deleted before the snapshot).  The filesystem is frozen
# (fsfreeze -f: everything on disk, journal checkpointed, needs_recovery
# clear), the primary's volume is copied, the snapshot is created through
# the primary's control socket, and the filesystem is thawed.  While the
# snapshot is still being copied into the store (--snapshot-copy-rate keeps
# it copying), files are overwritten in place, so copy-before-write must
# save the old blocks; then files are deleted, added and renamed.  Once the
# snapshot is complete, files keep changing while the secondary exports it
# over NBD, and then, with no agent running, duplex-store serves it.  Each time the
# snapshot must be, byte for byte, the volume frozen at the snapshot; pass
# e2fsck -fn with the filesystem clean (no journal to replay); mount
# read-only without noload; and hold exactly the files and hashes recorded
# before the snapshot, not those after the changes.
source "$(dirname "$0")/functions.sh"
requires_root
requires_fuse
requires_loop
requires mkfs.ext4 e2fsck dumpe2fs fsfreeze sha256sum nbdcopy mount umount
STORE_BIN=$DUPLEX_BUILD/duplex-store
[ -x "$STORE_BIN" ] || fail "$STORE_BIN not built (DUPLEX_BUILD=$DUPLEX_BUILD)"

source "$(dirname "$0")/fs-functions.sh"

# check_snapshot NAME SOCKET: the snapshot served on SOCKET is frozen.img
# byte for byte, a clean ext4 that e2fsck -fn passes, mounts read-only
# with its journal, and holds manifest.before, not manifest.after.
check_snapshot() {
    local name=$1 sock=$2 dev
    rm -f "$name.img"
    nbdcopy "nbd+unix:///?socket=$sock" "$name.img" ||
        fail "$name: nbdcopy from the export failed"
    compare_volumes "$TESTDIR/frozen.img" "$TESTDIR/$name.img"
    rm -f "$name.img"

    # The rest through the export itself: nbdfuse, a read-only loop device.
    attach "$name" "$sock" ro
    dev=$LOOP
    dumpe2fs -h "$dev" >"$name.dumpe2fs" 2>&1 || fail "$name: dumpe2fs failed"
    grep -q '^Filesystem state: *clean$' "$name.dumpe2fs" ||
        fail "$name: the filesystem is not clean: $(grep '^Filesystem state' "$name.dumpe2fs")"
    ! grep -q '^Filesystem features:.*needs_recovery' "$name.dumpe2fs" ||
        fail "$name: the journal needs recovery (the freeze did not reach the snapshot)"
    e2fsck -fn "$dev" >"$name.fsck" 2>&1 ||
        { cat "$name.fsck" >&2; fail "$name: e2fsck -fn failed"; }
    log "$name: e2fsck -fn: $(tail -n 1 "$name.fsck")"
    mkdir -p "$name.mnt"
    # Not noload: a clean journal needs no replay on a read-only device.
    mount -t ext4 -o ro "$dev" "$name.mnt" || fail "$name: mounting read-only failed"
    hold mount "$TESTDIR/$name.mnt"
    manifest "$name.mnt" "$name.manifest"
    if ! diff -u manifest.before "$name.manifest" >"$name.manifest.diff"; then
        head -n 40 "$name.manifest.diff" >&2
        fail "$name: the files differ from those at the snapshot"
    fi
    cmp -s manifest.after "$name.manifest" &&
        fail "$name: the snapshot holds the files as changed after it"
    log "$name: the $(wc -l <"$name.manifest") files and hashes are those at the snapshot"
    release mount "$TESTDIR/$name.mnt"
    release loop "$dev"
    release fuse "$TESTDIR/$name.fuse"
}

# snap_state ID: the state of snapshot ID in the secondary's list.
snap_state() {
    "$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot list --json |
        jq -r --argjson id "$1" '.[] | select(.id == $id) | .state'
}

# ---- the pair, ext4 on the primary ----

VOLUME_SIZE=$((128 << 20))
truncate -s "$VOLUME_SIZE" primary.img
# The first snapshot reads the whole replica: at 12 MiB/s it copies for
# about 10 s (4 MiB/s, 30 s in a sanitizer build, where the writes below
# take 2-3 times as long), long enough to be overwritten under (asserted
# below).
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S"
                --snapshot-copy-rate "$((12 / SLOW > 1 ? 12 / SLOW : 1))M")
start_pair sync
wait_in_sync pri sec

attach live "$NBD_SOCK"
# lazy_itable_init=0: no ext4lazyinit thread writing after the mount.
timeout $((120 * SLOW)) mkfs.ext4 -q -F -b 4096 \
    -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" ||
    fail "mkfs.ext4 through the primary failed"
mkdir mnt
mount -t ext4 "$LOOP" mnt || fail "mounting the new ext4 failed"
hold mount "$TESTDIR/mnt"
LIVE_LOOP=$LOOP

# The tree at the snapshot: random data, many small files, a sparse file;
# one file overwritten in place and one deleted before the snapshot.
"$PYTHON" - mnt <<'PY' || fail "writing the tree failed"
import os, random, sys
root = sys.argv[1]
rng = random.Random(9)
MiB = 1 << 20
def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
for i in range(6):
    put(f"{root}/random/r{i}", os.urandom(rng.randrange(1 * MiB, 5 * MiB)))
for d in range(30):
    for i in range(50):
        put(f"{root}/small/d{d}/f{i}", os.urandom(rng.randrange(0, 6000)))
put(f"{root}/rewritten", os.urandom(MiB))
with open(f"{root}/rewritten", "r+b") as f:
    f.write(os.urandom(MiB))
put(f"{root}/gone", os.urandom(3 * MiB))
os.unlink(f"{root}/gone")
put(f"{root}/overwrite-later", os.urandom(2 * MiB))
put(f"{root}/delete-later", os.urandom(4 * MiB))
with open(f"{root}/sparse", "wb") as f:
    f.seek(20 * MiB)
    f.write(b"the end of a sparse file\n")
PY
manifest mnt manifest.before
log "$(wc -l <manifest.before) files written, $(du -sh mnt | cut -f1)"

# ---- the snapshot, of the frozen filesystem ----

# fsfreeze -f syncs the filesystem and flushes the loop device, which
# fsyncs its nbdfuse file: every block is answered by the sync primary, so
# the volume copied now is what the snapshot must hold.  Nothing in this
# window may write to mnt (it would block until the thaw).
fsfreeze -f mnt || fail "fsfreeze -f through loop + nbdfuse failed"
hold thaw "$TESTDIR/mnt"
cp --sparse=always primary.img frozen.img
out=$("$DUPLEXCTL" --control "$TESTDIR/pri.ctl" snapshot create --name ext4 --json) ||
    fail "snapshot create on the primary: $out"
release thaw "$TESTDIR/mnt"
t_snap=$(now_ms)
id=$(jq -r .id <<<"$out")
[[ "$id" =~ ^[0-9]+$ ]] || fail "snapshot create answered '$out'"
e2fsck -fn frozen.img >frozen.fsck 2>&1 ||
    { cat frozen.fsck >&2; fail "e2fsck -fn on the volume as frozen failed (test setup)"; }
log "snapshot $id taken on the primary of the frozen filesystem"

# ---- changes after the snapshot, the first while it is copied ----

# In place, while the snapshot is still being copied: the old contents of
# blocks it holds and has not copied yet are saved first (copy-before-write,
# in META.snapjournal, README).
"$PYTHON" - mnt <<'PY' || fail "overwriting files in place failed"
import os, random, sys
root = sys.argv[1]
rng = random.Random(10)
def rewrite(path, off, n):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(os.urandom(n))
        f.flush()
        os.fsync(f.fileno())
for i in range(6):
    p = f"{root}/random/r{i}"
    rewrite(p, rng.randrange(os.path.getsize(p) - 128 * 1024), 128 * 1024)
rewrite(f"{root}/overwrite-later", 0, 2 * 1024 * 1024)
PY
# cbw_seen: something was journaled (while a snapshot copies); else fails
# the test once the snapshot is no longer copying.  Sets CBW_BYTES.
cbw_seen() {
    CBW_BYTES=$(stat -c %s replica.meta.snapjournal 2>/dev/null) || CBW_BYTES=0
    [ "$CBW_BYTES" -gt 0 ] && return 0
    [ "$(snap_state "$id")" = copying ] ||
        fail "snapshot $id was copied before any overwrite after it reached the replica: no copy-before-write (the copy was faster than the test)"
    return 1
}
wait_until -m "copy-before-write of the overwritten blocks" cbw_seen
log "overwrites $(($(now_ms) - t_snap)) ms after the snapshot, while it copies: copy-before-write saved $CBW_BYTES bytes"

# Then deletes (their blocks reused by new files), an append, a rename.
"$PYTHON" - mnt <<'PY' || fail "changing the tree failed"
import os, shutil, sys
root = sys.argv[1]
MiB = 1 << 20
with open(f"{root}/random/r5", "ab") as f:
    f.write(os.urandom(MiB))
os.unlink(f"{root}/delete-later")
for d in range(10):
    shutil.rmtree(f"{root}/small/d{d}")
os.rename(f"{root}/small/d10", f"{root}/small/d10-renamed")
os.makedirs(f"{root}/new")
for i in range(4):
    with open(f"{root}/new/n{i}", "wb") as f:
        f.write(os.urandom(2 * MiB))
PY
sync -f mnt
manifest mnt manifest.after
cmp -s manifest.before manifest.after &&
    fail "the changes after the snapshot changed no file (test setup)"
wait_in_sync pri sec
log "all changes after the snapshot are on the replica $(($(now_ms) - t_snap)) ms after it"

wait_until -t 120 -m "snapshot $id complete" "[ \"\$(snap_state $id)\" = complete ]"
log "snapshot $id complete $(($(now_ms) - t_snap)) ms after it was taken: $("$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot list --json |
    jq -c --argjson id "$id" '.[] | select(.id == $id)')"

# ---- the running secondary exports it, while files keep changing ----

mkdir mnt/churn
(
    i=0
    while [ ! -e "$TESTDIR/churn.stop" ]; do
        dd if=/dev/urandom of="mnt/random/r$((i % 6))" bs=64k count=8 \
            seek=$((i % 16)) conv=notrunc,fsync status=none || exit 1
        dd if=/dev/urandom of="mnt/churn/c$((i % 32))" bs=64k count=4 \
            conv=fsync status=none || exit 1
        i=$((i + 1))
    done
) &
churn=$!
hold proc churn "$churn"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot export "$id" \
    --nbd "unix:$TESTDIR/exp.sock" >/dev/null || fail "snapshot export $id failed"
check_snapshot export "$TESTDIR/exp.sock"
touch churn.stop
wait "$churn" || fail "the writes during the export failed"
forget proc churn
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot unexport "$id" >/dev/null ||
    fail "snapshot unexport $id failed"

release mount "$TESTDIR/mnt"
release loop "$LIVE_LOOP"
release fuse "$TESTDIR/live.fuse"
wait_in_sync pri sec
compare_volumes primary.img replica.img
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"

# ---- duplex-store serves it, no agent running ----

"$STORE_BIN" --store S verify >verify.out || fail "verify: $(cat verify.out)"
rm -f serve.pid
echo "+ duplex-store --store S serve $id --nbd unix:serve.sock" >serve.log
"$STORE_BIN" --store S serve "$id" --nbd "unix:$TESTDIR/serve.sock" \
    --pidfile "$TESTDIR/serve.pid" >>serve.log 2>&1 </dev/null &
serve_pid=$!
# Stopped and checked at exit like an agent (SIGTERM, exit 0 within 5 s).
echo "$serve_pid" >>.agents
_agents+=(serve)
_agent_pid["serve"]=$serve_pid
wait_until -m "duplex-store serve writes serve.pid" \
    "[ \"\$(cat serve.pid 2>/dev/null)\" = $serve_pid ]"
check_snapshot store "$TESTDIR/serve.sock"
stop_agent serve || fail "duplex-store serve did not stop cleanly"
