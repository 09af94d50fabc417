#!/bin/bash
# nbdcopy a 256 MiB image with random and zero regions into the primary
# (sync mode); after nbdcopy's flush the replica file is byte-identical to
# the primary volume and to the source.  Also checks the status schema of
# both agents.
source "$(dirname "$0")/functions.sh"
requires nbdcopy nbdinfo

# The primary starts with old data that the copy's zero regions must erase
# on both sides (the initial sync sends it to the replica first).
truncate -s 256M primary.img
head -c 32M /dev/urandom | dd of=primary.img bs=1M seek=100 conv=notrunc status=none
start_pair sync
wait_in_sync pri sec

# Status schema, both roles.
for a in pri sec; do
    s=$(status_json $a)
    jq -e '
      (.role | IN("primary", "secondary")) and
      (.volume | type == "string") and
      (.size_bytes == 268435456) and
      (.mode | IN("sync", "async")) and
      (.connection | IN("connected", "connecting", "standalone")) and
      (.sync | IN("in-sync", "initial-sync", "resyncing", "unknown")) and
      ([.out_of_sync_bytes, .sync_done_percent, .replication_lag_bytes,
        .bytes_sent, .bytes_received, .writes_acked] | all(type == "number"))
    ' >/dev/null <<<"$s" || fail "status of $a lacks a field or has a bad value: $s"
done
[ "$(status_field pri role)" = primary ] || fail "pri role is not primary"
[ "$(status_field sec role)" = secondary ] || fail "sec role is not secondary"
[ "$(status_field pri mode)" = sync ] || fail "pri mode is not sync"
jq -e '[.resync_total_bytes, .resync_done_bytes, .resync_data_bytes_sent,
        .resync_zero_bytes_sent] | all(type == "number")' \
    >/dev/null <<<"$(status_json pri)" || fail "primary status lacks resync counters"
"$DUPLEXCTL" --control "$TESTDIR/pri.ctl" status >human.txt ||
    fail "duplexctl status (human) failed"
[ -s human.txt ] || fail "duplexctl status printed nothing"
cat human.txt

[ "$(nbdinfo --size "$NBD_URI")" = 268435456 ] ||
    fail "nbdinfo --size says $(nbdinfo --size "$NBD_URI"), expected 268435456"

data=$(make_pattern_image src.img 256)
log "source image: $data bytes of random data in 256 MiB"
acked0=$(status_field pri writes_acked)
sent0=$(status_field pri bytes_sent)

timeout $((120 * SLOW)) nbdcopy --flush src.img "$NBD_URI" ||
    fail "nbdcopy into the primary failed"

# Sync mode: everything nbdcopy was answered for is already on the replica.
compare_volumes src.img primary.img
compare_volumes primary.img replica.img

acked=$(status_field pri writes_acked)
sent=$(status_field pri bytes_sent)
[ "$acked" -gt "$acked0" ] || fail "writes_acked did not grow ($acked0 -> $acked)"
[ $((sent - sent0)) -ge "$data" ] ||
    fail "bytes_sent grew by $((sent - sent0)), less than the $data data bytes copied"
wait_in_sync pri sec
[ "$(status_field sec bytes_received)" -ge "$data" ] ||
    fail "secondary bytes_received $(status_field sec bytes_received) < $data"

stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
compare_volumes primary.img replica.img
