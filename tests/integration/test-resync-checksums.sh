#!/bin/bash
# --resync-checksums: during an outage a few blocks are written, some with
# new data and some with exactly the data they already held.  After the
# reconnect the secondary hashes the blocks of the bitmap and the primary
# sends only those whose hash differs: resync_data_bytes_sent is exactly
# the really-changed blocks, resync_checksum_same_bytes the rewritten-
# identical ones, and the volumes end byte-identical.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

CHANGED=24                      # blocks written with new data
SAME=40                         # blocks rewritten with their own data

# Random data everywhere, so that no block is sent as a zero range.
head -c 64M /dev/urandom >primary.img
PAIR_PROXY=1 start_outage_pair sync --peer-timeout 3 --resync-checksums
wait_resync "initial sync"      # (fails early if the link keeps dropping)
wait_in_sync sec
[ "$(status_field pri resync_checksums)" = true ] ||
    fail "status does not show resync_checksums"

pri_snapshot b0 lag0
proxy_cmd px cut >/dev/null
wait_until -m "primary notices the cut" \
    '[ "$(status_field pri connection)" = connecting ]'

nbd_python "$NBD_SOCK" "$CHANGED" "$SAME" <<'PY' || fail "writes during the outage failed"
import os, random, sys
import nbd
BS = 4096
changed, same = int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_unix(sys.argv[1])
rng = random.Random(51)
blocks = rng.sample(range(h.get_size() // BS), changed + same)
rng.shuffle(blocks)
for i, b in enumerate(blocks):
    if i < changed:
        data = os.urandom(BS)
    else:
        data = h.pread(BS, b * BS)
    h.pwrite(data, b * BS)
h.flush()
h.shutdown()
PY
pri_snapshot b1 lag1
apart=$((b1 - b0 + lag0))
[ "$apart" -eq $(((CHANGED + SAME) * 4096)) ] ||
    fail "bytes_written grew by $((b1 - b0)), expected $(((CHANGED + SAME) * 4096))"

proxy_cmd px restore >/dev/null
wait_resync "checksum resync"
s=$(status_json pri)
compare_volumes primary.img replica.img
sent=$(jq -r .resync_bytes_sent <<<"$s")
data=$(jq -r .resync_data_bytes_sent <<<"$s")
zero=$(jq -r .resync_zero_bytes_sent <<<"$s")
same=$(jq -r .resync_checksum_same_bytes <<<"$s")
check_resync_ratio "checksums" "$apart" "$sent" \
    "resync_data_bytes_sent=$data resync_zero_bytes_sent=$zero" \
    "resync_checksum_same_bytes=$same changed_bytes=$((CHANGED * 4096))" \
    "rewritten_same_bytes=$((SAME * 4096))" \
    "resync_bytes_total=$(jq -r .resync_bytes_total <<<"$s")" \
    "sync_decision=$(jq -r .sync_decision <<<"$s")"
[ "$same" -gt 0 ] || fail "resync_checksum_same_bytes is 0 after rewriting $SAME blocks unchanged"
[ "$data" -eq $((CHANGED * 4096)) ] ||
    fail "resync_data_bytes_sent is $data, expected $((CHANGED * 4096)) (the $CHANGED changed blocks)"
[ "$zero" -eq 0 ] || fail "resync_zero_bytes_sent is $zero; no block is zero"
[ "$same" -eq $((SAME * 4096)) ] ||
    fail "resync_checksum_same_bytes is $same, expected $((SAME * 4096)) (the $SAME blocks rewritten unchanged)"
