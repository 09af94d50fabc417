#!/bin/bash
# Sync mode, kill -9 of the primary under a write load: every write the
# client saw answered is on the replica.  The writer (start_writer
# --pattern tagged) writes 4 KiB blocks at random aligned offsets, each
# holding its sequence number and offset, and records every answered
# write.  After the kill the secondary is stopped cleanly and its replica
# file read directly: for each offset, the block must hold the last
# answered write to it or a later write issued to it (the one in flight at
# the kill).  Then both agents are restarted and the pair must end
# byte-identical with a resync of far less than the volume.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

MiB=$((1 << 20))
SIZE=$((256 * MiB))

truncate -s 256M primary.img
start_outage_pair sync --peer-timeout 3
wait_in_sync pri sec

start_writer w --pattern tagged --seed 31 --tolerate-errors
# Kill at a point that varies from run to run, after 4..12 MiB.
kill_at=$(((4 + RANDOM % 9) * MiB))
wait_written "$kill_at"
writer_running w || fail "the writer stopped before the kill"
kill9_agent pri
wait_writer_exit w
[ "$(writer_sum w error)" != null ] || fail "the writer saw no error when the primary died"
acked=$(writer_sum w acked)
log "primary killed after $acked answered writes"

stop_agent sec || fail "secondary did not stop cleanly after losing the primary"

"$PYTHON" - replica.img w.acked w.sum <<'PY' || fail "answered writes are missing on the replica"
import json, struct, sys
TAG, BS = b"DUPLEXWR", 4096
def tag_block(seq, off):
    hdr = struct.pack("<8sQQ", TAG, seq, off)
    return (hdr * (BS // len(hdr) + 1))[:BS]
replica, acked_path, sum_path = sys.argv[1:4]
st = json.load(open(sum_path))
issued = {}                     # offset -> set of sequence numbers
last_acked = {}                 # offset -> last answered sequence number
n_acked = 0
for line in open(acked_path):
    seq, off = map(int, line.split())
    issued.setdefault(off, set()).add(seq)
    last_acked[off] = max(last_acked.get(off, 0), seq)
    n_acked += 1
if n_acked != st["acked"]:
    sys.exit(f"w.acked has {n_acked} lines, the writer counted {st['acked']}")
inflight = None
if st["issued"] > st["acked"]:
    inflight = tuple(st["last_issued"])
    issued.setdefault(inflight[1], set()).add(inflight[0])
bad, newer = [], 0
with open(replica, "rb") as f:
    for off, want in sorted(last_acked.items()):
        f.seek(off)
        got = f.read(BS)
        seq = struct.unpack_from("<Q", got, 8)[0] if got[:8] == TAG else None
        if seq is None or got != tag_block(seq, off):
            bad.append(f"offset {off}: last answered write #{want} missing "
                       f"(block holds {'no tag' if seq is None else 'a torn or misplaced tag #%d' % seq})")
        elif seq < want:
            bad.append(f"offset {off}: holds write #{seq}, but write #{want} was answered")
        elif seq not in issued[off]:
            bad.append(f"offset {off}: holds write #{seq}, never issued there")
        elif seq > want:
            newer += 1
print(f"{n_acked} answered writes to {len(last_acked)} blocks checked on the "
      f"replica; in flight at the kill: {inflight}; blocks holding it: {newer}")
if bad:
    print(f"FAIL: {len(bad)} blocks wrong, first ones:", *bad[:10], sep="\n  ")
    sys.exit(1)
PY

# Both back: the pair converges without a full resync.
restart_secondary
restart_primary
wait_resync "restart after the kill"
wait_in_sync sec
s=$(status_json pri)
compare_volumes primary.img replica.img
sent=$(jq -r .resync_bytes_sent <<<"$s")
echo "FIGURES: $TEST_NAME: answered_writes=$acked resync_bytes_sent=$sent" \
    "resync_checksum_same_bytes=$(jq -r .resync_checksum_same_bytes <<<"$s")" \
    "resync_bytes_total=$(jq -r .resync_bytes_total <<<"$s")" \
    "resync_seconds=$(jq -r .resync_seconds <<<"$s") polled_resync_secs=$RESYNC_SECS" \
    "sync_decision=$(jq -r .sync_decision <<<"$s")"
# In sync mode the secondary lacks at most the write in flight at the kill.
[ "$sent" -le $((2 * 4096)) ] ||
    fail "resync after a sync-mode primary crash sent $sent bytes; the secondary lacked at most one 4 KiB write"
