#!/bin/bash
# Malformed NBD input: option haggling (unknown option, STARTTLS, LIST,
# INFO, bad magic), and requests past the end, oversized, of unknown type or
# with unknown flags, through libnbd with its client-side checks off and
# through a raw socket.  Each gets the spec's error, the connection stays
# usable, the primary keeps running, and nothing wrong reaches the replica.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

truncate -s 64M primary.img
start_pair sync
wait_in_sync pri sec

# 1. libnbd with strict mode off.
nbd_python "$NBD_SOCK" <<'PY' || fail "libnbd malformed requests"
import errno, os, sys
import nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_unix(sys.argv[1])
size = h.get_size()

def expect_err(what, codes, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum not in codes:
            sys.exit(f"{what}: errno {e.errnum} ({e.string}), expected one of {codes}")
        print(f"{what}: {errno.errorcode.get(e.errnum, e.errnum)}")
    else:
        sys.exit(f"{what}: succeeded, expected an error")
    # Still usable.
    data = os.urandom(4096)
    h.pwrite(data, 8192)
    if h.pread(4096, 8192) != data:
        sys.exit(f"after {what}: the connection returns wrong data")

expect_err("read past end", {errno.EINVAL}, lambda: h.pread(4096, size - 1024))
expect_err("read beyond end", {errno.EINVAL}, lambda: h.pread(512, size + 4096))
expect_err("write past end", {errno.ENOSPC}, lambda: h.pwrite(b"x" * 4096, size - 512))
expect_err("write beyond end", {errno.ENOSPC}, lambda: h.pwrite(b"x" * 512, size + (1 << 30)))
expect_err("trim past end", {errno.ENOSPC, errno.EINVAL}, lambda: h.trim(8192, size - 4096))
expect_err("zero past end", {errno.ENOSPC, errno.EINVAL}, lambda: h.zero(8192, size - 4096))
# (Over 64 MiB, the limit, libnbd refuses the request itself: see part 2.)
# A 32 MiB request works.
big = os.urandom(32 << 20)
h.pwrite(big, 16 << 20)
assert h.pread(32 << 20, 16 << 20) == big, "32 MiB request read back wrong"
h.shutdown()
PY

# 2. A raw client: handshake options, then hand-made requests.
nbd_python "$NBD_SOCK" <<'PY' || fail "raw malformed NBD"
import errno, os, socket, struct, sys, time

sock_path = sys.argv[1]
NBDMAGIC, IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQ_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP = (1 << 31) + 1
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3

def recvall(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError(f"server closed the connection ({len(b)}/{n} bytes)")
        b += c
    return b

def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    magic, opt = struct.unpack(">QQ", recvall(s, 16))
    assert magic == NBDMAGIC and opt == IHAVEOPT, "bad server greeting"
    (hflags,) = struct.unpack(">H", recvall(s, 2))
    assert hflags & 1, "server is not fixed newstyle"
    assert hflags & 2, "server does not offer NO_ZEROES"
    s.sendall(struct.pack(">I", 3))
    return s

def opt(s, o, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, o, len(data)) + data)

def opt_reply(s, o):
    magic, ro, rtype, n = struct.unpack(">QIII", recvall(s, 20))
    assert magic == OPT_REPLY_MAGIC, f"bad option reply magic {magic:#x}"
    assert ro == o, f"reply for option {ro}, expected {o}"
    return rtype, recvall(s, n)

def info_request(name=b"", infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + \
        b"".join(struct.pack(">H", i) for i in infos)

s = connect()
# Unknown option and STARTTLS: ERR_UNSUP, and the haggling goes on.
for o in (0x4242, OPT_STARTTLS):
    opt(s, o, b"payload" if o != OPT_STARTTLS else b"")
    rtype, _ = opt_reply(s, o)
    assert rtype == REP_ERR_UNSUP, f"option {o:#x}: reply type {rtype:#x}, expected ERR_UNSUP"
print("unknown option and STARTTLS: ERR_UNSUP")
# LIST: SERVER entries then ACK.
opt(s, OPT_LIST)
names = []
while True:
    rtype, data = opt_reply(s, OPT_LIST)
    if rtype == REP_ACK:
        break
    assert rtype == REP_SERVER, f"LIST: reply type {rtype:#x}"
    (n,) = struct.unpack(">I", data[:4])
    names.append(data[4:4 + n])
print(f"LIST: {names}")
# INFO with EXPORT and BLOCK_SIZE.
opt(s, OPT_INFO, info_request(b"", (INFO_BLOCK_SIZE,)))
size = None
bs = None
while True:
    rtype, data = opt_reply(s, OPT_INFO)
    if rtype == REP_ACK:
        break
    assert rtype == REP_INFO, f"INFO: reply type {rtype:#x}"
    (itype,) = struct.unpack(">H", data[:2])
    if itype == INFO_EXPORT:
        size, tflags = struct.unpack(">QH", data[2:12])
    elif itype == INFO_BLOCK_SIZE:
        bs = struct.unpack(">III", data[2:14])
assert size == 64 << 20, f"INFO: size {size}"
assert bs is not None, "INFO: no NBD_INFO_BLOCK_SIZE although requested"
mn, pref, mx = bs
assert 1 <= mn <= pref <= mx, f"inconsistent block sizes {bs}"
print(f"INFO: size {size}, block sizes min {mn} preferred {pref} max {mx}")
opt(s, OPT_GO, info_request(b""))
while True:
    rtype, data = opt_reply(s, OPT_GO)
    if rtype == REP_ACK:
        break
    assert rtype == REP_INFO, f"GO: reply type {rtype:#x}"

cookie = 0
def request(cmd, off, length, flags=0, payload=b""):
    global cookie
    cookie += 1
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, off, length) + payload)
    magic, err, c = struct.unpack(">IIQ", recvall(s, 16))
    assert magic == SIMPLE_REPLY_MAGIC, f"bad reply magic {magic:#x}"
    assert c == cookie, f"reply cookie {c}, expected {cookie}"
    data = recvall(s, length) if cmd == CMD_READ and err == 0 else b""
    return err, data

