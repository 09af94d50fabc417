#!/bin/bash
# duplexctl restore --instant: the primary keeps serving NBD while a 2 GiB
# volume is restored from a snapshot, in restore grains of 64 KiB
# (--bitmap-grain; the client's 4 KiB and unaligned writes cover them only
# partly: the grain is fetched first).  A client (tests/tools/
# restore_client.py) reads and writes throughout and checks every byte it
# reads against the snapshot overlaid with its own writes; the first read
# of a block not restored yet is answered within 1 s of the command.
# kill -9 of the primary, then of the secondary, in the middle of the
# restore (--restore-rate keeps it going long enough): it resumes, and
# at the end the volume is exactly the snapshot plus the client's writes,
# the replica equal to it.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

# 2 GiB, sparse, 256 MiB of data in 1 MiB pieces.
"$PYTHON" - primary.img <<'EOF'
import os, random, sys
rng = random.Random(7)
with open(sys.argv[1], "wb") as f:
    f.truncate(2 << 30)
    for _ in range(256):
        f.seek(rng.randrange(0, 2048) << 20)
        f.write(os.urandom(1 << 20))
EOF
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S")
start_outage_pair sync --bitmap-grain "${RESTORE_GRAIN:-64K}"
wait_in_sync pri sec
CTL=("$DUPLEXCTL" --control "$TESTDIR/pri.ctl")
id=$("${CTL[@]}" snapshot create --name base --json | jq -r .id) ||
    fail "snapshot not taken"

# The change the restore undoes: 64 MiB in 256 KiB pieces (and what
# restore_client.py reads mostly).
"$PYTHON" - "$NBD_URI" changes.json <<'EOF'
import json, os, random, sys
import nbd
rng = random.Random(11)
h = nbd.NBD()
h.connect_uri(sys.argv[1])
ch = []
for _ in range(256):
    off = rng.randrange(0, (2 << 30) // (256 << 10)) * (256 << 10)
    h.pwrite(os.urandom(256 << 10), off)
    ch.append([off, 256 << 10])
h.flush()
h.shutdown()
json.dump(ch, open(sys.argv[2], "w"))
EOF
wait_in_sync pri sec
wait_until -t 120 -m "snapshot copied" \
    "[ \"\$(status_json sec | jq '.snapshots.copying')\" = 0 ]"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot export "$id" \
    --nbd "unix:$TESTDIR/exp.sock" >/dev/null || fail "export failed"
nbdcopy "nbd+unix:///?socket=$TESTDIR/exp.sock" snap.img || fail "nbdcopy failed"
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" snapshot unexport "$id" >/dev/null

cp --sparse=always primary.img before.img
# --restore-rate 8M: the background copy of the 64 MiB takes about 8 s,
# with room for the kills (clients' reads are fetched at once).
t0=$(now_ms)
# first_read EXPECTED.img TARGET: a client connected beforehand reads
# 64 KiB of a block the restore has not moved yet (the background copy
# goes up from offset 0: the highest change is the last it reaches) as
# soon as `restore --snapshot TARGET --instant` has returned, and checks
# it against EXPECTED.img; from the command to the answered read must
# stay under 1 s.
first_off=$(jq 'map(.[0]) | max' changes.json)
first_read() {
    local t0 reader
    rm -f go ready done_ms
    "$PYTHON" - "$NBD_URI" "$1" "$first_off" <<'EOF' &
import os, sys, time
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
off = int(sys.argv[3])
with open(sys.argv[2], "rb") as f:
    f.seek(off)
    want = f.read(65536)
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.001)
got = h.pread(65536, off)
with open("done_ms", "w") as f:
    f.write("%d\n" % (time.time() * 1000))
sys.exit(0 if got == want else 1)
EOF
    reader=$!
    wait_until -m "first reader connected" '[ -e ready ]'
    t0=$(now_ms)
    "${CTL[@]}" restore --snapshot "$2" --instant ${3:+--restore-rate "$3"} >restore.out ||
        fail "restore --snapshot $2 --instant: $(cat restore.out)"
    cmd_ms=$(($(now_ms) - t0))
    touch go
    wait "$reader" || fail "the first read returned the wrong bytes"
    first_ms=$(($(cat done_ms) - t0))
    log "FIGURE instant restore: first read of an unrestored block answered ${first_ms} ms after the command (by a client connected before it; the command returned after ${cmd_ms} ms)"
    [ "$first_ms" -lt 1000 ] || fail "the first read took $first_ms ms (limit 1000)"
}
first_read snap.img "$id" 8M
log "restore --instant: $(cat restore.out)"

