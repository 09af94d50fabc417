#!/bin/bash
# A resync interrupted by another outage resumes where it stopped.  64 MiB
# of random 4 KiB writes while the link is cut; the link comes back
# throttled to 2 MB/s so the resync is slow; while it runs (resyncing, some
# bytes sent) the link is cut again; then restored at full speed.  The
# second run covers only what the first did not finish, the bytes sent by
# both runs together are <= 2 x the bytes written apart, and the volumes
# end byte-identical.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

PEER_TIMEOUT=3
APART=$((64 << 20))
MiB=$((1 << 20))

truncate -s 256M primary.img
PAIR_PROXY=1 start_outage_pair sync --peer-timeout "$PEER_TIMEOUT"
wait_in_sync pri sec

pri_snapshot b0 lag0
proxy_cmd px cut >/dev/null
wait_until -m "primary notices the cut" \
    '[ "$(status_field pri connection)" = connecting ]'
start_writer w --max-bytes "$APART"
wait_writer_exit w
pri_snapshot b1 lag1
apart=$((b1 - b0 + lag0))
log "written while apart: $apart bytes"

# First resync run, slow.
proxy_cmd px throttle 2000000 >/dev/null
proxy_cmd px restore >/dev/null
wait_connected "first resync"
t_first=$CONNECTED_MS
# Cut it once the secondary has acknowledged 8 MiB of it (done = total -
# out of sync; the first 16 MiB are on the stream at once, the resync
# window, so bytes sent alone says little).
wait_until -m "the first resync is under way (8 MiB done)" \
    'status_json pri | jq -e ".sync == \"resyncing\" and .resync_bytes_sent > 0 and .resync_bytes_total - .out_of_sync_bytes >= 8 * 1048576" >/dev/null'
s=$(status_json pri)
done1=$(jq -r '.resync_bytes_total - .out_of_sync_bytes' <<<"$s")
total1=$(jq -r .resync_bytes_total <<<"$s")
sent1_before=$(jq -r .resync_bytes_sent <<<"$s")
decision1=$(jq -r .sync_decision <<<"$s")
[ "$sent1_before" -lt "$total1" ] ||
    fail "the throttled resync finished before it could be cut ($sent1_before of $total1 bytes sent)"

proxy_cmd px cut >/dev/null
t_cut=$(now_ms)
wait_until -m "primary notices the second cut" \
    '[ "$(status_field pri connection)" = connecting ]'
# The counters of the interrupted run stay until the next run starts.
s=$(status_json pri)
sent1=$(jq -r .resync_bytes_sent <<<"$s")
[ "$sent1" -ge "$sent1_before" ] || sent1=$sent1_before
oos_between=$(jq -r .out_of_sync_bytes <<<"$s")
log "first run: $sent1 of $total1 bytes sent when cut; $oos_between bytes still out of sync"
[ "$oos_between" -le $((total1 - done1)) ] ||
    fail "after the interrupted resync $oos_between bytes are out of sync, more than the $((total1 - done1)) it had left ($done1 of $total1 done)"

# Second run, full speed: it resumes.
proxy_cmd px throttle 0 >/dev/null
proxy_cmd px restore >/dev/null
wait_resync "second resync"
s=$(status_json pri)
total2=$(jq -r .resync_bytes_total <<<"$s")
sent2=$(jq -r .resync_bytes_sent <<<"$s")
decision2=$(jq -r .sync_decision <<<"$s")
compare_volumes primary.img replica.img

first_secs=$(awk -v a="$t_first" -v b="$t_cut" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
check_resync_ratio "cut-during-resync" "$apart" $((sent1 + sent2)) \
    "first_run_total=$total1 first_run_sent=$sent1 first_run_done=$done1 first_run_secs=$first_secs" \
    "second_run_total=$total2 second_run_sent=$sent2" \
    "sync_decision=$decision1,$decision2"
[ "$decision1" = source-bitmap ] && [ "$decision2" = source-bitmap ] ||
    fail "sync_decision was '$decision1' then '$decision2', expected source-bitmap both times"
# Resumed, not restarted: the second run leaves out what the first got
# acknowledged.
[ "$total2" -le $((total1 - done1)) ] ||
    fail "the second resync covers $total2 bytes, but the interrupted one ($total1 bytes) had $done1 done: it did not resume"
