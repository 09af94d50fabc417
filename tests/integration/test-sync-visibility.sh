#!/bin/bash
# Sync mode: a client writes a sequence of blocks (aligned and unaligned,
# some with FUA, some write-zeroes); after each answered write the replica
# file, read directly, already holds it.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

truncate -s 64M primary.img
start_pair sync
wait_in_sync pri sec

nbd_python "$NBD_SOCK" "$TESTDIR/replica.img" "$TESTDIR/primary.img" \
    "$DUPLEXCTL" "$TESTDIR/pri.ctl" <<'PY' ||
import json, os, random, subprocess, sys
import nbd

sock, replica, primary, duplexctl, ctl = sys.argv[1:6]

def link():
    s = json.loads(subprocess.run([duplexctl, "--control", ctl, "status", "--json"],
                                  capture_output=True, text=True).stdout or "{}")
    return f"primary connection {s.get('connection')!r}, sync {s.get('sync')!r}"

h = nbd.NBD()
h.connect_unix(sock)
size = h.get_size()
align = max(1, h.get_block_size(nbd.SIZE_MINIMUM))
rfd = os.open(replica, os.O_RDONLY)
pfd = os.open(primary, os.O_RDONLY)
rng = random.Random(2)

def check(what, off, want):
    got = os.pread(rfd, len(want), off)
    if got != want:
        bad = next(i for i in range(len(want)) if i >= len(got) or got[i] != want[i])
        sys.exit(f"after {what} at {off}+{len(want)} (request {i}) was answered, "
                 f"the replica differs at byte {off + bad}; {link()}")
    if os.pread(pfd, len(want), off) != want:
        sys.exit(f"after {what} at {off}+{len(want)}, the primary volume differs")

n = 400
for i in range(n):
    length = rng.choice([512, 4096, 65536, 1 << 20, rng.randrange(1, 200000)])
    length = max(align, length // align * align)
    off = rng.randrange(0, (size - length) // align + 1) * align
    kind = i % 4
    if kind == 3 and h.can_zero():
        # Data first, so that the zeroes are visible as a change.
        data = os.urandom(length)
        h.pwrite(data, off)
        check("write", off, data)
        h.zero(length, off, 0 if i % 8 == 3 else nbd.CMD_FLAG_NO_HOLE)
        check("write-zeroes", off, bytes(length))
    else:
        data = os.urandom(length)
        flags = nbd.CMD_FLAG_FUA if kind == 1 and h.can_fua() else 0
        h.pwrite(data, off, flags)
        check("FUA write" if flags else "write", off, data)
h.flush()
h.shutdown()
print(f"{n} writes visible on the replica as soon as answered (alignment {align})")
PY
    fail "a write answered in sync mode was not on the replica"

compare_volumes primary.img replica.img
