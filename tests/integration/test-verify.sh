#!/bin/bash
# Online verify: `duplexctl verify` compares block hashes of both sides over
# the link while replication goes on.
#   1. Under a write load on an intact pair it finds nothing (no false
#      positives from writes racing the comparison).
#   2. A few 4 KiB blocks of the replica corrupted behind the agents' back
#      (three single blocks, one of them where the primary holds zeroes,
#      and one run of three): verify reports exactly those bytes and
#      ranges, and changes nothing.
#   3. verify --repair resyncs them: the volumes end byte-identical and a
#      further verify finds nothing.
source "$(dirname "$0")/functions.sh"
requires_python_nbd
requires dd

MiB=$((1024 * 1024))
KiB=1024

# sfield NAME FIELD: one status field, raw; unlike status_field also when
# it is false or null (jq -e treats those as failures).
sfield() {
    local out
    out=$(status_json "$1") || return 1
    jq -r --arg f "$2" '.[$f]' <<<"$out"
}

# run_verify [--repair]: start a verify on the primary and wait until it
# is done; prints its status object (.verify plus the top-level
# verify_out_of_sync_bytes and verify_ranges).
run_verify() {
    local out s
    out=$("$DUPLEXCTL" --control "$TESTDIR/pri.ctl" verify "$@" 2>&1) ||
        fail "duplexctl verify $* failed: $out"
    log "verify${*:+ $*}: $out"
    wait_until -t 120 -m "verify $* done" \
        'case $(status_json pri | jq -r .verify.state) in done|aborted) true ;; *) false ;; esac'
    s=$(status_json pri)
    [ "$(jq -r .verify.state <<<"$s")" = done ] ||
        fail "verify${*:+ $*} ended $(jq -c .verify <<<"$s"), not done"
    jq -c '.verify + {verify_out_of_sync_bytes, verify_ranges}' <<<"$s"
}

# check_verify_done RESULT: a complete pass without error.
check_verify_done() {
    local v=$1 size
    size=$(status_field pri size_bytes)
    [ "$(jq -r .done_bytes <<<"$v")" = "$size" ] &&
        [ "$(jq -r .total_bytes <<<"$v")" = "$size" ] ||
        fail "verify done but covered $(jq -r .done_bytes <<<"$v") of $size bytes: $v"
    [ "$(jq -r .error <<<"$v")" = null ] || fail "verify reports an error: $v"
}

