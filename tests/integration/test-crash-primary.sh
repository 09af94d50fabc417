#!/bin/bash
# kill -9 of the primary under a write load (random 4 KiB blocks at random
# aligned offsets of a 256 MiB volume), then a restart on the same volume
# and metadata: the resync covers the write-intent bitmap plus the regions
# of the activity log (compared by checksum, so only blocks that differ
# travel), never the whole volume, and the pair ends byte-identical.
#
# Two rounds:
#   sync, link cut first: the secondary misses everything written after
#     the cut; the primary is killed while still writing, the link is
#     restored, the primary restarted;
#   async, link up but throttled so the replica lags: the primary is killed
#     while the secondary is behind by the lag.
#
# Bytes the secondary could not get = what the writer issued after the last
# status read before the outage (cut or kill) + the replication lag in that
# read.  The writer's own count is used since the primary's counters die
# with it.  resync_bytes_sent (data + zero ranges) must be <= 2 x that;
# blocks found equal by checksum (resync_checksum_same_bytes) are not sent
# and not counted.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

PEER_TIMEOUT=3
MiB=$((1 << 20))
SIZE=$((256 * MiB))

truncate -s 256M primary.img
PAIR_PROXY=1 start_outage_pair sync --peer-timeout "$PEER_TIMEOUT"
wait_in_sync pri sec

# after_restart LABEL APART: restart the primary, resync, check the figures.
after_restart() {
    local label=$1 apart=$2 s sent same total decision
    restart_primary
    wait_resync "$label"
    s=$(status_json pri)
    sent=$(jq -r .resync_bytes_sent <<<"$s")
    same=$(jq -r .resync_checksum_same_bytes <<<"$s")
    total=$(jq -r .resync_bytes_total <<<"$s")
    decision=$(jq -r .sync_decision <<<"$s")
    compare_volumes primary.img replica.img
    check_resync_ratio "$label" "$apart" "$sent" \
        "resync_bytes_total=$total resync_checksum_same_bytes=$same" \
        "resync_data_bytes_sent=$(jq -r .resync_data_bytes_sent <<<"$s")" \
        "resync_zero_bytes_sent=$(jq -r .resync_zero_bytes_sent <<<"$s")" \
        "sync_decision=$decision"
    # Never the whole volume.
    [ "$sent" -lt $((SIZE / 2)) ] ||
        fail "$label: the resync after the crash sent $sent bytes of a $SIZE-byte volume"
    [ "$decision" != source-full ] ||
        fail "$label: full sync after a primary crash"
}

# ---- round 1: sync mode, link cut, primary killed while writing apart ----
bw_start=$(status_field pri bytes_written)
start_writer w1 --seed 11 --tolerate-errors
wait_written $((bw_start + 2 * MiB))
pri_snapshot b0 lag0
proxy_cmd px cut >/dev/null
wait_until -m "primary notices the cut" \
    '[ "$(status_field pri connection)" = connecting ]'
wait_written $((b0 + 16 * MiB))
writer_running w1 || fail "the writer stopped before the kill"
kill9_agent pri
wait_writer_exit w1
[ "$(writer_sum w1 error)" != null ] || fail "the writer saw no error when the primary died"
issued=$(writer_sum w1 bytes_issued)
apart=$((issued - (b0 - bw_start) + lag0))
proxy_cmd px restore >/dev/null
after_restart "sync-cut-then-kill" "$apart"

# ---- round 2: async mode, link up and slow, primary killed with a lag ----
stop_agent pri || fail "primary did not stop cleanly"
PAIR_MODE=async
PAIR_PRI_ARGS+=(--async-buffer 8M)
restart_primary
wait_in_sync pri
proxy_cmd px throttle 1000000 >/dev/null
bw_start=$(status_field pri bytes_written)
start_writer w2 --seed 12 --tolerate-errors
wait_until -m "the replica lags by 4 MiB" \
    '[ "$(status_field pri replication_lag_bytes)" -ge $((4 * MiB)) ]'
pri_snapshot b0 lag0
writer_running w2 || fail "the writer stopped before the kill"
kill9_agent pri
wait_writer_exit w2
[ "$(writer_sum w2 error)" != null ] || fail "the writer saw no error when the primary died"
issued=$(writer_sum w2 bytes_issued)
apart=$((issued - (b0 - bw_start) + lag0))
log "killed with $lag0 bytes of lag; $((issued - (b0 - bw_start))) bytes issued after the last status"
proxy_cmd px throttle 0 >/dev/null
after_restart "async-lagging-kill" "$apart"
