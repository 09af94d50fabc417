#!/bin/bash
# Diff streams (docs/STORE.md "Diff streams"): duplex-store diff ID1 ID2
# --stream | duplex-store apply-diff --to PATH.
#
# Four states of an image (16 MiB of random data with holes; scattered
# 4 KiB rewrites, a 3 MiB rewrite and a trimmed range; grown to 20 MiB;
# shrunk to 12 MiB) are imported into a store.  For pairs of snapshots
# (same size, growing, shrinking, backwards, a snapshot with itself) a
# copy restored from ID1 and given the stream of ID1 -> ID2 equals a
# restore of ID2 (cmp); the stream's records, walked here by the format in
# docs/STORE.md, cover exactly what diff lists, DATA with ID2's bytes and
# ZERO where ID2 reads zeros.  A stream from 0 seeds a new file and one
# full of other data.  --out FILE / --in FILE; apply-diff needs no store.
# Refusals (exit 1, target checked afterwards): one flipped byte in the
# first DATA record (named by its offset, target unchanged) and in the
# last (named, target partially updated, then the whole stream applied
# again finishes it); cuts in the header, in a record, before the END; a
# stream applied to a file that is not a copy of ID1's size; binary to a
# terminal.  As root with loop devices: onto a block device (BLKZEROOUT
# path), and a device too small refused.  Bad usage: exit 2, one line.
source "$(dirname "$0")/functions.sh"

DS=$DUPLEX_BUILD/duplex-store
[ -x "$DS" ] || fail "$DS not built"
ST=$TESTDIR/st
ds() { "$DS" --store "$ST" "$@"; }