"$PYTHON" "$DUPLEX_SRC/tests/tools/restore_client.py" "$NBD_URI" snap.img \
    changes.json "$TESTDIR/stop" client.json 5 2>client.err &
client=$!
cleanup_fn kill_quiet "$client"
wait_until -t 60 -m "restore under way" \
    '[ "$(status_json pri | jq -r .restore.done_bytes)" -gt $((16 << 20)) ]'
[ "$(status_json pri | jq -r .restore.state)" = copying ] ||
    fail "the restore finished before the kill: $(status_json pri | jq -c .restore)"
kill9_agent pri
restart_primary
jq -e '.restore.resumed == true and .restore.instant == true' <(status_json pri) >/dev/null ||
    fail "the restarted primary did not resume the instant restore: $(status_json pri | jq -c .restore)"
wait_until -t 60 -m "restore under way again" \
    '[ "$(status_json pri | jq -r .restore.done_bytes)" -gt $((8 << 20)) ]'
if [ "$(status_json pri | jq -r .restore.state)" = copying ]; then
    kill9_agent sec
    restart_secondary
else
    fail "the restore finished before the secondary could be killed"
fi
wait_until -t 180 -m "instant restore done" \
    '[ "$(status_json pri | jq -r .restore.state)" = done ] && [ "$(status_field pri sync)" = in-sync ]'
total_ms=$(($(now_ms) - t0))
kill -0 "$client" 2>/dev/null || { cat client.err >&2; fail "the client died during the restore"; }
touch "$TESTDIR/stop"
wait "$client" || { cat client.err >&2; fail "the client failed (exit $?)"; }
status_json pri | jq -c .restore >restore.json
log "restore: $(cat restore.json)"
log "client: $(jq -c 'del(.writes_log)' client.json)"
jq -e '.reads > 20 and .writes > 20' client.json >/dev/null ||
    fail "the client did too little during the restore: $(jq -c 'del(.writes_log)' client.json)"
jq -e '.on_demand_bytes > 0' restore.json >/dev/null || fail "nothing fetched on demand"
# The cap holds for the background copy (clients' fetches are not held
# back; the budget allows bursts of a quarter second).
jq -e '.rate_limit_bytes_per_sec == 8388608 and
       (.done_bytes - .on_demand_bytes) / .seconds <= 8388608 * 1.25' \
    restore.json >/dev/null || fail "--restore-rate 8M not kept: $(cat restore.json)"
log "FIGURE instant restore: total ${total_ms} ms with two kills; $(jq -r '.fetched_bytes' restore.json) bytes fetched, $(jq -r '.on_demand_bytes' restore.json) on demand; client $(jq -r '.reads' client.json) reads, $(jq -r '.writes' client.json) writes"

# The volume: the snapshot plus the client's writes, in order.
"$PYTHON" - snap.img client.json expected.img <<'EOF'
import json, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[3])
with open(sys.argv[3], "r+b") as f:
    for off, data in json.load(open(sys.argv[2]))["writes_log"]:
        f.seek(off)
        f.write(bytes.fromhex(data))
EOF
compare_volumes primary.img expected.img
wait_in_sync pri sec
compare_volumes primary.img replica.img
safety=$(jq -r .safety_snapshot restore.json)

# The first read again, four times, restoring back and forth (the
# safety snapshot of the first restore, then the base snapshot).
for round in 1 2 3 4; do
    if [ $((round % 2)) = 1 ]; then target=$safety want=before.img; else target=$id want=snap.img; fi
    first_read "$want" "$target"
    wait_until -t 120 -m "round $round: restore done" \
        '[ "$(status_json pri | jq -r .restore.state)" = done ] && [ "$(status_field pri sync)" = in-sync ]'
    compare_volumes primary.img "$want"
done
compare_volumes primary.img replica.img
