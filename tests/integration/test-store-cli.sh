#!/bin/bash
# duplex-store on a real 64 MiB image: three states imported (random data,
# scattered 4 KiB changes, a trim), list --json fields, diff --json ranges
# equal to what changed (computed from the images), each snapshot restored
# and compared with cmp, verify clean, one byte of a pack damaged (verify
# exits 1 naming exactly the snapshots and offsets of that block), the
# middle snapshot deleted (the others still restore, the store shrinks by
# the blocks only it held), bad usage (exit 2, one line), and a read while
# another process holds the store's lock (a message saying it is in use).
source "$(dirname "$0")/functions.sh"

DS=$DUPLEX_BUILD/duplex-store
[ -x "$DS" ] || fail "$DS not built"
requires flock python3 du
ST=$TESTDIR/st
ds() { "$DS" --store "$ST" "$@"; }

BS=4096
BLOCKS=16384                    # 64 MiB
TRIM_START=4000 TRIM_COUNT=1000 # state 3 zeroes these blocks

# diff_ranges A B: "offset length" of the runs of 4 KiB blocks that differ.
diff_ranges() {
    python3 - "$1" "$2" <<'PY'
import sys
a, b = open(sys.argv[1], 'rb'), open(sys.argv[2], 'rb')
start = None
n = 0
while True:
    x, y = a.read(4096), b.read(4096)
    if not x and not y:
        break
    if x != y:
        if start is None:
            start = n
    elif start is not None:
        print(start * 4096, (n - start) * 4096)
        start = None
    n += 1
if start is not None:
    print(start * 4096, (n - start) * 4096)
PY
}

list_packs() { find "$ST/objects/pack" -type f -name '[0-9a-f]*' | sort; }

# ---- three states ----
head -c $((BLOCKS * BS)) /dev/urandom >vol.img
cp vol.img s1.img
ds import vol.img --name first >import1.txt || fail "import 1: $(cat import1.txt)"
list_packs >packs1.txt

# 100 scattered blocks: 50 inside the range state 3 trims, 50 outside
python3 - >changed.txt <<PY
import random
inside = random.sample(range($TRIM_START, $TRIM_START + $TRIM_COUNT), 50)
outside = random.sample([b for b in range($BLOCKS)
                         if not $TRIM_START <= b < $TRIM_START + $TRIM_COUNT], 50)
for b in sorted(inside + outside):
    print(b)
PY
while read -r b; do
    dd if=/dev/urandom of=vol.img bs=$BS seek="$b" count=1 conv=notrunc \
        status=none
done <changed.txt
cp vol.img s2.img
ds import vol.img --name second >import2.txt || fail "import 2: $(cat import2.txt)"
list_packs >packs2.txt

dd if=/dev/zero of=vol.img bs=$BS seek=$TRIM_START count=$TRIM_COUNT \
    conv=notrunc status=none
cp vol.img s3.img
ds import vol.img >import3.txt || fail "import 3: $(cat import3.txt)"
log "imported: $(cat import1.txt) / $(cat import2.txt) / $(cat import3.txt)"

