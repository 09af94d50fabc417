#!/bin/bash
# Write-order fidelity (async mode): a client writes 4 KiB blocks one after
# the other, each only after the previous one was answered, block k at a
# shuffled position holding its sequence number k.  While that runs, a
# reader scans the replica file directly from the newest block to the
# oldest: whenever it sees block k written it must then also see every
# block j < k, since the replica always equals the primary as it was at
# some earlier instant.  Ends byte-identical.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

truncate -s 64M primary.img
start_pair async --async-buffer 8M
wait_in_sync pri sec

n=4000
"$PYTHON" - "$TESTDIR/replica.img" $n "$TESTDIR/writer.done" >reader.txt <<'PY' &
import mmap, os, random, struct, sys
path, n, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pos = list(range(n)); random.Random(9).shuffle(pos)
try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
except OSError:
    fd = os.open(path, os.O_RDONLY)
buf = mmap.mmap(-1, 4096)
def seq_at(k):
    # A block being written at this very moment may read torn: read again.
    for _ in range(1000):
        os.preadv(fd, [buf], pos[k] * 4096)
        if buf[:] == bytes(4096):
            return None
        if buf[:] == buf[:8] * 512:
            return struct.unpack("<Q", buf[:8])[0]
    sys.exit(f"block {k} stays torn")
scans = partial = 0
while True:
    last = os.path.exists(done)
    newest = None
    for k in range(n - 1, -1, -1):
        s = seq_at(k)
        if s is None:
            if newest is not None:
                sys.exit(f"FAIL: block {newest} is on the replica but the earlier block {k} is not")
            continue
        if s != k + 1:
            sys.exit(f"block {k} holds sequence {s}")
        if newest is None:
            newest = k
    scans += 1
    if newest is not None and newest < n - 1:
        partial += 1
    if last:
        break
print(f"{scans} scans of the replica, {partial} saw a partial prefix; order always kept")
PY
reader=$!
cleanup_fn kill_quiet "$reader"

nbd_python "$NBD_SOCK" $n <<'PY' || fail "writer failed"
import random, struct, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
n = int(sys.argv[2])
pos = list(range(n)); random.Random(9).shuffle(pos)
for k in range(n):
    h.pwrite(struct.pack("<Q", k + 1) * 512, pos[k] * 4096)
h.flush()
h.shutdown()
PY
wait_in_sync pri sec
touch writer.done
wait "$reader" || { cat reader.txt; fail "the replica broke write order"; }
cat reader.txt
compare_volumes primary.img replica.img
