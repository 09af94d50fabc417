#!/bin/bash
# duplex-store serve: a snapshot of a store read over NBD, read-only.
#
# A 64 MiB image with random data, regions of written zeros, holes, and
# blocks only partly zero is imported twice into a store, with changes in
# between (the second snapshot is a delta).  Each snapshot is served on a
# unix socket (the second also on TCP port 0, found through PIDFILE.port):
# nbdcopy from the export equals the image of that state; nbdinfo --map
# (base:allocation) reports hole,zero exactly for the blocks that are all
# zeros, at 4 KiB granularity; qemu-img compare finds them identical; a
# write, trim or zero through libnbd gets EPERM and the connection stays
# usable; a client without structured replies reads correctly; two clients
# at once, REQ_ONE, DF, a 32 MiB read, over 32 MiB refused; while serving,
# the store cannot be written; SIGTERM stops the server with exit 0 within
# 5 s, with a client connected, and removes the socket and the pidfile.
# Failures: a snapshot that does not exist (exit 1, one line), a store
# locked by a writer (exit 1), bad usage (exit 2).
source "$(dirname "$0")/functions.sh"
requires nbdcopy nbdinfo qemu-img
requires_python_nbd

STORE_BIN=$DUPLEX_BUILD/duplex-store
[ -x "$STORE_BIN" ] || fail "$STORE_BIN not built (DUPLEX_BUILD=$DUPLEX_BUILD)"
STORE=$TESTDIR/S

# start_serve NAME ID ENDPOINT: duplex-store serve in the background,
# started and registered by start_agent (output in NAME.log, waits until
# NAME.pid holds its pid; stopped at exit by stop_agent: SIGTERM, exit 0
# within 5 s, no sanitizer report).  Sets ${NAME}_uri.
start_serve() {
    local name=$1 id=$2 ep=$3 uri
    # Options after the command: GNU getopt permutes them.
    start_agent --pidfile-only "$name" "$STORE_BIN" --store "$STORE" serve \
        "$id" --nbd "$ep"
    case $ep in
        unix:*) uri="nbd+unix:///?socket=${ep#unix:}" ;;
        *:0)
            [ -s "$TESTDIR/$name.pid.port" ] ||
                fail "$name: no $name.pid.port for $ep"
            uri="nbd://127.0.0.1:$(cat "$TESTDIR/$name.pid.port")" ;;
        *) uri="nbd://$ep" ;;
    esac
    grep -q "^serving snapshot $id ([0-9]* bytes) read-only on " \
        "$TESTDIR/$name.log" || fail "$name: no 'serving snapshot $id' line"
    printf -v "${name}_uri" '%s' "$uri"
    log "$name serving snapshot $id on $uri (pid $(agent_pid "$name"))"
}

# ---- the two states of the image ----

"$PYTHON" - <<'PY' || fail "building the images"
import os, random
KiB, MiB = 1024, 1 << 20
SIZE = 64 * MiB
rng = random.Random(4242)

def rnd(n):
    return rng.randbytes(n)

