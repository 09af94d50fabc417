#!/bin/bash
# ext4 through nbdfuse + a loop device on a sync primary: mkfs, copy a tree
# of files, umount.  The replica then passes e2fsck -fn and, mounted
# read-only (noload) through its own loop device, holds files with the same
# hashes.
source "$(dirname "$0")/functions.sh"
requires_root
requires_fuse
requires_loop
requires mkfs.ext4 e2fsck sha256sum mount umount

truncate -s 256M primary.img
start_pair sync
wait_in_sync pri sec

mkdir fuse mnt rmnt
# Cleanup state: undo only what is still set up, so a loop device number
# reused by another test is never touched.
loop= rloop= fuse_pid=
undo() {
    mountpoint -q "$TESTDIR/rmnt" && umount "$TESTDIR/rmnt"
    [ -n "$rloop" ] && losetup -d "$rloop"
    mountpoint -q "$TESTDIR/mnt" && umount "$TESTDIR/mnt"
    [ -n "$loop" ] && losetup -d "$loop"
    if mountpoint -q "$TESTDIR/fuse"; then
        fusermount3 -u "$TESTDIR/fuse" 2>/dev/null || umount -l "$TESTDIR/fuse"
    fi
    if [ -n "$fuse_pid" ]; then
        kill "$fuse_pid" 2>/dev/null
        wait "$fuse_pid" 2>/dev/null
    fi
    return 0
}
cleanup_fn undo

nbdfuse -P nbdfuse.pid fuse --unix "$NBD_SOCK" >nbdfuse.log 2>&1 </dev/null &
fuse_pid=$!
wait_until -m "nbdfuse ready" '[ -s nbdfuse.pid ] && [ -e fuse/nbd ]'
[ "$(stat -c %s fuse/nbd)" = 268435456 ] || fail "fuse/nbd has the wrong size"

loop=$(losetup --find --show fuse/nbd) || fail "losetup on fuse/nbd failed"
timeout $((120 * SLOW)) mkfs.ext4 -q -F "$loop" || fail "mkfs.ext4 through the primary failed"
mount -t ext4 "$loop" mnt || fail "mounting the new ext4 failed"

# A tree of files: many small, some medium, one large, one sparse, and a
# copy of the duplex sources.
"$PYTHON" - mnt <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(4)
for d in range(8):
    os.makedirs(f"{root}/dir{d}/sub", exist_ok=True)
    for i in range(40):
        with open(f"{root}/dir{d}/f{i}", "wb") as f:
            f.write(os.urandom(rng.randrange(0, 20000)))
    with open(f"{root}/dir{d}/sub/medium", "wb") as f:
        f.write(os.urandom(rng.randrange(100000, 3000000)))
with open(f"{root}/large", "wb") as f:
    for _ in range(40):
        f.write(os.urandom(1 << 20))
with open(f"{root}/sparse", "wb") as f:
    f.seek(50 << 20)
    f.write(b"end of a sparse file\n")
PY
cp -a "$DUPLEX_SRC/tests" "$DUPLEX_SRC/deploy" mnt/ 2>/dev/null || true
(cd mnt && find . -type f ! -path './lost+found/*' -print0 | sort -z |
    xargs -0 sha256sum) >manifest.txt
log "$(wc -l <manifest.txt) files written, $(du -sh mnt | cut -f1)"
umount mnt
losetup -d "$loop"
loop=
fusermount3 -u fuse
wait_until -m "nbdfuse exit" '! kill -0 "$fuse_pid" 2>/dev/null'
wait "$fuse_pid" || fail "nbdfuse exited with an error: $(cat nbdfuse.log)"
fuse_pid=

wait_in_sync pri sec
compare_volumes primary.img replica.img
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"

e2fsck -fn replica.img >fsck.txt 2>&1 || { cat fsck.txt; fail "e2fsck -fn on the replica failed"; }
tail -n 1 fsck.txt
rloop=$(losetup --find --show --read-only replica.img) || fail "losetup on the replica failed"
mount -t ext4 -o ro,noload "$rloop" rmnt || fail "mounting the replica read-only failed"
(cd rmnt && sha256sum --quiet -c "$TESTDIR/manifest.txt") ||
    fail "files on the replica differ from those written"
log "all $(wc -l <manifest.txt) file hashes match on the replica"
umount rmnt
losetup -d "$rloop"
rloop=
