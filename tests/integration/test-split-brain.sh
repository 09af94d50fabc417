#!/bin/bash
# Split brain: the pair is separated, both sides are written independently
# (the secondary's volume and metadata through a second duplex-primary,
# "pri2": roles belong to the process, identity to the metadata), and the
# original pair is reconnected.  Both agents must report the split brain
# and refuse to sync: neither volume changes, however often the primary
# retries.  After `resolve --discard-local` on the secondary, it is resynced
# from the primary; only the blocks that either side changed move (resync
# bytes <= 2x the bytes written while apart), the volumes end
# byte-identical, and the blocks both sides wrote hold the primary's data.
source "$(dirname "$0")/functions.sh"
requires_python_nbd
requires sha256sum

MiB=$((1024 * 1024))
KiB=1024

# write_ranges SOCKET SEED RANGES: write seeded random data to each
# OFF+LEN (bytes, comma-separated) through NBD, then flush.
write_ranges() {
    timeout $((60 * SLOW)) "$PYTHON" - "$@" <<'PY'
import random, sys
import nbd
sock, seed, ranges = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
h = nbd.NBD()
h.connect_unix(sock)
for r in ranges.split(","):
    off, n = (int(x) for x in r.split("+"))
    h.pwrite(rng.randbytes(n), off)
h.flush()
h.shutdown()
PY
}

# expect_ranges FILE SEED RANGES: FILE holds at each range the data that
# write_ranges SEED RANGES wrote.
expect_ranges() {
    "$PYTHON" - "$@" <<'PY'
import random, sys
path, seed, ranges = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
bad = []
with open(path, "rb") as f:
    for r in ranges.split(","):
        off, n = (int(x) for x in r.split("+"))
        want = rng.randbytes(n)
        f.seek(off)
        if f.read(n) != want:
            bad.append(r)
if bad:
    sys.exit("%s: wrong data at %s" % (path, ",".join(bad)))
PY
}

# sfield NAME FIELD: one status field, raw; unlike status_field also when
# it is false or null (jq -e treats those as failures).
sfield() {
    local out
    out=$(status_json "$1") || return 1
    jq -r --arg f "$2" '.[$f]' <<<"$out"
}