with open("img1", "wb") as f:
    f.truncate(SIZE)
    off = 0
    while off < SIZE:
        n = min(rng.choice([4, 8, 60, 256, 1024, 3072]) * KiB, SIZE - off)
        kind = rng.choice(["data", "data", "zeros", "hole"])
        f.seek(off)
        if kind == "data":
            f.write(rnd(n))
        elif kind == "zeros":
            f.write(bytes(n))             # written zeros, not a hole
        off += n
    # blocks only partly zero are data; lone zero blocks inside data too
    for blk in rng.sample(range(SIZE // 4096), 64):
        f.seek(blk * 4096)
        f.write(bytes(2048) + rnd(1) + bytes(2047) if blk % 2
                else bytes(4096))
    f.seek(SIZE - 4096)                    # the last block: data
    f.write(rnd(4096))

# The second state: rewrites, zeroed data, filled holes, single blocks.
with open("img1", "rb") as f:
    img = bytearray(f.read())
for _ in range(40):
    off = rng.randrange(SIZE // 4096) * 4096
    n = min(rng.choice([4, 4, 16, 512, 2048]) * KiB, SIZE - off)
    what = rng.choice(["data", "zeros", "partial"])
    if what == "data":
        img[off:off + n] = rnd(n)
    elif what == "zeros":
        img[off:off + n] = bytes(n)
    else:
        img[off + 100:off + 101] = b"\x01"
with open("img2", "wb") as f:
    f.write(img)
os.truncate("img2", SIZE)
PY

# expected_map IMAGE OUT: the base:allocation map the export must report,
# from the image's contents at 4 KiB: "OFFSET LENGTH zero|data" lines,
# neighbours of the same kind merged.
expected_map() {
    "$PYTHON" - "$1" >"$2" <<'PY'
import sys
Z = bytes(4096)
out, last = [], None
with open(sys.argv[1], "rb") as f:
    off = 0
    while True:
        b = f.read(4096)
        if not b:
            break
        kind = "zero" if b == Z[:len(b)] else "data"
        if out and out[-1][2] == kind:
            out[-1][1] += len(b)
        else:
            out.append([off, len(b), kind])
        off += len(b)
for o, n, k in out:
    print(o, n, k)
PY
}

# served_map URI OUT: nbdinfo --map (base:allocation) in the same form;
# hole,zero (3) is "zero", data (0) is "data", anything else is kept as
# its type so that the comparison fails.
served_map() {
    nbdinfo --map --json "$1" | jq -r '.[] | "\(.offset) \(.length) \(.type)"' |
        awk '{ k = $3 == 3 ? "zero" : $3 == 0 ? "data" : "type" $3
               if (n && k == kind[n] && $1 == off[n] + len[n]) len[n] += $2
               else { n++; off[n] = $1; len[n] = $2; kind[n] = k } }
             END { for (i = 1; i <= n; i++) print off[i], len[i], kind[i] }' \
        >"$2"
}

# check_snapshot NAME IMAGE: what NAME serves is IMAGE, block status
# included.
check_snapshot() {
    local name=$1 img=$2 uri out
    uri=${name}_uri
    uri=${!uri}
    rm -f "$name.copy"
    nbdcopy "$uri" "$name.copy" || fail "nbdcopy from $name failed"
    compare_volumes "$TESTDIR/$name.copy" "$TESTDIR/$img"
    expected_map "$img" "$img.map"
    served_map "$uri" "$name.map"
    if ! out=$(diff "$img.map" "$name.map"); then
        fail "$name: base:allocation differs from the zero blocks of $img (< expected, > served): $(head -20 <<<"$out")"
    fi
    grep -q ' zero$' "$img.map" && grep -q ' data$' "$img.map" ||
        fail "$img has no mix of zero and data blocks (test setup)"
    log "$name: base:allocation matches $img: $(wc -l <"$img.map") extents, $(awk '$3 == "zero" { z += $2 } END { print z + 0 }' "$img.map") bytes of zeros"
    qemu-img compare -f raw -F raw "$img" "$uri" >/dev/null ||
        fail "qemu-img compare: $name differs from $img"
}

# ---- two snapshots, the second a delta ----

"$STORE_BIN" --store "$STORE" import img1 --name state1 >import1.out ||
    fail "import img1: $(cat import1.out)"
"$STORE_BIN" --store "$STORE" import img2 --name state2 >import2.out ||
    fail "import img2: $(cat import2.out)"
list=$("$STORE_BIN" --store "$STORE" list --json)
[ "$(jq -r '.[1].parent' <<<"$list")" = 1 ] &&
    [ "$(jq -r '.[1].full' <<<"$list")" = false ] ||
    fail "the second snapshot is not a delta on the first: $list"
log "store: $(jq -c '[.[] | {id, parent, stored_bytes}]' <<<"$list")"

start_serve s1 1 "unix:$TESTDIR/s1.sock"
start_serve s2 2 "unix:$TESTDIR/s2.sock"
start_serve s2tcp 2 127.0.0.1:0
check_snapshot s1 img1
check_snapshot s2 img2
check_snapshot s2tcp img2
cmp -s img1 img2 && fail "test setup: the two states are equal"

# A second server on a socket in use: refused, the first one unharmed.
out=$("$STORE_BIN" --store "$STORE" serve 1 --nbd "unix:$TESTDIR/s2.sock" 2>&1) &&
    fail "a second serve on s2.sock succeeded: $out"
grep -q "another process is listening" <<<"$out" ||
    fail "second serve on s2.sock: unexpected message: $out"
[ -S "$TESTDIR/s2.sock" ] || fail "a refused serve removed s2.sock"

# While serving, the store cannot be written (the server holds the shared
# lock; a writer needs it alone).
if out=$("$STORE_BIN" --store "$STORE" import img1 2>&1); then
    fail "import succeeded while the store is being served"
fi
grep -q "in use" <<<"$out" || fail "import while serving: unexpected message: $out"

# ---- libnbd: structured replies, writes refused, limits ----

nbd_python "${TESTDIR}/s2.sock" "$TESTDIR/img2" <<'PY' || fail "libnbd checks on s2"
import errno, random, sys
import nbd

sock, path = sys.argv[1], sys.argv[2]
img = open(path, "rb").read()
size = len(img)
rng = random.Random(7)

def connect(structured=True):
    h = nbd.NBD()
    h.set_strict_mode(0)           # let refused requests reach the server
    h.set_request_structured_replies(structured)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(sock)
    assert h.get_size() == size, f"size {h.get_size()} != {size}"
    assert h.is_read_only(), "export not read-only"
    return h

def check_reads(h, what, n=40):
    for _ in range(n):
        off = rng.randrange(size)
        ln = rng.randrange(1, min(size - off, 3 << 20) + 1)
        got = h.pread(ln, off)
        if got != img[off:off + ln]:
            sys.exit(f"{what}: read at {off} length {ln} returned wrong data")

def expect_err(h, what, code, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != code:
            sys.exit(f"{what}: errno {e.errnum} ({e.string}), expected {code}")
        # the server's answer, not libnbd refusing to send it
        if "command failed" not in e.string:
            sys.exit(f"{what}: not sent to the server: {e.string}")
    else:
        sys.exit(f"{what}: succeeded, expected errno {code}")
    # the connection is still usable and in step
    off = rng.randrange(size - 8192)
    if h.pread(8192, off) != img[off:off + 8192]:
        sys.exit(f"after {what}: wrong data")

h = connect()
assert h.get_structured_replies_negotiated(), "no structured replies"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "no base:allocation"
assert h.can_flush() and h.can_multi_conn() and h.can_df()
assert not h.can_trim() and not h.can_zero() and not h.can_fua()
check_reads(h, "structured")
expect_err(h, "write", errno.EPERM, lambda: h.pwrite(b"x" * 4096, 0))
expect_err(h, "write 1 MiB", errno.EPERM,
           lambda: h.pwrite(bytes(1 << 20), 1 << 20))
expect_err(h, "trim", errno.EPERM, lambda: h.trim(4096, 0))
expect_err(h, "zero", errno.EPERM, lambda: h.zero(4096, 0))
expect_err(h, "read of 32 MiB + 1", errno.EINVAL,
           lambda: h.pread((32 << 20) + 1, 0))
expect_err(h, "read past the end", errno.EINVAL,
           lambda: h.pread(8192, size - 4096))
expect_err(h, "block status past the end", errno.EINVAL,
           lambda: h.block_status(8192, size - 4096, lambda *a: 0))
h.flush()
# one 32 MiB read, and DF
assert h.pread(32 << 20, 16 << 20) == img[16 << 20:48 << 20], "32 MiB read"
assert h.pread(65536, 4096 * 3, flags=nbd.CMD_FLAG_DF) == \
    img[4096 * 3:4096 * 3 + 65536], "DF read"

# REQ_ONE: one extent, not longer than asked, status of its first block
def status(off, ln, flags=0):
    got = []
    def cb(meta, offset, entries, err):
        assert meta == nbd.CONTEXT_BASE_ALLOCATION
        got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(ln, off, cb, flags=flags)
    return got
Z = bytes(4096)
for _ in range(50):
    off = rng.randrange(size - 1)
    ln = rng.randrange(1, min(size - off, 1 << 20) + 1)
    ext = status(off, ln, nbd.CMD_FLAG_REQ_ONE)
    assert len(ext) == 1 and 0 < ext[0][0] <= ln, f"REQ_ONE: {ext}"
    blk = img[off // 4096 * 4096:off // 4096 * 4096 + 4096]
    want = 3 if blk == Z else 0
    assert ext[0][1] == want, f"REQ_ONE at {off}: flags {ext[0][1]}, want {want}"
    ext = status(off, ln)
    assert sum(e[0] for e in ext) == ln, f"status at {off} length {ln}: {ext}"
h.shutdown()

# Without structured replies: simple replies, no block status.
h = connect(structured=False)
assert not h.get_structured_replies_negotiated()
assert not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert not h.can_df()
check_reads(h, "simple replies")
assert h.pread(32 << 20, 0) == img[:32 << 20], "32 MiB simple read"
expect_err(h, "write (simple)", errno.EPERM, lambda: h.pwrite(b"y" * 512, 0))
expect_err(h, "read of 32 MiB + 1 (simple)", errno.EINVAL,
           lambda: h.pread((32 << 20) + 1, 0))
h.shutdown()

# Two clients at once, requests interleaved, several in flight each.
a, b = connect(), connect(structured=False)
bufs = []
for i in range(64):
    for c in (a, b):
        off = rng.randrange(size - (1 << 20))
        buf = nbd.Buffer(1 << 20)
        c.aio_pread(buf, off)
        bufs.append((c, buf, off))
    while any(c.aio_in_flight() > 8 for c in (a, b)):
        for c in (a, b):
            if c.aio_in_flight():
                c.poll(-1)
for c in (a, b):
    while c.aio_in_flight():
        c.poll(-1)
for c, buf, off in bufs:
    if buf.to_bytearray() != img[off:off + (1 << 20)]:
        sys.exit(f"concurrent read at {off} returned wrong data")
a.shutdown()
b.shutdown()
print("libnbd checks passed")
PY

# Two nbdcopy runs of different snapshots at the same time, several
# connections each.
nbdcopy --connections=4 "$s1_uri" par1.copy & p1=$!
nbdcopy --connections=4 "$s2tcp_uri" par2.copy & p2=$!
wait "$p1" || fail "parallel nbdcopy from s1 failed"
wait "$p2" || fail "parallel nbdcopy from s2tcp failed"
compare_volumes "$TESTDIR/par1.copy" "$TESTDIR/img1"
compare_volumes "$TESTDIR/par2.copy" "$TESTDIR/img2"

# ---- memory per client: replies not taken hold the next READs back ----

sanitized=0
if [ -f "$DUPLEX_BUILD/CMakeCache.txt" ] &&
    grep -q '^DUPLEX_SANITIZE:BOOL=ON' "$DUPLEX_BUILD/CMakeCache.txt"; then
    sanitized=1
fi
nbd_python "$TESTDIR/s2.sock" "$TESTDIR/img2" "$(agent_pid s2)" "$sanitized" \
    <<'PY' || fail "pipelined 32 MiB reads on s2"
import socket, struct, sys, time
sock_path, img_path, pid, sanitized = sys.argv[1:5]
MiB = 1 << 20
IHAVEOPT, REQ_MAGIC, SIMPLE_MAGIC = 0x49484156454F5054, 0x25609513, 0x67446698
img = open(img_path, "rb").read()

def recvall(s, n):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = s.recv_into(view[got:])
        if k == 0:
            sys.exit(f"server closed the connection ({got}/{n} bytes)")
        got += k
    return bytes(buf)

def hwm():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f
                    if l.startswith("VmHWM:"))

s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sock_path)
recvall(s, 18)
s.sendall(struct.pack(">I", 1))              # fixed newstyle, no zeroes
go = struct.pack(">IH", 0, 0)
s.sendall(struct.pack(">QII", IHAVEOPT, 7, len(go)) + go)
while True:                                   # simple replies: no option
    _, _, typ, ln = struct.unpack(">QIII", recvall(s, 20))
    recvall(s, ln)
    if typ == 1:
        break
    assert typ == 3, f"NBD_OPT_GO: reply type {typ:#x}"
with open(f"/proc/{pid}/clear_refs", "w") as f:
    f.write("5")                              # peak RSS from now on
base = hwm()
# 16 reads of 32 MiB (512 MiB) sent at once, none of the replies read yet.
N = 16
offs = [(i * 5 * MiB) % (32 * MiB) for i in range(N)]
s.sendall(b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, 100 + i, offs[i],
                               32 * MiB) for i in range(N)))
