#!/bin/bash
# Async mode, kill -9 of the primary under a write load: the replica equals
# the primary's state after some prefix of the client's writes.  The client
# writes serially (start_writer --pattern distinct): write k goes to a block
# of its own, in a shuffled order, and holds k and its offset.  The link is
# throttled (1 MB/s: a writer slowed by a loaded machine still outruns
# it) so that the replica lags by megabytes when the primary is
# killed.  Then the secondary is stopped cleanly and the replica file read:
# the set of sequence numbers on it must be exactly {1..k} for some k, each
# at its own offset (no holes, nothing torn).  Then both agents are
# restarted and the pair must end byte-identical.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

MiB=$((1 << 20))

truncate -s 256M primary.img
PAIR_PROXY=1 start_outage_pair async --async-buffer 8M --peer-timeout 3
wait_in_sync pri sec
proxy_cmd px throttle 1000000 >/dev/null

start_writer w --pattern distinct --seed 41 --tolerate-errors
# Kill once the replica is 2..6 MiB behind (varies from run to run).
lag_at=$(((2 + RANDOM % 5) * MiB))
wait_until -m "the replica lags by $lag_at bytes" \
    "[ \"\$(status_field pri replication_lag_bytes)\" -ge $lag_at ]"
pri_snapshot b0 lag0
writer_running w || fail "the writer stopped before the kill"
kill9_agent pri
wait_writer_exit w
[ "$(writer_sum w error)" != null ] || fail "the writer saw no error when the primary died"
acked=$(writer_sum w acked)
log "primary killed after $acked answered writes; last status before the kill: $b0 bytes written, $lag0 bytes of lag ($(( (b0 - lag0) / 4096 )) writes acknowledged by the secondary)"

# What the proxy still holds reaches the secondary; then stop it.
proxy_cmd px throttle 0 >/dev/null
wait_until -m "the old link is gone" '[ "$(proxy_status px connections)" = 0 ]'
stop_agent sec || fail "secondary did not stop cleanly after losing the primary"

"$PYTHON" - replica.img w.acked w.sum >prefix.txt <<'PY' || { cat prefix.txt; fail "the replica is not a prefix of the client's writes"; }
import json, struct, sys
TAG, BS = b"DUPLEXWR", 4096
def tag_block(seq, off):
    hdr = struct.pack("<8sQQ", TAG, seq, off)
    return (hdr * (BS // len(hdr) + 1))[:BS]
replica, acked_path, sum_path = sys.argv[1:4]
st = json.load(open(sum_path))
where = {}                      # seq -> offset, every write issued
for line in open(acked_path):
    seq, off = map(int, line.split())
    where[seq] = off
if st["issued"] > st["acked"]:
    seq, off = st["last_issued"]
    where[seq] = off
zero = bytes(BS)
present, bad = set(), []
with open(replica, "rb") as f:
    off = 0
    while True:
        got = f.read(BS)
        if not got:
            break
        if got != zero:
            seq = struct.unpack_from("<Q", got, 8)[0] if got[:8] == TAG else None
            if seq is None or got != tag_block(seq, off):
                bad.append(f"block at {off} is neither zero nor a whole tagged write")
            elif where.get(seq) != off:
                bad.append(f"block at {off} holds write #{seq}, issued at {where.get(seq)}")
            else:
                present.add(seq)
        off += BS
k = max(present, default=0)
holes = sorted(set(range(1, k + 1)) - present)
print(f"replica holds writes 1..{k} of {st['acked']} answered "
      f"({st['issued']} issued); {len(present)} present")
if holes:
    bad.append(f"{len(holes)} holes below #{k}, first: {holes[:10]}")
if bad:
    print("FAIL:", *bad[:10], sep="\n  ")
    sys.exit(1)
PY
cat prefix.txt
k=$(sed -n 's/^replica holds writes 1\.\.\([0-9]*\) .*/\1/p' prefix.txt)
# Writes the secondary acknowledged before the last status are on it (the
# primary forgets them once acknowledged).
[ "$k" -ge $(((b0 - lag0) / 4096)) ] ||
    fail "the replica holds writes 1..$k, but the secondary had acknowledged $(((b0 - lag0) / 4096)) writes before the kill"

# Both back: the pair converges.
restart_secondary
restart_primary
wait_resync "restart after the kill"
wait_in_sync sec
s=$(status_json pri)
compare_volumes primary.img replica.img
sent=$(jq -r .resync_bytes_sent <<<"$s")
behind=$(((acked - k) * 4096))
[ "$behind" -ge 0 ] || behind=4096   # the write in flight reached it
echo "FIGURES: $TEST_NAME: answered_writes=$acked replica_prefix=$k" \
    "lag_at_kill=$lag0 behind_bytes=$behind resync_bytes_sent=$sent" \
    "resync_checksum_same_bytes=$(jq -r .resync_checksum_same_bytes <<<"$s")" \
    "resync_bytes_total=$(jq -r .resync_bytes_total <<<"$s")" \
    "resync_seconds=$(jq -r .resync_seconds <<<"$s") polled_resync_secs=$RESYNC_SECS" \
    "sync_decision=$(jq -r .sync_decision <<<"$s")"
# The secondary lacked the writes after its prefix (plus the one in
# flight): the resync sends at most twice that.
[ "$sent" -le $((2 * (behind + 4096))) ] ||
    fail "resync sent $sent bytes; the replica lacked $behind bytes of writes"
