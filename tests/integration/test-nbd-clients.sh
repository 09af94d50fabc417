#!/bin/bash
# NBD clients the primary must serve besides libnbd's defaults, sync mode:
#
#  1. clients without fixed newstyle negotiation (old nbd-client, libnbd
#     with handshake flags 0), with and without NO_ZEROES, through libnbd
#     and a raw socket: NBD_OPT_EXPORT_NAME gets size, flags and the 124
#     zeroes unless NO_ZEROES was set; any other option from such a client
#     closes the connection without a reply;
#  2. requests up to 64 MiB, each reaching the engine as one request
#     (counted in status): a 64 MiB write, aligned and unaligned, arrives on
#     the replica before it is answered (split into frames of at most
#     32 MiB: ops_sent counts them), 48 and 64 MiB reads; 64 MiB + 1 gets
#     EINVAL with the payload skipped, a write too large to skip closes;
#  3. memory per client is bounded: a client that has a 60 MiB read reply
#     pending gets its next 64 MiB write read only once it takes the reply,
#     and four clients with 64 MiB writes queued keep the primary's peak
#     memory near 4 x 64 MiB;
#
# then the replica is byte-identical.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

truncate -s 256M primary.img
start_pair sync
wait_in_sync pri sec

sanitized=0
if [ -f "$DUPLEX_BUILD/CMakeCache.txt" ] &&
    grep -q '^DUPLEX_SANITIZE:BOOL=ON' "$DUPLEX_BUILD/CMakeCache.txt"; then
    sanitized=1
fi

nbd_python "$NBD_SOCK" "$TESTDIR/replica.img" "$DUPLEXCTL" "$TESTDIR/pri.ctl" \
    "$(agent_pid pri)" "$sanitized" <<'PY' || fail "NBD clients"
import errno, json, os, select, socket, struct, subprocess, sys, time
import nbd

sock_path, replica, duplexctl, ctl, pri_pid, sanitized = sys.argv[1:7]
MiB = 1 << 20
SIZE = 256 * MiB
rfd = os.open(replica, os.O_RDONLY)

def status():
    out = subprocess.run([duplexctl, "--control", ctl, "status", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)

def counters():
    s = status()
    return {k: s[k] for k in ("requests", "bytes_written", "bytes_read", "ops_sent")}

def delta(before):
    after = counters()
    return {k: after[k] - before[k] for k in before}

def on_replica(what, off, data):
    got = os.pread(rfd, len(data), off)
    if got != data:
        bad = next(i for i in range(len(data)) if i >= len(got) or got[i] != data[i])
        sys.exit(f"{what}: answered, but the replica differs at byte {off + bad}")

# ---- 1. handshakes ----

def libnbd_client(flags, what, off):
    h = nbd.NBD()
    h.set_handshake_flags(flags)
    h.connect_unix(sock_path)
    proto = h.get_protocol()
    want = "newstyle-fixed" if flags & nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE else "newstyle"
    if proto != want:
        sys.exit(f"{what}: libnbd negotiated {proto!r}, expected {want!r}")
    if h.get_handshake_flags() != flags:
        sys.exit(f"{what}: handshake flags {h.get_handshake_flags()}, expected {flags}")
    if h.get_size() != SIZE:
        sys.exit(f"{what}: export size {h.get_size()}, expected {SIZE}")
    data = os.urandom(3 * 4096 + 123)
    h.pwrite(data, off)
    if h.pread(len(data), off) != data:
        sys.exit(f"{what}: read back wrong")
    on_replica(what, off, data)
    h.flush()
    h.shutdown()
    print(f"{what}: {proto}, wrote and read back {len(data)} bytes")
    return data

F, Z = nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE, nbd.HANDSHAKE_FLAG_NO_ZEROES
written = {}
for flags, what, off in ((0, "libnbd, handshake flags 0", 1 * MiB + 7),
                         (Z, "libnbd, NO_ZEROES only", 2 * MiB),
                         (F | Z, "libnbd, fixed newstyle", 3 * MiB + 512)):
    written[off] = libnbd_client(flags, what, off)
# What one kind of client wrote, another reads.
h = nbd.NBD()
h.set_handshake_flags(0)
h.connect_unix(sock_path)
for off, data in written.items():
    if h.pread(len(data), off) != data:
        sys.exit(f"non-fixed client reads wrong data at {off}")
h.shutdown()

NBDMAGIC, IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_GO = 1, 2, 3, 7
REP_ACK = 1
REQ_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2

def recvall(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(min(n - len(b), 4 * MiB))
        if not c:
            raise EOFError(f"server closed the connection ({len(b)}/{n} bytes)")
        b += c
    return bytes(b)

def greet(cflags):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    magic, opt, hflags = struct.unpack(">QQH", recvall(s, 18))
    assert magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting"
    s.sendall(struct.pack(">I", cflags))
    return s

def opt(s, o, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, o, len(data)) + data)

def go():
    s = greet(3)
    opt(s, OPT_GO, struct.pack(">IH", 0, 0))
    while True:
        magic, ro, rtype, n = struct.unpack(">QIII", recvall(s, 20))
        recvall(s, n)
        if rtype == REP_ACK:
            return s

def expect_close(s, what):
    s.settimeout(10)
    try:
        got = s.recv(4096)
    except ConnectionResetError:
        got = b""
    except socket.timeout:
        sys.exit(f"{what}: the connection is still open after 10 s")
    if got:
        sys.exit(f"{what}: server sent {got[:32]!r}, expected a close without reply")
    s.close()
    print(f"{what}: closed without a reply")

cookie = 0
def request(s, cmd, off, length, payload=b"", read_reply=True):
    global cookie
    cookie += 1
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, cmd, cookie, off, length) + payload)
    if not read_reply:
        return None, None
    magic, err, c = struct.unpack(">IIQ", recvall(s, 16))
    assert magic == SIMPLE_REPLY_MAGIC, f"bad reply magic {magic:#x}"
    assert c == cookie, f"reply cookie {c}, expected {cookie}"
    data = recvall(s, length) if cmd == CMD_READ and err == 0 else b""
    return err, data