# ---- four states ----
"$PYTHON" - <<'PY' || fail "building the images"
import random
MiB = 1 << 20
rng = random.Random(9090)
SIZE = 16 * MiB
img = bytearray(rng.randbytes(SIZE))
for _ in range(12):                     # holes (zero runs) in state 1
    off = rng.randrange(SIZE // 4096 - 64) * 4096
    n = rng.choice([1, 3, 16, 64]) * 4096
    img[off:off + n] = bytes(n)
open("s1.img", "wb").write(img)
# state 2: block 3 rewritten (the first change: the stream's first record
# is DATA at 12288), scattered blocks, 3 MiB rewritten (several DATA
# records), 1 MiB trimmed, a hole filled
img[3 * 4096:4 * 4096] = rng.randbytes(4096)
for b in rng.sample(range(64, SIZE // 4096), 80):
    img[b * 4096:(b + 1) * 4096] = rng.randbytes(4096)
img[5 * MiB:8 * MiB] = rng.randbytes(3 * MiB)
img[10 * MiB:11 * MiB] = bytes(MiB)
open("s2.img", "wb").write(img)
# state 3: grown to 20 MiB (data, then a zero tail), a few changes
img3 = bytearray(img) + rng.randbytes(2 * MiB) + bytes(2 * MiB)
for b in rng.sample(range(SIZE // 4096), 20):
    img3[b * 4096:(b + 1) * 4096] = rng.randbytes(4096)
open("s3.img", "wb").write(img3)
# state 4: shrunk to 12 MiB
img4 = bytearray(img3[:12 * MiB])
img4[MiB:MiB + 8192] = bytes(8192)
open("s4.img", "wb").write(img4)
PY
for i in 1 2 3 4; do
    ds import "s$i.img" --name "state$i" >"import$i.txt" ||
        fail "import $i: $(cat "import$i.txt")"
done
ds list --json | jq -e '[.[].id] == [1, 2, 3, 4]' >/dev/null ||
    fail "list: $(ds list)"
for i in 1 2 3 4; do
    ds restore "$i" --to "r$i.img" >/dev/null || fail "restore $i"
    cmp "r$i.img" "s$i.img" || fail "restore $i differs from its image"
done

# walk STREAM: one line per record, "KIND OFFSET LENGTH STREAMPOS", after
# checking the header, each CRC, the order and the END (docs/STORE.md,
# independently of the C decoder).
walk() {
    "$PYTHON" - "$1" <<'PY'
import hashlib, struct, sys
try:
    import crc32c as _c
    crc = _c.crc32c
except ImportError:
    def crc(b, t=[]):
        if not t:
            for i in range(256):
                c = i
                for _ in range(8):
                    c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
                t.append(c)
        c = 0xFFFFFFFF
        for x in b:
            c = t[(c ^ x) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF
s = open(sys.argv[1], "rb").read()
assert s[:8] == b"DXDIFFST", "magic"
ver, bs, vol, fsize, fid, tid = struct.unpack_from("<IIQQQQ", s, 8)
assert ver == 1 and bs == 4096, (ver, bs)
assert struct.unpack_from("<I", s, 112)[0] == crc(s[:112]), "header crc"
print("H", fid, tid, vol, fsize)
p, nxt, n, data = 116, 0, 0, 0
while True:
    t = s[p:p + 1]
    if t == b"D":
        off, ln = struct.unpack_from("<QI", s, p + 1)
        end = p + 13 + ln
        # (CRCs of long records are left to the unit test: pure Python)
        assert ln > 65536 or struct.unpack_from("<I", s, end)[0] == crc(s[p:end]), "data crc"
        kind, q, data = "D", end + 4, data + ln
    elif t == b"Z":
        off, ln = struct.unpack_from("<QQ", s, p + 1)
        assert struct.unpack_from("<I", s, p + 17)[0] == crc(s[p:p + 17])
        kind, q = "Z", p + 21
    else:
        assert t == b"E", t
        recs, dbytes = struct.unpack_from("<QQ", s, p + 1)
        assert (recs, dbytes) == (n, data), (recs, dbytes, n, data)
        assert s[p + 17:p + 49] == hashlib.sha256(s[:p + 17]).digest()
        assert p + 49 == len(s), "bytes after END"
        break
    assert off % 4096 == 0 and ln % 4096 == 0 and ln > 0 and off >= nxt
    assert off + ln <= vol and (kind == "Z" or ln <= 1 << 20)
    print(kind, off, ln, p)
    nxt, n, p = off + ln, n + 1, q
PY
}

# check_records WALK FROM_IMG TO_IMG: DATA records hold TO's bytes, ZERO
# records name zeros of TO, and together they are the blocks that differ
# below the smaller size plus all of TO past FROM's end.
check_records() {
    "$PYTHON" - "$@" <<'PY'
import sys
walk, a, b = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
stream = open(walk.replace(".walk", ".ds"), "rb").read()
want, got = set(), set()
for blk in range(len(b) // 4096):
    x = a[blk * 4096:(blk + 1) * 4096]
    y = b[blk * 4096:(blk + 1) * 4096]
    if blk * 4096 >= len(a) or x != y:
        want.add(blk)
for line in open(walk):
    f = line.split()
    if f[0] == "H":
        continue
    off, ln, pos = int(f[1]), int(f[2]), int(f[3])
    if f[0] == "D":
        assert stream[pos + 13:pos + 13 + ln] == b[off:off + ln], f"DATA at {off}"
    else:
        assert b[off:off + ln] == bytes(ln), f"ZERO at {off} is not zero in the target"
    got.update(range(off // 4096, (off + ln) // 4096))
extra, missing = got - want, want - got
assert not extra and not missing, f"{len(extra)} blocks sent that did not change (first {sorted(extra)[:3]}), {len(missing)} changed not sent (first {sorted(missing)[:3]})"
PY
}

# ---- pairs: restore ID1, apply ID1 -> ID2, cmp with the restore of ID2 ----
for pair in "1 2" "2 3" "3 4" "4 1" "1 4" "2 1" "2 2" "1 3"; do
    set -- $pair
    ds diff "$1" "$2" --stream >"d$1$2.ds" || fail "diff $1 $2 --stream"
    walk "d$1$2.ds" >"d$1$2.walk" || fail "diff $1 $2: the stream does not follow docs/STORE.md"
    read -r _ fid tid vol fsize <"d$1$2.walk"
    [ "$fid $tid $vol $fsize" = "$1 $2 $(stat -c %s "s$2.img") $(stat -c %s "s$1.img")" ] ||
        fail "diff $1 $2: header says from $fid to $tid, size $vol from $fsize"
    check_records "d$1$2.walk" "s$1.img" "s$2.img" || fail "diff $1 $2: records"
    cp "r$1.img" a.img
    "$DS" apply-diff --to a.img <"d$1$2.ds" >apply.txt 2>&1 ||
        fail "apply-diff $1 -> $2: $(cat apply.txt)"
    cmp a.img "r$2.img" || fail "snapshot $1 + diff $1 $2 differs from snapshot $2"
    grep -q "a.img holds snapshot $2 now" apply.txt || fail "apply-diff $1 -> $2: $(cat apply.txt)"
done
grep -q "^applying the diff from snapshot 1 (taken [0-9T:-]*Z) to snapshot 3 (taken [0-9T:-]*Z) of store [0-9a-f-]\{36\} (20 MiB) to a.img$" apply.txt ||
    fail "apply-diff does not say what it applies: $(head -1 apply.txt)"
[ "$(grep -c '^[DZ]' d22.walk)" = 0 ] || fail "diff 2 2 has records"
log "pairs: $(for w in d*.walk; do printf '%s=%s ' "${w%.walk}" "$(grep -c '^[DZ]' "$w")"; done)"

# the same through a pipe, as one would over ssh, and chained 1 -> 2 -> 3
cp r1.img c.img
ds diff 1 2 --stream | "$DS" apply-diff --to c.img >/dev/null ||
    fail "diff 1 2 --stream | apply-diff"
ds diff 2 3 --stream | "$DS" apply-diff --to c.img >/dev/null ||
    fail "diff 2 3 --stream | apply-diff"
cmp c.img r3.img || fail "1 -> 2 -> 3 through pipes differs from snapshot 3"

# ---- from an empty volume: seeds a new file, and one full of other data ----
ds diff 0 2 --stream --out seed.ds >out.txt || fail "diff 0 2 --stream --out: $(cat out.txt)"
grep -q "^wrote the diff stream from 0 to snapshot 2 to seed.ds: " out.txt ||
    fail "diff --out summary: $(cat out.txt)"
walk seed.ds >seed.walk || fail "the seed stream does not follow docs/STORE.md"
"$PYTHON" - <<'PY' || fail "the seed stream does not describe every block once"
nxt = 0
for line in open("seed.walk"):
    f = line.split()
    if f[0] != "H":
        assert int(f[1]) == nxt, line
        nxt += int(f[2])
assert nxt == 16 << 20, nxt
PY
"$DS" apply-diff --to new.img --in seed.ds >apply.txt || fail "seed a new file: $(cat apply.txt)"
cmp new.img r2.img || fail "seeded new file differs from snapshot 2"
grep -q "^applying all of snapshot 2 " apply.txt || fail "seed: $(head -1 apply.txt)"
head -c $((20 << 20)) /dev/urandom >junk.img
"$DS" apply-diff --to junk.img --in seed.ds >/dev/null || fail "seed over other data"
cmp junk.img r2.img || fail "seeded over other data differs from snapshot 2"

# apply-diff needs no store: not even a readable one
chmod 000 "$ST"
cp r1.img a.img
"$DS" apply-diff --to a.img --in d12.ds >/dev/null || { chmod 755 "$ST"; fail "apply-diff with the store unreadable"; }
chmod 755 "$ST"
cmp a.img r2.img || fail "apply-diff with the store unreadable: differs"

# ---- refusals ----
# refuse CODE WANT CMD...: exit CODE and stderr containing WANT
refuse() {
    local code=$1 want=$2 rc
    shift 2
    "$@" >out.txt 2>err.txt && rc=0 || rc=$?
    [ "$rc" = "$code" ] && grep -qF -- "$want" err.txt || {
        echo "$*: exit $rc, stderr:" >&2
        cat err.txt >&2
        fail "expected exit $code and '$want'"
    }
}
flip() {
    "$PYTHON" - "$@" <<'PY'
import sys
src, dst, pos = sys.argv[1], sys.argv[2], int(sys.argv[3])
b = bytearray(open(src, "rb").read())
b[pos] ^= 0x20
open(dst, "wb").write(b)
PY
}

# one byte of the first DATA record: named, nothing written
read -r kind off len pos < <(grep -m1 '^[DZ]' d12.walk)
[ "$kind $off $pos" = "D 12288 116" ] || fail "diff 1 2 starts with $kind $off at $pos"
flip d12.ds bad1.ds $((pos + 13 + 100))
cp r1.img a.img
refuse 1 "stream byte 116: DATA record for offset 12288 (4096 bytes) is damaged" \
    "$DS" apply-diff --to a.img --in bad1.ds
grep -q "a.img was not changed" err.txt || fail "damaged first record: $(cat err.txt)"
cmp a.img r1.img || fail "a damaged first record changed the target"

# one byte of the last DATA record: named, partially updated; then the
# whole stream again finishes the job
read -r kind off len pos < <(grep '^D' d12.walk | tail -1)
flip d12.ds bad2.ds $((pos + 13 + len - 1))
refuse 1 "DATA record for offset $off ($len bytes) is damaged" \
    "$DS" apply-diff --to a.img --in bad2.ds
grep -q "a.img is now partially updated: apply the whole stream again, or restore snapshot 2 onto it" err.txt ||
    fail "damaged last record: $(cat err.txt)"
cmp -s a.img r1.img && fail "the records before the damaged one were not applied"
"$DS" apply-diff --to a.img --in d12.ds >/dev/null || fail "apply again after a damaged stream"
cmp a.img r2.img || fail "the whole stream applied again differs from snapshot 2"

# a byte of the header, of the END's digest
flip d12.ds bad3.ds 40
refuse 1 "diff stream header damaged" "$DS" apply-diff --to a.img --in bad3.ds
size=$(stat -c %s d12.ds)
flip d12.ds bad4.ds $((size - 5))
cp r1.img a.img
refuse 1 "the checksum over the stream (SHA-256, END record) does not match" \
    "$DS" apply-diff --to a.img --in bad4.ds
grep -q "partially updated" err.txt || fail "damaged END: $(cat err.txt)"

# cut short: in the header, inside a record, right before the END
for cut in 50 $((116 + 13 + 2000)) $((size - 49)) $((size - 1)); do
    head -c "$cut" d12.ds >cut.ds
    cp r1.img a.img
    refuse 1 "the stream is cut short: it ends after $cut bytes" \
        "$DS" apply-diff --to a.img --in cut.ds
done
# through a pipe as well
cp r1.img a.img
head -c $((size / 2)) d12.ds | { "$DS" apply-diff --to a.img >out.txt 2>err.txt && rc=0 || rc=$?; echo "$rc" >rc.txt; }
[ "$(cat rc.txt)" = 1 ] && grep -q "cut short" err.txt || fail "cut stream through a pipe: exit $(cat rc.txt): $(cat err.txt)"

# two streams in one input: the first applied (and synced), then refused
cp r1.img a.img
cat d12.ds d23.ds >two.ds
refuse 1 "bytes after the END record; a.img holds snapshot 2 in full now" \
    "$DS" apply-diff --to a.img --in two.ds
cmp a.img r2.img || fail "two streams in one input: the first was not applied"

# a target that cannot be a copy of the from snapshot; one that is missing
refuse 1 "junk.img is 16777216 bytes: more than the stream's volume (12582912 bytes) and not the size of snapshot 3 (20971520 bytes)" \
    "$DS" apply-diff --to junk.img --in d34.ds
refuse 1 "missing.img does not exist: a diff from snapshot 1 applies to a copy of that snapshot" \
    "$DS" apply-diff --to missing.img --in d12.ds
[ ! -e missing.img ] || fail "apply-diff created the target of a diff from snapshot 1"
refuse 1 "not a duplex diff stream" "$DS" apply-diff --to a.img --in s1.img
refuse 1 "no snapshot 9" ds diff 1 9 --stream --out x.ds
[ ! -e x.ds ] || fail "a failed diff --out left its file"

# binary never to a terminal; stdin not from one
if command -v script >/dev/null; then
    script -qec "'$DS' --store '$ST' diff 1 2 --stream" /dev/null >tty.txt 2>&1 </dev/null && rc=0 || rc=$?
    [ "$rc" = 1 ] && grep -q "refusing to write a binary stream to a terminal" tty.txt ||
        fail "diff --stream to a terminal: exit $rc: $(cat tty.txt)"
    script -qec "'$DS' apply-diff --to a.img" /dev/null >tty.txt 2>&1 </dev/null && rc=0 || rc=$?
    [ "$rc" = 1 ] && grep -q "stdin, which is a terminal" tty.txt ||
        fail "apply-diff from a terminal: exit $rc: $(cat tty.txt)"
fi
log "refusals name the damaged record, the cut, the wrong target"

# ---- a block device ----
if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v losetup >/dev/null; then
    head -c $((16 << 20)) /dev/urandom >dev.img
    if LOOP=$(losetup -f --show dev.img 2>/dev/null); then
        cleanup_fn losetup -d "$LOOP"
        "$DS" apply-diff --to "$LOOP" --in seed.ds >/dev/null || fail "seed $LOOP"
        cmp "$LOOP" r2.img || fail "seeded $LOOP differs from snapshot 2"
        "$DS" apply-diff --to "$LOOP" --in d21.ds >/dev/null || fail "2 -> 1 on $LOOP"
        cmp "$LOOP" r1.img || fail "$LOOP after 2 -> 1 differs from snapshot 1"
        "$DS" apply-diff --to "$LOOP" --in d12.ds >/dev/null || fail "1 -> 2 on $LOOP"
        cmp "$LOOP" r2.img || fail "$LOOP after 1 -> 2 differs from snapshot 2"
        refuse 1 "$LOOP: the device holds 16777216 bytes, the stream's volume is 20971520 bytes" \
            "$DS" apply-diff --to "$LOOP" --in d23.ds
        grep -q "$LOOP was not changed" err.txt || fail "device too small: $(cat err.txt)"
        cmp "$LOOP" r2.img || fail "a refused stream changed $LOOP"
        log "block device $LOOP: seeded, diffs applied, a bigger volume refused"
    else
        log "no free loop device: block device part skipped"
    fi
else
    log "not root or no loop devices: block device part skipped"
fi

# ---- bad usage: exit 2, one line ----
usage_case() {
    local want=$1 rc
    shift
    "$DS" "$@" >out.txt 2>err.txt </dev/null && rc=0 || rc=$?
    [ "$rc" = 2 ] && [ "$(wc -l <err.txt)" = 1 ] && grep -qF -- "$want" err.txt || {
        echo "duplex-store $*: exit $rc, stderr:" >&2
        cat err.txt >&2
        fail "bad usage: expected exit 2 and one line saying '$want'"
    }
}
usage_case "apply-diff: expected --to PATH" apply-diff
usage_case "apply-diff: expected --to PATH" apply-diff --to a.img extra
usage_case "apply-diff: --store is not an option of apply-diff" --store "$ST" apply-diff --to a.img
usage_case "apply-diff: --stream is not an option" apply-diff --to a.img --stream
usage_case "diff: --stream and --json exclude each other" --store "$ST" diff 1 2 --stream --json
usage_case "diff: --out FILE goes with --stream" --store "$ST" diff 1 2 --out x.ds
usage_case "snapshot ids are positive numbers (see list)" --store "$ST" diff 0 2
usage_case "ID1 may be 0" --store "$ST" diff 1 0 --stream
usage_case "list: --stream and --out are options of diff" --store "$ST" list --stream
usage_case "restore: --in is an option of apply-diff" --store "$ST" restore 1 --to a.img --in x
"$DS" --help | grep -q "apply-diff --to PATH \[--in FILE\]" || fail "--help does not show apply-diff"
"$DS" --help | grep -q "diff ID1 ID2 --stream \[--out FILE\]" || fail "--help does not show diff --stream"
log "OK"
