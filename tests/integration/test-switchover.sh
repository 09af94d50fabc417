#!/bin/bash
# Planned switchover (`duplexctl demote`) moves no data.
#
#   1. demote with the secondary away is refused, and the primary keeps
#      serving (a write succeeds).
#   2. A sync pair under a client writing without pause: demote answers
#      OK; the client's connection ends cleanly (every write it got an
#      answer for was answered OK, none after the close); the primary exits
#      0; both volumes are byte-identical and hold every acknowledged
#      write; the secondary's status offers the promotion ("handover").
#   3. Roles swapped (duplex-primary on the old secondary's volume and
#      metadata, duplex-secondary on the old primary's): connected and in
#      sync with 0 bytes resynced.
#   4. Writes on the new primary, demote again, swap back: again 0 bytes
#      resynced, the volumes identical, the data the new primary wrote on
#      both.
# Each direction of dialling once: the first pair dials as usual, the
# swapped pair with the (new) primary listening.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

make_pattern_image primary.img 64 >/dev/null

# writer SOCK SEED OUT: writes 4 KiB blocks (block n is the number n
# repeated) until the server closes; prints to OUT one line per answered
# write ("ok OFFSET N"), then "closed N" or "error ..." and a last line
# "pending OFFSET N" for the write that got no answer.  Exits 0 unless a
# write was answered with an error.
writer() {
    nbd_python "$1" "$2" >"$3" 2>&1 <<'PY' &
import random, struct, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
n = 0
try:
    while True:
        off = rng.randrange(h.get_size() // 4096) * 4096
        n += 1
        print("try", off, n, flush=True)
        h.pwrite(struct.pack("<Q", n) * 512, off)
        print("ok", off, n, flush=True)
except nbd.Error as e:
    msg = str(e).replace("\n", " ")
    # A closed connection leaves the handle dead; an error reply to a
    # write would leave it alive.
    if h.aio_is_dead() or h.aio_is_closed():
        print("closed", n - 1, msg, flush=True)
        sys.exit(0)
    print("error", n, msg, flush=True)
    sys.exit(3)
PY
}

# no_resync LABEL: $PRI reports that nothing was resynced.
no_resync() {
    local s
    s=$(status_json "$PRI")
    jq -e '.resync_total_bytes == 0 and .resync_data_bytes_sent == 0 and
           .resync_zero_bytes_sent == 0' <<<"$s" >/dev/null ||
        fail "$1: the swapped pair resynced: $(jq -c '{resync_total_bytes,
            resync_data_bytes_sent, resync_zero_bytes_sent, sync_decision}' <<<"$s")"
    log "$1: in sync, 0 bytes resynced ($(jq -r .sync_decision <<<"$s"))"
}

# ---- 1: nothing to hand over to ----
start_pair sync
wait_in_sync pri sec
stop_agent sec || fail "the secondary did not stop cleanly"
wait_until -t 30 -m "primary notices" \
    '[ "$(status_field pri connection)" != connected ]'
"$DUPLEXCTL" --control "$TESTDIR/pri.ctl" demote >out.txt 2>&1 &&
    fail "demote succeeded with the secondary away: $(cat out.txt)"
grep -q "not connected" out.txt || fail "demote's refusal does not say why: $(cat out.txt)"
log "refused: $(head -n 1 out.txt)"
scatter 1 10 flush
start_secondary sec --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
    --listen "127.0.0.1:$SECONDARY_PORT" \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary
wait_in_sync pri sec

# ---- 2: demote under a writing client ----
writer "$NBD_SOCK" 7 w1.txt
wpid=$!
wait_until -t 30 -m "the writer has written" '[ "$(grep -c ^ok w1.txt)" -ge 200 ]'
t0=$(now_ms)
"$DUPLEXCTL" --control "$TESTDIR/pri.ctl" demote >out.txt 2>&1 ||
    fail "demote failed: $(cat out.txt)"
