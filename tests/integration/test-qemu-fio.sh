#!/bin/bash
# qemu-io write/read patterns (unaligned, FUA, write-zeroes with and without
# unmap, discard, a 32 MiB request) and fio's nbd engine with
# verify=crc32c (two clients at once) against a sync primary; afterwards
# the replica is identical to the primary volume.
source "$(dirname "$0")/functions.sh"
requires qemu-io fio
fio --enghelp=nbd >/dev/null 2>&1 || { echo "$TEST_NAME: SKIP: fio has no nbd engine" >&2; exit 77; }

truncate -s 256M primary.img
start_pair sync
wait_in_sync pri sec

M=$((1024 * 1024))
qemu_io() {
    local out
    out=$(timeout $((60 * SLOW)) qemu-io -f raw "$@" "$NBD_URI" 2>&1) ||
        { echo "$out"; fail "qemu-io $* failed"; }
    echo "$out"
    if grep -qiE 'fail|error|mismatch' <<<"$out"; then
        fail "qemu-io reported an error"
    fi
}

qemu_io \
    -c 'write -P 0x11 0 64k' \
    -c 'write -P 0x22 1 511' \
    -c 'write -P 0x33 4097 10000' \
    -c 'write -P 0x34 65535 3' \
    -c 'write -f -P 0x44 1M 64k' \
    -c 'write -f -P 0x45 1049000 777' \
    -c 'write -P 0x55 2M 2M' \
    -c 'write -z 2M 1M' \
    -c 'write -P 0x56 5M 1M' \
    -c 'write -z -u 5M 512k' \
    -c 'write -P 0x57 6M 4k' \
    -c 'write -z 6M 100' \
    -c 'write -P 0x66 8M 4M' \
    -c 'discard 8M 4M' \
    -c 'write -P 0x77 64M 32M' \
    -c 'aio_write -P 0x78 100M 1M' \
    -c 'aio_write -P 0x79 101M 1M' \
    -c 'aio_flush' \
    -c 'flush'
# Read back through the primary.
qemu_io \
    -c 'read -P 0x11 0 1' \
    -c 'read -P 0x22 1 511' \
    -c 'read -P 0x11 512 3585' \
    -c 'read -P 0x33 4097 10000' \
    -c 'read -P 0x34 65535 1' \
    -c 'read -P 0x44 1M 168' \
    -c 'read -P 0x45 1049000 777' \
    -c 'read -P 0x0 2M 1M' \
    -c 'read -P 0x55 3M 1M' \
    -c 'read -P 0x0 5M 512k' \
    -c 'read -P 0x56 5632k 512k' \
    -c 'read -P 0x0 6M 100' \
    -c 'read -P 0x57 6291556 3996' \
    -c 'read -P 0x77 64M 32M' \
    -c 'read -P 0x78 100M 1M' \
    -c 'read -P 0x79 101M 1M'
compare_volumes primary.img replica.img

# The same bytes on the replica, read directly.
"$PYTHON" - "$TESTDIR/replica.img" <<'PY' || fail "replica does not hold the qemu-io patterns"
import sys
M = 1 << 20
f = open(sys.argv[1], "rb")
def expect(off, n, byte):
    f.seek(off)
    if f.read(n) != bytes([byte]) * n:
        sys.exit(f"replica {off}+{n} is not 0x{byte:02x}")
expect(1, 511, 0x22); expect(4097, 10000, 0x33); expect(1049000, 777, 0x45)
expect(2 * M, M, 0); expect(64 * M, 32 * M, 0x77); expect(101 * M, M, 0x79)
PY

cat >verify.fio <<FIO
[global]
ioengine=nbd
uri=$NBD_URI
verify=crc32c
verify_fatal=1
do_verify=1
direct=1
[rand4k]
rw=randwrite
bs=4k
offset=128M
size=32M
iodepth=16
[seq1m]
rw=write
bs=1M
offset=160M
size=64M
iodepth=4
[mixed]
rw=randwrite
bsrange=512-128k
offset=224M
size=16M
iodepth=8
FIO
timeout $((180 * SLOW)) fio --output=fio.txt verify.fio ||
    { cat fio.txt; fail "fio with verify=crc32c failed"; }
grep -E 'err=|WRITE:|READ:' fio.txt
grep -qE 'err= *[1-9]' fio.txt && fail "fio reported errors"
compare_volumes primary.img replica.img

stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
compare_volumes primary.img replica.img
