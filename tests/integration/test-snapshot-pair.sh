#!/bin/bash
# Snapshots requested on the primary are points in time of its volume.
# A client writes serially (write k: a 4 KiB block of its own, holding k),
# while snapshots are created through the primary's control socket at
# random moments.  Each snapshot, restored from the store with no agent
# running, must hold exactly the writes 1..k for some k between the number
# acknowledged before the create command was sent and the number issued
# when it returned: every acknowledged write, nothing issued after, never a
# hole.  In both modes; also through the secondary's own control socket,
# and the store verifies clean.  The running secondary exports one
# snapshot read-only over NBD: the same bytes, writes refused.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

make_certs "$CERTS" primary secondary

run_mode() {
    local mode=$1
    rm -rf "$TESTDIR/S" "$TESTDIR"/*.img "$TESTDIR"/*.meta
    truncate -s 64M "$TESTDIR/primary.img"
    SEC=sec_$mode PRI=pri_$mode
    start_secondary "$SEC" --volume "$TESTDIR/replica.img" \
        --meta "$TESTDIR/replica.meta" --listen 127.0.0.1:0 \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary \
        --snapshot-store "$TESTDIR/S"
    start_primary "$PRI" --volume "$TESTDIR/primary.img" \
        --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/$PRI.sock" \
        --peer "127.0.0.1:$SECONDARY_PORT" --mode "$mode" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary
    wait_in_sync "$PRI"

    timeout $((120 * SLOW)) "$PYTHON" - "$TESTDIR/$PRI.sock" "$DUPLEXCTL" \
        "$TESTDIR/$PRI.ctl" "$TESTDIR/$SEC.ctl" "$TESTDIR/snaps.$mode" <<'PY' ||
import json, os, random, struct, subprocess, sys, threading, time
import nbd
sock, ctl, pctl, sctl, out = sys.argv[1:6]
BS = 4096
h = nbd.NBD()
h.connect_unix(sock)
nblocks = h.get_size() // BS
order = list(range(nblocks))
random.Random(7).shuffle(order)
state = {"issued": 0, "acked": 0, "stop": False, "error": None}
lock = threading.Lock()

def block(seq, off):
    hdr = struct.pack("<8sQQ", b"DUPLEXSN", seq, off)
    return (hdr * (BS // len(hdr) + 1))[:BS]

def writer():
    try:
        seq = 0
        while not state["stop"] and seq < 12000:
            seq += 1
            off = order[seq - 1] * BS
            with lock:
                state["issued"] = seq
            h.pwrite(block(seq, off), off)
            with lock:
                state["acked"] = seq
    except Exception as e:
        state["error"] = str(e)

t = threading.Thread(target=writer)
t.start()
rng = random.Random(11)
snaps = []
for i in range(8):
    time.sleep(rng.uniform(0.05, 0.3))
    with lock:
        a = state["acked"]
    sock_ = pctl if i % 4 != 3 else sctl   # every 4th on the secondary
    r = subprocess.run([ctl, "--control", sock_, "snapshot", "create",
                        "--name", "s%d" % i, "--json"],
                       capture_output=True, text=True, timeout=30)
    with lock:
        b = state["issued"]
    if r.returncode != 0:
        sys.exit("snapshot create %d failed: %s%s" % (i, r.stdout, r.stderr))
    sid = json.loads(r.stdout)["id"]
    snaps.append({"id": sid, "acked_before": a, "issued_after": b,
                  "on": "primary" if sock_ == pctl else "secondary"})
state["stop"] = True
t.join()
if state["error"]:
    sys.exit("writer: " + state["error"])
json.dump({"snaps": snaps, "order": order[:state["issued"]]}, open(out, "w"))
print("took %d snapshots over %d writes" % (len(snaps), state["issued"]))
PY
        fail "$mode: the write + snapshot driver failed"

    # Every snapshot complete, then the store is free for duplex-store.
    wait_until -t 120 -m "$mode: no snapshot copying" \
        "[ \"\$(status_json $SEC | jq '.snapshots.copying')\" = 0 ]"
    status_json "$SEC" | jq -e '.snapshots.count == 8' >/dev/null ||
        fail "$mode: the secondary lists $(status_json "$SEC" | jq .snapshots.count) snapshots, 8 expected"
    # the text status says the same: count, store, last time
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" status >status.txt ||
        fail "$mode: status failed"
    grep -Eq "^snapshots: +8, store $TESTDIR/S.* \([0-9.]+ [KMG]iB\), last taken 20[0-9-]+T[0-9:]+Z$" status.txt ||
        fail "$mode: the text status does not show the snapshots: $(grep snapshots status.txt)"
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" snapshot list --json >"$TESTDIR/list.$mode" ||
        fail "$mode: snapshot list failed"
    jq -e 'length == 8 and all(.[]; .state == "complete" and .reason == "manual"
           and (.created | test("^[0-9-]+T[0-9:]+Z$")) and .size_bytes == 67108864)' \
        "$TESTDIR/list.$mode" >/dev/null || fail "$mode: snapshot list: $(cat "$TESTDIR/list.$mode")"
    # The running secondary serves a snapshot read-only over NBD.
    first=$(jq -r '.snaps[0].id' "$TESTDIR/snaps.$mode")
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" snapshot export "$first" \
        --nbd "unix:$TESTDIR/exp.sock" >/dev/null || fail "$mode: export failed"
    nbdcopy "nbd+unix:///?socket=$TESTDIR/exp.sock" "$TESTDIR/exported.img" ||
        fail "$mode: nbdcopy from the exported snapshot failed"
    "$PYTHON" - "$TESTDIR/exp.sock" <<'PY' || fail "$mode: the export accepted a write"
import sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
assert h.is_read_only()
try:
    h.pwrite(b"x" * 4096, 0)
except nbd.Error:
    sys.exit(0)
sys.exit("write succeeded")
PY
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" snapshot delete "$first" >/dev/null 2>&1 &&
        fail "$mode: a snapshot was deleted while exported"
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" snapshot unexport "$first" >/dev/null ||
        fail "$mode: unexport failed"
    last=$(jq -r '.snaps[-1].id' "$TESTDIR/snaps.$mode")
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" snapshot diff "$first" "$last" --json \
        >"$TESTDIR/diff-agent.$mode" || fail "$mode: snapshot diff failed"
    jq -e '.changed_bytes > 0' "$TESTDIR/diff-agent.$mode" >/dev/null ||
        fail "$mode: snapshot diff found nothing between $first and $last"
    stop_agent "$PRI" || fail "$PRI did not stop cleanly"
    stop_agent "$SEC" || fail "$SEC did not stop cleanly"

    "$DUPLEX_BUILD/duplex-store" --store "$TESTDIR/S" verify >"$TESTDIR/verify.$mode" ||
        fail "$mode: verify: $(cat "$TESTDIR/verify.$mode")"
    for id in $(jq -r '.snaps[].id' "$TESTDIR/snaps.$mode"); do
        "$DUPLEX_BUILD/duplex-store" --store "$TESTDIR/S" restore "$id" \
            --to "$TESTDIR/snap$id.img" >/dev/null || fail "$mode: restore $id failed"
    done
    compare_volumes "$TESTDIR/snap$first.img" "$TESTDIR/exported.img"
    "$DUPLEX_BUILD/duplex-store" --store "$TESTDIR/S" diff "$first" "$last" --json \
        >"$TESTDIR/diff-store.$mode" || fail "$mode: duplex-store diff failed"
    cmp "$TESTDIR/diff-agent.$mode" "$TESTDIR/diff-store.$mode" ||
        fail "$mode: the agent's and the store's diff differ"
    "$PYTHON" - "$TESTDIR/snaps.$mode" "$TESTDIR" "$mode" <<'PY' || fail "$mode: a snapshot is not the point in time it names"
import json, struct, sys
snaps_path, d, mode = sys.argv[1:4]
st = json.load(open(snaps_path))
order = st["order"]
BS = 4096
for s in st["snaps"]:
    present = {}
    with open("%s/snap%d.img" % (d, s["id"]), "rb") as f:
        data = f.read()
    for i in range(0, len(data), BS):
        blk = data[i:i + BS]
        if blk[:8] == b"DUPLEXSN":
            seq, off = struct.unpack("<QQ", blk[8:24])
            if off != i:
                sys.exit("snapshot %d: block at %d claims offset %d" % (s["id"], i, off))
            present[seq] = off
        elif blk != bytes(BS):
            sys.exit("snapshot %d: block at %d is neither zero nor a write" % (s["id"], i))
    k = max(present) if present else 0
    if sorted(present) != list(range(1, k + 1)):
        missing = sorted(set(range(1, k + 1)) - set(present))[:5]
        sys.exit("snapshot %d: holes in the write sequence 1..%d, e.g. %s" % (s["id"], k, missing))
    if not (s["acked_before"] <= k <= s["issued_after"]):
        sys.exit("snapshot %d (created on the %s): holds writes 1..%d, but %d were acknowledged before the command and %d issued when it returned"
                 % (s["id"], s["on"], k, s["acked_before"], s["issued_after"]))
    print("%s: snapshot %d (%s): writes 1..%d (acked before %d, issued after %d)"
          % (mode, s["id"], s["on"], k, s["acked_before"], s["issued_after"]))
PY
    log "$mode: every snapshot is exactly a prefix of the writes, within its command's window"
}

run_mode sync
run_mode async