time.sleep(2)                                 # what the server would hoard
held = hwm()
for i in range(N):
    magic, err, cookie = struct.unpack(">IIQ", recvall(s, 16))
    assert magic == SIMPLE_MAGIC and err == 0, f"read {i}: error {err}"
    assert cookie == 100 + i, f"reply {i} is for cookie {cookie}: out of order"
    if recvall(s, 32 * MiB) != img[offs[i]:offs[i] + 32 * MiB]:
        sys.exit(f"pipelined read {i} at {offs[i]}: wrong data")
peak = hwm()
s.close()
print(f"16 x 32 MiB reads pipelined: server peak RSS {base // MiB} MiB before, "
      f"{held // MiB} MiB with none taken, {peak // MiB} MiB at the end")
if sanitized == "0" and peak - base > 160 * MiB:
    sys.exit(f"peak RSS grew by {(peak - base) // MiB} MiB: replies not taken "
             f"are not bounded per client")
PY

# ---- SIGTERM with a client connected ----

rm -f held.ready
"$PYTHON" - "$TESTDIR/s1.sock" <<'PY' >held.log 2>&1 & held=$!
import os, sys, time
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pread(4096, 0)
open("held.ready", "w").close()
time.sleep(120)
PY
cleanup_fn kill_quiet "$held"
wait_until -m "the holding client is connected" "[ -e held.ready ]"
t0=$(now_ms)
stop_agent s1 || fail "s1 did not stop cleanly on SIGTERM"
log "s1 stopped $(($(now_ms) - t0)) ms after SIGTERM, with a client connected"
[ ! -e "$TESTDIR/s1.sock" ] || fail "s1.sock is left behind"
[ ! -e "$TESTDIR/s1.pid" ] || fail "s1.pid is left behind"
grep -q "nbd client unix#[0-9]*: disconnected: server shutting down" s1.log ||
    fail "s1 did not close its client on SIGTERM"