def usable(what):
    data = os.urandom(4096)
    err, _ = request(CMD_WRITE, 4096, 4096, 0, data)
    assert err == 0, f"after {what}: write failed with {err}"
    err, back = request(CMD_READ, 4096, 4096)
    assert err == 0 and back == data, f"after {what}: read back wrong"

def expect(what, codes, *args, **kw):
    err, _ = request(*args, **kw)
    assert err in codes, f"{what}: error {err}, expected one of {codes}"
    print(f"{what}: {errno.errorcode.get(err, err)}")
    usable(what)

E = errno
expect("unknown command 42", {E.EINVAL}, 42, 0, 0)
expect("unknown command 0xffff", {E.EINVAL}, 0xFFFF, 0, 4096)
expect("read with unknown flag 0x8000", {E.EINVAL}, CMD_READ, 0, 4096, 0x8000)
expect("write with unknown flag 0x4000", {E.EINVAL}, CMD_WRITE, 0, 512, 0x4000, os.urandom(512))
expect("read past end", {E.EINVAL}, CMD_READ, size - 512, 1024)
expect("read at offset 2^63", {E.EINVAL}, CMD_READ, 1 << 63, 512)
expect("read wrapping around 2^64", {E.EINVAL}, CMD_READ, (1 << 64) - 512, 4096)
expect("write past end", {E.ENOSPC}, CMD_WRITE, size - 512, 1024, 0, os.urandom(1024))
expect("read of 64 MiB + 4 KiB", {E.EINVAL, E.EOVERFLOW}, CMD_READ, 0, (64 << 20) + 4096)
# Zero-length requests: any error or success, but the connection survives.
request(CMD_READ, 0, 0); usable("zero-length read")
request(CMD_WRITE, 0, 0); usable("zero-length write")
err, _ = request(CMD_FLUSH, 0, 0)
assert err == 0, f"flush failed with {err}"
s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_DISC, 999, 0, 0))
s.close()

def drained(s, what):
    """Read until the server closes; report how it ended."""
    s.settimeout(10)
    t = time.monotonic()
    try:
        while s.recv(4096):
            pass
        how = "closed"
    except ConnectionResetError:
        how = "reset"
    except socket.timeout:
        sys.exit(f"{what}: the connection is still open after 10 s")
    s.close()
    print(f"{what}: connection {how} ({time.monotonic() - t:.1f} s)")

# Garbage instead of a request: the server may drop the connection, but the
# primary keeps serving new ones.
# Each at least one request header (28 bytes) long, with a bad magic.
for junk in (b"\xde\xad\xbe\xef" * 7, b"GET / HTTP/1.1\r\nHost: duplex\r\n\r\n", b"\x00" * 1000):
    s = connect()
    opt(s, OPT_GO, info_request(b""))
    while opt_reply(s, OPT_GO)[0] != REP_ACK:
        pass
    s.sendall(junk)
    drained(s, f"garbage request {junk[:8]!r}")
# Garbage during the handshake.
for junk in (b"\xff" * 4 + b"\x00" * 100, struct.pack(">I", 3) + b"NOTMAGIC" * 3):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    recvall(s, 18)
    s.sendall(junk)
    drained(s, f"garbage handshake {junk[:8]!r}")
s = connect()
opt(s, OPT_ABORT)
s.close()
s = connect()
opt(s, OPT_GO, info_request(b""))
while opt_reply(s, OPT_GO)[0] != REP_ACK:
    pass
cookie = 0
usable("garbage connections")
print("the primary still serves after garbage requests and handshakes")
s.close()
PY

_check_agents_alive
wait_in_sync pri sec
compare_volumes primary.img replica.img