# ---- list --json ----
ds list --json >list.json || fail "list --json failed"
jq -e 'length == 3' list.json >/dev/null || fail "list: not 3 snapshots: $(cat list.json)"
now=$(date -u +%s)
for i in 0 1 2; do
    id=$((i + 1))
    jq -e --argjson i "$i" --argjson id "$id" --argjson size $((BLOCKS * BS)) '
        .[$i] | (.id == $id) and (.name | type == "string") and
        (.created | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")) and
        (.state == "complete") and (.size_bytes == $size) and
        (.stored_bytes | type == "number" and . > 0) and
        (.epoch | type == "number") and (.reason == "manual")' list.json \
        >/dev/null || fail "list: snapshot $id has wrong fields: $(jq -c ".[$i]" list.json)"
    created=$(jq -r ".[$i].created" list.json)
    t=$(date -u -d "$created" +%s) || fail "list: created '$created' does not parse"
    [ $((now - t)) -ge 0 ] && [ $((now - t)) -lt 600 ] ||
        fail "list: snapshot $id created $created, now is $(date -u +%FT%TZ)"
done
[ "$(jq -r '[.[].name] | join(",")' list.json)" = "first,second," ] ||
    fail "list: names $(jq -c '[.[].name]' list.json)"
# what each added: all 64 MiB first, ~100 blocks second, a manifest third
read -r sb1 sb2 sb3 < <(jq -r '[.[].stored_bytes] | @tsv' list.json)
[ "$sb1" -ge $((BLOCKS * BS)) ] && [ "$sb1" -le $((BLOCKS * BS * 104 / 100)) ] ||
    fail "list: snapshot 1 stored $sb1 bytes for a 64 MiB random image"
[ "$sb2" -ge $((100 * BS)) ] && [ "$sb2" -le $((100 * BS * 115 / 100)) ] ||
    fail "list: snapshot 2 stored $sb2 bytes for 100 changed blocks"
[ "$sb3" -le 4096 ] || fail "list: snapshot 3 (a trim) stored $sb3 bytes"
log "stored bytes: $sb1 $sb2 $sb3"

# ---- diff --json ----
for pair in "1 2" "2 3" "1 3" "3 1" "2 2"; do
    set -- $pair
    ds diff "$1" "$2" --json >diff.json || fail "diff $1 $2 failed"
    jq -r '.ranges[] | "\(.offset) \(.length)"' diff.json >got.txt
    diff_ranges "s$1.img" "s$2.img" >want.txt
    cmp -s got.txt want.txt || {
        diff want.txt got.txt | head >&2
        fail "diff $1 $2: ranges differ from the images' ($(wc -l <want.txt) expected)"
    }
    want_bytes=$(awk '{ s += $2 } END { print s + 0 }' want.txt)
    jq -e --argjson b "$want_bytes" --argjson f "$1" --argjson t "$2" \
        '.changed_bytes == $b and .from == $f and .to == $t and .block_size == 4096' \
        diff.json >/dev/null || fail "diff $1 $2: header $(jq -c 'del(.ranges)' diff.json)"
done
log "diff ranges match the images"

# ---- restore + cmp ----
for id in 1 2 3; do
    ds restore "$id" --to "r$id.img" >/dev/null || fail "restore $id failed"
    cmp "r$id.img" "s$id.img" || fail "restore $id differs from the image"
done
# onto an older state: only the differing blocks are written
cp s1.img r.img
ds restore 3 --to r.img >restore.txt || fail "restore 3 onto state 1 failed"
cmp r.img s3.img || fail "restore 3 onto state 1 differs"
grep -q " 50 written, 1000 zeroed, 15334 already equal" restore.txt ||
    fail "restore 3 onto state 1: $(cat restore.txt)"

# ---- verify ----
ds verify >verify.txt || fail "verify of a clean store: $(cat verify.txt)"

# Damage one byte of the first block of snapshot 2's pack (its blobs are
# the changed blocks in block order, stored raw: random data) that lies
# outside the trimmed range: snapshots 2 and 3 hold it.
pack2=$(comm -13 packs1.txt packs2.txt)
[ "$(wc -l <<<"$pack2")" = 1 ] || fail "snapshot 2 wrote $(wc -l <<<"$pack2") packs"
k=0
while read -r b; do
    if [ "$b" -lt $TRIM_START ] || [ "$b" -ge $((TRIM_START + TRIM_COUNT)) ]; then
        victim=$b
        break
    fi
    k=$((k + 1))
done <changed.txt
off=$((8 + k * BS + 100))
flip() {
    python3 - "$1" "$2" <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); c = f.read(1); f.seek(int(sys.argv[2]))
    f.write(bytes([c[0] ^ 0x5a]))
PY
}
flip "$pack2" "$off"
ds verify >verify.txt && fail "verify of a damaged store exited 0"
rc=$?
[ "$rc" = 1 ] || fail "verify exited $rc, not 1"
grep '^snapshot' verify.txt | sed 's/: block .*//' >got.txt
printf 'snapshot 2: offset %s\nsnapshot 3: offset %s\n' $((victim * BS)) \
    $((victim * BS)) >want.txt
cmp -s got.txt want.txt || { cat verify.txt >&2; fail "verify did not name exactly snapshots 2 and 3 at offset $((victim * BS))"; }
grep -q '^verify: 2 problems found' verify.txt || fail "verify summary: $(tail -1 verify.txt)"
# the other blocks of that pack still restore; the damaged one does not
ds restore 1 --to r1.img >/dev/null || fail "restore 1 with snapshot 2's pack damaged"
ds restore 2 --to rx.img >restore.txt 2>&1 && fail "restore 2 read a damaged block"
grep -q "snapshot 2, offset $((victim * BS)): .*damaged" restore.txt ||
    fail "restore 2 error does not name the offset: $(cat restore.txt)"