# ranges_bytes RANGES: the sum of the lengths.
ranges_bytes() {
    local r total=0
    for r in ${1//,/ }; do total=$((total + ${r#*+})); done
    echo "$total"
}

# The blocks written while apart, disjoint (all 4 KiB aligned):
#   A: only on the primary; B: only through pri2 on the secondary's data;
#   C: on both sides, different data (the primary's must win).
A="$((1 * MiB))+4096,$((3 * MiB + 8192))+4096,$((5 * MiB))+$((256 * KiB)),$((9 * MiB + 4096))+4096,$((11 * MiB))+$((64 * KiB)),$((63 * MiB))+4096"
B="$((2 * MiB))+4096,$((4 * MiB + 12288))+4096,$((7 * MiB))+$((128 * KiB)),$((13 * MiB))+4096,$((40 * MiB))+$((32 * KiB))"
C="$((20 * MiB))+4096,$((21 * MiB))+$((64 * KiB)),$((30 * MiB + 4096))+8192,$((50 * MiB))+4096"

make_pattern_image primary.img 64 >/dev/null
PAIR_PROXY=1 start_pair sync --peer-timeout 3
wait_in_sync pri sec
# Data written while connected: replicated normally.
write_ranges "$NBD_SOCK" 1 "$((6 * MiB))+$((512 * KiB)),$((33 * MiB))+$((1 * MiB))" ||
    fail "writes to the connected pair failed"
wait_in_sync pri sec
compare_volumes primary.img replica.img
gen_before=$(status_json pri | jq -c .generation)
log "in sync; primary generation $gen_before"
port=$SECONDARY_PORT

# ---- apart: write on both sides ----

stop_agent sec || fail "secondary did not stop cleanly"
wait_until -m "primary notices the lost link" \
    '[ "$(status_field pri connection)" != connected ]'

w0=$(status_field pri bytes_written)
write_ranges "$NBD_SOCK" 2 "$A,$C" || fail "writes without the secondary were not answered"
w1=$(status_field pri bytes_written)
pri_apart=$((w1 - w0))
[ "$pri_apart" -eq "$(ranges_bytes "$A,$C")" ] ||
    fail "primary bytes_written grew by $pri_apart, wrote $(ranges_bytes "$A,$C")"

# A second primary on the secondary's replica and metadata, its peer a port
# nobody listens on (bound and closed again: refused).
dead_port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_primary pri2 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
    --nbd "unix:$TESTDIR/pri2.sock" --peer "127.0.0.1:$dead_port" --mode sync \
    --peer-timeout 3 \
    --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name secondary
write_ranges "$TESTDIR/pri2.sock" 3 "$B,$C" || fail "writes through pri2 were not answered"
pri2_apart=$(status_field pri2 bytes_written)
[ "$pri2_apart" -eq "$(ranges_bytes "$B,$C")" ] ||
    fail "pri2 bytes_written is $pri2_apart, wrote $(ranges_bytes "$B,$C")"
log "pri2 generation $(status_json pri2 | jq -c .generation)"
stop_agent pri2 || fail "pri2 did not stop cleanly"
expect_ranges replica.img 3 "$B,$C" || fail "pri2's writes are not in replica.img"

apart=$((pri_apart + pri2_apart))
sum_pri=$(sha256sum <primary.img)
sum_rep=$(sha256sum <replica.img)

# ---- reconnect: split brain, nothing overwritten ----

accepted0=$(proxy_status px accepted)
SEC=sec2
start_secondary sec2 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
    --listen "127.0.0.1:$port" \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary
wait_until -t 60 -m "primary reports split brain" \
    '[ "$(sfield pri split_brain)" = true ]'
wait_until -t 60 -m "secondary reports split brain" \
    '[ "$(sfield sec2 split_brain)" = true ]'
log "primary: $(status_json pri | jq -c '{connection, sync, split_brain, sync_decision, last_error}')"
log "secondary: $(status_json sec2 | jq -c '{connection, sync, split_brain, sync_decision, last_error}')"
[ "$(sfield pri sync_decision)" = split-brain ] || fail "primary sync_decision is $(sfield pri sync_decision), not split-brain"
[ "$(sfield sec2 sync_decision)" = split-brain ] || fail "secondary sync_decision is $(sfield sec2 sync_decision), not split-brain"
grep -qi 'split brain' pri.log || fail "pri.log does not mention the split brain"
grep -qi 'split brain' sec2.log || fail "sec2.log does not mention the split brain"
[ "$(status_field pri connection)" != connected ] ||
    fail "primary reports connected during a split brain"
# The primary keeps retrying (so that a resolution takes effect): let it
# try twice more, and check that neither side was touched.
accepted1=$(proxy_status px accepted)
wait_until -t 60 -m "the primary retries during the split brain" \
    '[ "$(proxy_status px accepted)" -ge $((accepted1 + 2)) ]'
[ "$(sfield pri split_brain)" = true ] || fail "primary no longer reports split brain"
[ "$(sfield sec2 split_brain)" = true ] || fail "secondary no longer reports split brain"
[ "$(sha256sum <primary.img)" = "$sum_pri" ] || fail "primary.img changed during the split brain"
[ "$(sha256sum <replica.img)" = "$sum_rep" ] || fail "replica.img changed during the split brain"
expect_ranges replica.img 3 "$B,$C" || fail "the secondary's own writes were overwritten during the split brain"
log "split brain: $(($(proxy_status px accepted) - accepted0)) connections refused, both volumes unchanged"

# ---- resolve on the secondary: it is resynced from the primary ----

log_lines=$(wc -l <pri.log)
"$DUPLEXCTL" --control "$TESTDIR/sec2.ctl" resolve --discard-local ||
    fail "resolve --discard-local on the secondary failed"
wait_in_sync pri sec2
compare_volumes primary.img replica.img
expect_ranges replica.img 2 "$A,$C" || fail "the replica does not hold the primary's version of the blocks written apart"
[ "$(sfield pri split_brain)" = false ] || fail "primary still reports split brain"
[ "$(sfield sec2 split_brain)" = false ] || fail "secondary still reports split brain"

s=$(status_json pri)
resync_sent=$(jq -r .resync_bytes_sent <<<"$s")
resync_total=$(jq -r .resync_bytes_total <<<"$s")
# Every resync since the resolution, from the log (a resync restarted after
# a reconnect resets the status counters).
log_sent=$(tail -n +"$((log_lines + 1))" pri.log |
    sed -n 's/.*resync complete: .* \([0-9][0-9]*\) sent as data, \([0-9][0-9]*\) as zero ranges.*/\1 \2/p' |
    awk '{s += $1 + $2} END {print s + 0}')
moved=$((resync_sent > log_sent ? resync_sent : log_sent))
echo "FIGURES: split-brain: written apart primary=$pri_apart pri2=$pri2_apart total=$apart; resync_bytes_total=$resync_total resync_bytes_sent=$resync_sent (log: $log_sent); ratio=$(awk -v a="$moved" -v b="$apart" 'BEGIN {printf "%.2f", a / b}'); decision=$(jq -r .sync_decision <<<"$s")"
[ "$moved" -gt 0 ] || fail "no resync bytes reported after resolve --discard-local"
[ "$moved" -le $((2 * apart)) ] ||
    fail "resync moved $moved bytes for $apart bytes written apart (more than 2x)"