# A write load through NBD until the file "stop" appears: 4..256 KiB
# random writes (some of them write-zeroes), serially.
start_load() {
    rm -f stop load.done
    "$PYTHON" - "$NBD_SOCK" <<'PY' >load.log 2>&1 &
import os, random, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
size = h.get_size()
rng = random.Random(7)
n_ops = total = 0
while not os.path.exists("stop"):
    n = rng.choice([4096, 16384, 65536, 262144])
    off = rng.randrange(0, (size - n) // 4096) * 4096
    if rng.random() < 0.1:
        h.zero(n, off)
    else:
        h.pwrite(os.urandom(n), off)
    n_ops += 1
    total += n
h.flush()
h.shutdown()
print("load: %d writes, %d bytes" % (n_ops, total))
open("load.done", "w").close()
PY
    load_pid=$!
    cleanup_fn kill_quiet "$load_pid"
}
stop_load() {
    touch stop
    wait "$load_pid" || fail "the write load failed: $(cat load.log)"
    [ -f load.done ] || fail "the write load did not finish: $(cat load.log)"
    log "$(cat load.log)"
}

make_pattern_image primary.img 128 >/dev/null
start_pair sync
wait_in_sync pri sec
compare_volumes primary.img replica.img
[ "$(status_json pri | jq -r .verify.state)" = idle ] ||
    fail "verify state is not idle before any verify: $(status_json pri | jq -c .verify)"

# A few MiB of new data through NBD.
timeout $((60 * SLOW)) "$PYTHON" - "$NBD_SOCK" <<'PY' || fail "writes through NBD failed"
import os, random, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
rng = random.Random(5)
for i in range(48):
    h.pwrite(os.urandom(65536), rng.randrange(0, (h.get_size() - 65536) // 4096) * 4096)
h.pwrite(os.urandom(2 * 1024 * 1024), 96 * 1024 * 1024)
h.flush()
h.shutdown()
PY
wait_in_sync pri sec
compare_volumes primary.img replica.img

# ---- 1. verify under a write load, intact pair: nothing found ----

start_load
wait_until -m "the load writes" '[ "$(status_field pri bytes_written)" -gt $((4 * MiB)) ]'
w0=$(status_field pri bytes_written)
v=$(run_verify)
w1=$(status_field pri bytes_written)
stop_load
log "verify under load: $v ($((w1 - w0)) bytes written during the verify)"
check_verify_done "$v"
[ "$((w1 - w0))" -gt 0 ] || fail "no writes happened during the verify"
[ "$(jq -r .verify_out_of_sync_bytes <<<"$v")" = 0 ] ||
    fail "verify of an intact pair under load found differences: $v"
[ "$(jq -r .verify_ranges <<<"$v")" = "" ] ||
    fail "verify of an intact pair under load lists ranges: $v"
load_during_verify=$((w1 - w0))
wait_in_sync pri sec
compare_volumes primary.img replica.img

# ---- 2. corrupt the replica behind the agents' back ----

# (offset, blocks): single blocks at 1200 KiB, 5 MiB + 8 KiB and 20 MiB +
# 4 KiB, a run of three at 40 MiB + 12 KiB, and a single block in a region
# the primary holds as zeroes (found below).
zero_blk=$("$PYTHON" - <<'PY'
with open("primary.img", "rb") as f:
    blk = 60 * 256          # from 60 MiB on
    while True:
        f.seek(blk * 4096)
        d = f.read(4096)
        if not d:
            raise SystemExit("no zero block in primary.img")
        if d == bytes(4096):
            print(blk)
            break
        blk += 1
PY
)
corrupt=("$((1200 * KiB / 4096)) 1" "$((5 * MiB / 4096 + 2)) 1" "$((20 * MiB / 4096 + 1)) 1"
         "$((40 * MiB / 4096 + 3)) 3" "$zero_blk 1")
expect_bytes=0
expect_ranges=$(
    for c in "${corrupt[@]}"; do
        set -- $c
        echo "$(($1 * 4096))+$(($2 * 4096))"
    done | sort -t+ -n -k1,1 | paste -sd,)
for c in "${corrupt[@]}"; do
    set -- $c
    # Random data: certainly different from what is there.
    head -c $(($2 * 4096)) /dev/urandom >blk.bin
    cmp -s blk.bin <(dd if=replica.img bs=4096 skip="$1" count="$2" status=none) &&
        fail "random data equals the replica's block $1 (retry)"
    dd if=blk.bin of=replica.img bs=4096 seek="$1" count="$2" conv=notrunc,fsync status=none ||
        fail "dd into replica.img failed"
    expect_bytes=$((expect_bytes + $2 * 4096))
done
log "corrupted $expect_bytes bytes of the replica: $expect_ranges"
cmp -s primary.img replica.img && fail "the corruption did not change replica.img"
sum_pri=$(sha256sum <primary.img)
sum_rep=$(sha256sum <replica.img)

v=$(run_verify)
log "verify after the corruption: $v"
check_verify_done "$v"
found=$(jq -r .verify_out_of_sync_bytes <<<"$v")
ranges=$(jq -r .verify_ranges <<<"$v")
[ "$(jq -r .out_of_sync_bytes <<<"$v")" = "$found" ] ||
    fail "verify.out_of_sync_bytes and verify_out_of_sync_bytes disagree: $v"
[ "$found" = "$expect_bytes" ] ||
    fail "verify found $found bytes out of sync, $expect_bytes were corrupted ($expect_ranges): $v"
[ "$ranges" = "$expect_ranges" ] ||
    fail "verify_ranges is '$ranges', expected '$expect_ranges'"
# A verify without --repair changes nothing.
[ "$(sha256sum <primary.img)" = "$sum_pri" ] || fail "verify changed primary.img"
[ "$(sha256sum <replica.img)" = "$sum_rep" ] || fail "verify without --repair changed replica.img"

# ---- 3. verify --repair ----

v=$(run_verify --repair)
log "verify --repair: $v"
check_verify_done "$v"
[ "$(jq -r .verify_out_of_sync_bytes <<<"$v")" = "$expect_bytes" ] ||
    fail "verify --repair found $(jq -r .verify_out_of_sync_bytes <<<"$v") bytes, $expect_bytes were corrupted: $v"
[ "$(jq -r .verify_ranges <<<"$v")" = "$expect_ranges" ] ||
    fail "verify --repair ranges '$(jq -r .verify_ranges <<<"$v")', expected '$expect_ranges'"
wait_in_sync pri sec
compare_volumes primary.img replica.img
[ "$(sha256sum <primary.img)" = "$sum_pri" ] || fail "verify --repair changed primary.img"
s=$(status_json pri)
repair_sent=$(jq -r .resync_bytes_sent <<<"$s")
[ "$repair_sent" -gt 0 ] && [ "$repair_sent" -le $((2 * expect_bytes)) ] ||
    fail "the repair resynced $repair_sent bytes for $expect_bytes bytes out of sync"

v=$(run_verify)
log "verify after the repair: $v"
check_verify_done "$v"
[ "$(jq -r .verify_out_of_sync_bytes <<<"$v")" = 0 ] ||
    fail "verify after the repair still finds differences: $v"
[ "$(jq -r .verify_ranges <<<"$v")" = "" ] ||
    fail "verify after the repair lists ranges: $v"

echo "FIGURES: verify: volume $(status_field pri size_bytes) bytes; under load: $load_during_verify bytes written during the verify, 0 found; corrupted $expect_bytes bytes in $(tr , '\n' <<<"$expect_ranges" | wc -l) ranges, found $found ($ranges); repair resync_bytes_sent=$repair_sent"