flip "$pack2" "$off"
ds verify >verify.txt || fail "verify after the repair: $(cat verify.txt)"
log "verify names the damaged block of snapshots 2 and 3 at $((victim * BS))"

# ---- delete the middle snapshot ----
files_bytes() { find "$ST/objects" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
du1=$(du -sb "$ST" | cut -f1)
f1=$(files_bytes)
ds delete 2 >delete.txt || fail "delete 2: $(cat delete.txt)"
du2=$(du -sb "$ST" | cut -f1)
f2=$(files_bytes)
log "delete 2: $(cat delete.txt); du -sb $du1 -> $du2; objects $f1 -> $f2 bytes"
[ "$du2" -lt "$du1" ] || fail "du of the store did not shrink ($du1 -> $du2)"
# The 50 blocks changed in 2 and trimmed in 3 were needed by 2 alone: that
# much is freed, plus their index and trailer entries and 2's manifest,
# less what 3's merged manifest gains.
[ $((f1 - f2)) -ge $((50 * BS)) ] ||
    fail "delete 2 freed $((f1 - f2)) bytes, less than the 50 blocks only it held"
[ $((f1 - f2)) -le $((50 * BS * 106 / 100)) ] ||
    fail "delete 2 freed $((f1 - f2)) bytes, more than the 50 blocks only it held"
ds list --json | jq -e '[.[].id] == [1, 3]' >/dev/null || fail "list after delete: $(ds list)"
for id in 1 3; do
    rm -f "r$id.img"
    ds restore "$id" --to "r$id.img" >/dev/null || fail "restore $id after delete 2"
    cmp "r$id.img" "s$id.img" || fail "restore $id after delete 2 differs"
done
ds verify >verify.txt || fail "verify after delete: $(cat verify.txt)"
ds restore 2 --to r2.img 2>err.txt && fail "restore of the deleted snapshot succeeded"
grep -q "no snapshot 2" err.txt || fail "restore 2 after delete: $(cat err.txt)"

# ---- bad usage: exit 2, one line on stderr ----
usage_case() {
    local want=$1 rc
    shift
    "$DS" "$@" >out.txt 2>err.txt && rc=0 || rc=$?
    [ "$rc" = 2 ] && [ "$(wc -l <err.txt)" = 1 ] && grep -qF -- "$want" err.txt || {
        echo "duplex-store $*: exit $rc, stderr:" >&2
        cat err.txt >&2
        fail "bad usage: expected exit 2 and one line saying '$want'"
    }
}
usage_case "--store DIR is required" list
usage_case "a command is required" --store "$ST"
usage_case 'unknown command "frob"' --store "$ST" frob
usage_case "restore: expected ID --to PATH" --store "$ST" restore 1
usage_case "diff: expected two snapshot ids" --store "$ST" diff 1
usage_case "snapshot ids are positive numbers" --store "$ST" diff 1 x
usage_case "delete: a snapshot id is a positive number" --store "$ST" delete 0
usage_case "verify: expected at most one snapshot id" --store "$ST" verify 1 3
usage_case "--bogus" --store "$ST" --bogus list
usage_case "--store" --store

# ---- a read while another process holds the store ----
# (flock(1) would leave its command holding the lock after a kill: one
# process that takes the lock and sleeps)
python3 -c 'import fcntl, sys, time
f = open(sys.argv[1], "rb")
fcntl.flock(f, fcntl.LOCK_EX)
time.sleep(120)' "$ST/lock" &
holder=$!
cleanup_fn kill_quiet "$holder"
wait_until -t 10 -m "the lock of $ST is held" "! flock -n -s '$ST/lock' true"
ds list >out.txt 2>err.txt && fail "list succeeded while the store is locked"
grep -q "is in use" err.txt || fail "list while locked: $(cat err.txt)"
[ "$(wc -l <err.txt)" = 1 ] || fail "list while locked: more than one line: $(cat err.txt)"
ds delete 1 >out.txt 2>err.txt && fail "delete succeeded while the store is locked"
grep -q "is in use" err.txt || fail "delete while locked: $(cat err.txt)"
kill "$holder"
wait "$holder" 2>/dev/null || true
ds list >/dev/null || fail "list after the lock was released"
log "OK"
