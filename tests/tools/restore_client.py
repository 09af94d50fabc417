#!/usr/bin/python3
"""restore_client: an NBD client reading and writing during an instant
restore, checking every byte it reads.

  restore_client.py URI EXPECTED.img CHANGES.json STOPFILE OUT.json SEED

EXPECTED.img is what the volume holds once the restore began (the
snapshot being restored).  The client keeps its own model: that image
with its own writes applied in order, and checks every read against it,
so a block that is neither the snapshot's nor the client's newer write
fails the run.  Reads favour the regions the restore still has to move
(CHANGES.json: [[offset, length], ...]); writes are whole 4 KiB blocks
and unaligned pieces (read-modify-write of a restore grain).

When the connection breaks (an agent was killed) the client reconnects and
repeats the operation it was in: a write is repeated with the same bytes,
so its outcome is known either way.  It stops when STOPFILE exists and
writes OUT.json: reads, read_bytes, writes, write_bytes, reconnects,
first_read_ms (from start to the first answered read), and the list of
its writes ([offset, hex data]) for the final comparison.
"""
import json
import mmap
import os
import random
import sys
import time

import nbd

uri, expected_path, changes_path, stopfile, out_path, seed = sys.argv[1:7]
rng = random.Random(int(seed))
changes = json.load(open(changes_path))
with open(expected_path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    base = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
# The model: the image, and the 4 KiB blocks the client wrote.
overlay = {}


def model_read(off, length):
    out = bytearray()
    for b in range(off // 4096, (off + length + 4095) // 4096):
        out += overlay.get(b) or base[b * 4096:(b + 1) * 4096]
    skip = off % 4096
    return bytes(out[skip:skip + length])


def model_write(off, data):
    pos = 0
    while pos < len(data):
        b, skip = divmod(off + pos, 4096)
        n = min(4096 - skip, len(data) - pos)
        blk = overlay.get(b) or bytearray(base[b * 4096:(b + 1) * 4096])
        blk[skip:skip + n] = data[pos:pos + n]
        overlay[b] = blk
        pos += n

t0 = time.monotonic()
stats = {"reads": 0, "read_bytes": 0, "writes": 0, "write_bytes": 0,
         "reconnects": 0, "first_read_ms": None}
writes = []


def connect():
    deadline = time.monotonic() + 120
    while True:
        try:
            h = nbd.NBD()
            h.connect_uri(uri)
            return h
        except nbd.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


h = connect()


def retry(fn):
    """Run fn(h); on a broken connection reconnect and run it again."""
    global h
    while True:
        try:
            return fn(h)
        except nbd.Error as e:
            stats["reconnects"] += 1
            sys.stderr.write("restore_client: %s; reconnecting\n" % e)
            try:
                h.shutdown()
            except nbd.Error:
                pass
            h = connect()


def pick_offset(length):
    if rng.random() < 0.8 and changes:
        off, ln = rng.choice(changes)
        off += rng.randrange(0, max(1, ln - length)) & ~4095
    else:
        off = rng.randrange(0, size - length) & ~4095
    return min(off, size - length)


first = True
while True:
    if not first and os.path.exists(stopfile):
        break
    r = rng.random()
    if r < 0.6 or first:
        length = rng.choice([4096, 65536, 1 << 20])
        off = pick_offset(length)
        got = retry(lambda h: h.pread(length, off))
        want = model_read(off, length)
        if got != want:
            for i in range(0, length, 4096):
                if got[i:i + 4096] != want[i:i + 4096]:
                    sys.stderr.write("restore_client: READ MISMATCH at %d "
                                     "(block %d of a read of %d at %d)\n"
                                     % (off + i, i // 4096, length, off))
                    break
            sys.exit(3)
        stats["reads"] += 1
        stats["read_bytes"] += length
        if first:
            stats["first_read_ms"] = (time.monotonic() - t0) * 1000
            first = False
    else:
        if rng.random() < 0.5:
            length = 4096
            off = pick_offset(4096)
        else:
            length = rng.randrange(1, 3000)
            off = pick_offset(8192) + rng.randrange(0, 4096)
        data = os.urandom(length)
        retry(lambda h: h.pwrite(data, off))
        model_write(off, data)
        writes.append([off, data.hex()])
        stats["writes"] += 1
        stats["write_bytes"] += length
retry(lambda h: h.flush())
h.shutdown()
stats["writes_log"] = writes
json.dump(stats, open(out_path, "w"))