kill_quiet "$held"
wait "$held" 2>/dev/null || true
stop_agent s2tcp || fail "s2tcp did not stop cleanly on SIGTERM"
[ ! -e "$TESTDIR/s2tcp.pid.port" ] || fail "s2tcp.pid.port is left behind"
stop_agent s2 || fail "s2 did not stop cleanly on SIGTERM"

# ---- failures ----

# expect_exit CODE LABEL CMD...: CMD exits with CODE and says why on one
# line of stderr, nothing on stdout.
expect_exit() {
    local want=$1 label=$2 rc=0
    shift 2
    "$@" >exit.out 2>exit.err || rc=$?
    [ "$rc" -eq "$want" ] ||
        fail "$label: exit $rc, expected $want (stderr: $(cat exit.err))"
    [ "$(wc -l <exit.err)" -eq 1 ] ||
        fail "$label: expected one line on stderr, got: $(cat exit.err)"
    [ ! -s exit.out ] || fail "$label: unexpected output: $(cat exit.out)"
    log "$label: exit $rc: $(cat exit.err)"
}

expect_exit 1 "serve of a missing snapshot" \
    "$STORE_BIN" --store "$STORE" serve 99 --nbd "unix:$TESTDIR/x.sock"
grep -q "no snapshot 99" exit.err || fail "missing snapshot: $(cat exit.err)"
[ ! -e "$TESTDIR/x.sock" ] || fail "x.sock left behind by a failed serve"
expect_exit 1 "serve of a missing store" \
    "$STORE_BIN" --store "$TESTDIR/nostore" serve 1 --nbd "unix:$TESTDIR/x.sock"