agent_exit pri
[ "$AGENT_EXIT" = 0 ] || fail "the demoted primary exited with status $AGENT_EXIT"
log "demote answered in $(($(now_ms) - t0)) ms: $(head -c 300 out.txt)"
wait "$wpid" || fail "the writer saw an error reply: $(tail -n 2 w1.txt)"
tail -n 1 w1.txt | grep -q "^closed" || fail "the writer did not end with a close: $(tail -n 2 w1.txt)"
log "writer: $(grep -c ^ok w1.txt) writes answered, then: $(tail -n 1 w1.txt)"
# check_writes IMAGE: every answered write is in IMAGE (the last one per
# offset; where the unanswered one went to the same offset, either).
check_writes() {
    "$PYTHON" - "$1" w1.txt <<'PY' || fail "$1 lacks writes the client was answered for"
import struct, sys
img, log = sys.argv[1], sys.argv[2]
last, tried = {}, None
for line in open(log):
    w = line.split()
    if w[0] == "ok":
        last[int(w[1])] = int(w[2])
        tried = None
    elif w[0] == "try":
        tried = (int(w[1]), int(w[2]))
bad = 0
with open(img, "rb") as f:
    for off, n in last.items():
        f.seek(off)
        got = f.read(4096)
        ok = {struct.pack("<Q", n) * 512}
        if tried and tried[0] == off:
            ok.add(struct.pack("<Q", tried[1]) * 512)
        if got not in ok:
            bad += 1
print("%d offsets checked, %d wrong" % (len(last), bad), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
s=$(status_json sec)
jq -e '.promotion == "handover" and .last_handover != null' <<<"$s" >/dev/null ||
    fail "the secondary does not offer the promotion: $(jq -c '{promotion, promotion_hint}' <<<"$s")"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" status | grep -q "^promote: *safe" ||
    fail "the secondary's status text does not say it may be promoted"
stop_agent sec || fail "the secondary did not stop cleanly"
compare_volumes primary.img replica.img
check_writes replica.img

# ---- 3: roles swapped, the new primary listening ----
start_primary pri2 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
    --nbd "unix:$TESTDIR/pri2.sock" --listen 127.0.0.1:0 --mode sync \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary
grep -q "promoted after a planned switchover" pri2.log ||
    fail "the new primary did not log its promotion"
start_secondary sec2 --volume "$TESTDIR/primary.img" --meta "$TESTDIR/primary.meta" \
    --peer "127.0.0.1:$PRIMARY_PORT" \
    --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name secondary
PRI=pri2 SEC=sec2
wait_in_sync pri2 sec2
no_resync "swap 1"

# ---- 4: write on the new primary, hand back ----
NBD_SOCK=$TESTDIR/pri2.sock scatter 2 300 flush
wait_in_sync pri2 sec2
"$DUPLEXCTL" --control "$TESTDIR/pri2.ctl" demote --timeout 30s >out.txt 2>&1 ||
    fail "second demote failed: $(cat out.txt)"
agent_exit pri2
[ "$AGENT_EXIT" = 0 ] || fail "pri2 exited with status $AGENT_EXIT"
stop_agent sec2 || fail "sec2 did not stop cleanly"
compare_volumes primary.img replica.img
start_secondary sec3 --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
    --listen 127.0.0.1:0 \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary
start_primary pri3 --volume "$TESTDIR/primary.img" --meta "$TESTDIR/primary.meta" \
    --nbd "unix:$TESTDIR/pri3.sock" --peer "127.0.0.1:$SECONDARY_PORT" --mode sync \
    --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name secondary
PRI=pri3 SEC=sec3
wait_in_sync pri3 sec3
no_resync "swap 2"
NBD_SOCK=$TESTDIR/pri3.sock scatter 3 50 flush
wait_in_sync pri3 sec3
stop_agent pri3 || fail "pri3 did not stop cleanly"
stop_agent sec3 || fail "sec3 did not stop cleanly"
compare_volumes primary.img replica.img