# EXPORT_NAME, byte exact: 8 + 2 bytes, then 124 zeroes unless NO_ZEROES;
# a request right after shows that nothing more or less was sent.
for cflags in (0, 2, 1, 3):
    s = greet(cflags)
    opt(s, OPT_EXPORT_NAME, b"any name")
    size, tflags = struct.unpack(">QH", recvall(s, 10))
    assert size == SIZE, f"cflags {cflags}: size {size}"
    if not cflags & 2:
        assert recvall(s, 124) == bytes(124), f"cflags {cflags}: reserved bytes not zero"
    err, data = request(s, CMD_READ, 1 * MiB + 7, 4096)
    assert err == 0 and data == written[1 * MiB + 7][:4096], f"cflags {cflags}: read wrong"
    request(s, CMD_DISC, 0, 0, read_reply=False)
    s.close()
    print(f"client flags {cflags}: NBD_OPT_EXPORT_NAME reply of "
          f"{10 if cflags & 2 else 134} bytes")
# Anything else from a non-fixed client: closed, no reply it could misread.
for cflags in (0, 2):
    for o, data in ((OPT_GO, struct.pack(">IH", 0, 0)), (OPT_LIST, b""),
                    (OPT_ABORT, b""), (0x4242, b"xyz")):
        s = greet(cflags)
        opt(s, o, data)
        expect_close(s, f"client flags {cflags}, option {o}")

# ---- 2. large requests ----

h = nbd.NBD()
h.connect_unix(sock_path)
bs = [h.get_block_size(t) for t in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)]
if bs != [1, 4096, 64 * MiB]:
    sys.exit(f"block sizes (min, preferred, max) {bs}, expected [1, 4096, {64 * MiB}]")

def big_write(off, length, frames):
    data = os.urandom(length)
    before = counters()
    h.pwrite(data, off)
    d = delta(before)
    want = {"requests": 1, "bytes_written": length, "bytes_read": 0, "ops_sent": frames}
    if d != want:
        sys.exit(f"write of {length} at {off}: counters moved by {d}, expected {want}")
    on_replica(f"write of {length} at {off}", off, data)
    print(f"write of {length} bytes at {off}: one request, {frames} replication frames")
    return data

def big_read(off, length, want):
    before = counters()
    got = h.pread(length, off)
    d = delta(before)
    if d != {"requests": 1, "bytes_written": 0, "bytes_read": length, "ops_sent": 0}:
        sys.exit(f"read of {length} at {off}: counters moved by {d}")
    if got != want:
        sys.exit(f"read of {length} at {off}: wrong data")
    print(f"read of {length} bytes at {off}: one request")

a = big_write(32 * MiB, 64 * MiB, 2)
# Unaligned: the 4 KiB blocks it touches span 64 MiB + 4 KiB, three frames.
b_off = 100 * MiB + 1000
b = big_write(b_off, 64 * MiB, 3)
big_read(40 * MiB + 7, 48 * MiB, a[8 * MiB + 7:56 * MiB + 7])
big_read(b_off, 64 * MiB, b)
h.flush()
h.shutdown()