expect_exit 2 "serve without --nbd" "$STORE_BIN" --store "$STORE" serve 1
expect_exit 2 "serve without an id" \
    "$STORE_BIN" --store "$STORE" serve --nbd "unix:$TESTDIR/x.sock"
expect_exit 2 "serve of id 0" \
    "$STORE_BIN" --store "$STORE" serve 0 --nbd "unix:$TESTDIR/x.sock"
expect_exit 2 "serve of id 'one'" \
    "$STORE_BIN" --store "$STORE" serve one --nbd "unix:$TESTDIR/x.sock"
expect_exit 2 "serve of two ids" \
    "$STORE_BIN" --store "$STORE" serve 1 2 --nbd "unix:$TESTDIR/x.sock"
expect_exit 2 "serve with a bad endpoint" \
    "$STORE_BIN" --store "$STORE" serve 1 --nbd nowhere
# (an unknown option is followed by the usage text, as for any command)
rc=0
"$STORE_BIN" --store "$STORE" serve 1 --nbd "unix:$TESTDIR/x.sock" --bogus \
    >exit.out 2>exit.err || rc=$?
[ "$rc" -eq 2 ] && grep -q "bogus" exit.err ||
    fail "serve with an unknown option: exit $rc: $(cat exit.err)"
expect_exit 2 "--nbd with list" \
    "$STORE_BIN" --store "$STORE" list --nbd "unix:$TESTDIR/x.sock"

# A writer holds the store: serve says so and exits 1.
rm -f locked.ready
"$PYTHON" - "$STORE/lock" <<'PY' & locker=$!
import fcntl, sys, time
f = open(sys.argv[1], "r+")
fcntl.flock(f, fcntl.LOCK_EX)
open("locked.ready", "w").close()
time.sleep(120)
PY
cleanup_fn kill_quiet "$locker"
wait_until -m "the store is locked" "[ -e locked.ready ]"
expect_exit 1 "serve while a writer holds the store" \
    "$STORE_BIN" --store "$STORE" serve 1 --nbd "unix:$TESTDIR/x.sock"
grep -q "in use by a writer" exit.err || fail "locked store: $(cat exit.err)"
kill_quiet "$locker"
wait "$locker" 2>/dev/null || true

# The store is intact and usable after all of it.
"$STORE_BIN" --store "$STORE" verify >verify.out || fail "verify: $(cat verify.out)"