# Over the limit, by hand (libnbd itself stops at 64 MiB).
s = go()
err, _ = request(s, CMD_READ, 0, 64 * MiB + 1)
assert err in (errno.EINVAL, errno.EOVERFLOW), f"read of 64 MiB + 1: error {err}"
err, _ = request(s, CMD_WRITE, 0, 64 * MiB + 1, os.urandom(64 * MiB + 1))
assert err in (errno.EINVAL, errno.EOVERFLOW), f"write of 64 MiB + 1: error {err}"
err, data = request(s, CMD_READ, 32 * MiB, 4096)
assert err == 0 and data == a[:4096], "after the refused write, the stream is out of step"
print("64 MiB + 1: EINVAL for read and write, the write's payload skipped")
# A write whose payload is not worth skipping: closed.
request(s, CMD_WRITE, 0, 200 * MiB, read_reply=False)
expect_close(s, "write header of 200 MiB")
s = greet(3)  # and the primary still serves
s.close()

# ---- 3. memory per client ----

s = go()
before = counters()
request(s, CMD_READ, 32 * MiB, 60 * MiB, read_reply=False)
deadline = time.monotonic() + 60
while counters()["bytes_read"] - before["bytes_read"] < 60 * MiB:
    if time.monotonic() > deadline:
        sys.exit("the 60 MiB read did not complete")
    time.sleep(0.05)
# The reply waits in the primary (we do not read it).  A 64 MiB write now
# does not fit beside it: its header is not even read.
w = os.urandom(64 * MiB)
msg = struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1000, 160 * MiB, len(w)) + w
s.setblocking(False)
sent = 0
while sent < len(msg):
    try:
        sent += s.send(msg[sent:sent + MiB])
    except BlockingIOError:
        if not select.select([], [s], [], 1.0)[1]:
            break
d = delta(before)
if d["requests"] != 1 or sent > 8 * MiB:
    sys.exit(f"with 60 MiB of reply pending, the primary took {sent} bytes of a "
             f"64 MiB write and counted {d['requests']} requests (expected 1, "
             f"the read): per-client memory is not bounded")
print(f"60 MiB reply pending: the 64 MiB write waits ({sent} bytes buffered in sockets)")
s.setblocking(True)
s.settimeout(60)
magic, err, c = struct.unpack(">IIQ", recvall(s, 16))
assert magic == SIMPLE_REPLY_MAGIC and err == 0, f"60 MiB read: error {err}"
assert recvall(s, 60 * MiB) == a[:60 * MiB], "60 MiB read: wrong data"
s.sendall(msg[sent:])
magic, err, c = struct.unpack(">IIQ", recvall(s, 16))
assert magic == SIMPLE_REPLY_MAGIC and c == 1000 and err == 0, f"64 MiB write: error {err}"
on_replica("64 MiB write after the read", 160 * MiB, w)
s.close()
print("after the reply was taken the write went through")

# Four clients, each with a 4 KiB and two 64 MiB writes queued: at most one
# 64 MiB buffer each in the primary (peak RSS reset first).
with open(f"/proc/{pri_pid}/clear_refs", "w") as f:
    f.write("5")
small = nbd.Buffer.from_bytearray(bytearray(os.urandom(4096)))
large = nbd.Buffer.from_bytearray(bytearray(os.urandom(64 * MiB)))
handles = []
pending = []  # (handle, cookie): retired once completed
for i in range(4):
    c = nbd.NBD()
    c.connect_unix(sock_path)
    handles.append(c)
    for buf in (small, large, large):
        pending.append((c, c.aio_pwrite(buf, i * 64 * MiB)))
deadline = time.monotonic() + 120
while pending:
    if time.monotonic() > deadline:
        sys.exit("4 clients' writes did not complete in 120 s")
    for c in handles:
        if c.aio_in_flight() > 0:
            c.poll(0)
    # aio_command_completed raises if the write failed.
    pending = [p for p in pending if not p[0].aio_command_completed(p[1])]
    time.sleep(0.001)
for c in handles:
    c.shutdown()
with open(f"/proc/{pri_pid}/status") as f:
    hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(f"4 clients x (4 KiB + 2 x 64 MiB) queued: primary peak RSS {hwm // MiB} MiB")
if sanitized == "0" and hwm > 4 * 64 * MiB + 128 * MiB:
    sys.exit(f"primary peak RSS {hwm // MiB} MiB: more than 64 MiB per client")
PY

wait_in_sync pri sec
compare_volumes primary.img replica.img
