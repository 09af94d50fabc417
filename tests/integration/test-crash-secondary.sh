#!/bin/bash
# kill -9 of the secondary under a write load, in both modes: the primary
# keeps answering writes, the secondary is restarted on the same replica,
# metadata and port, and only what it missed is sent again: resync bytes
# <= 2 x the bytes written while it was away, decision "source-bitmap",
# volumes byte-identical.
#
# Bytes written while apart = bytes_written when the restarted secondary is
# seen connected - bytes_written just before the kill + the replication lag
# just before the kill (what the secondary had not acknowledged).
source "$(dirname "$0")/functions.sh"
requires_python_nbd

PEER_TIMEOUT=3
APART=$((16 << 20))
MiB=$((1 << 20))

truncate -s 256M primary.img
start_outage_pair sync --peer-timeout "$PEER_TIMEOUT"
wait_in_sync pri sec

round=0
crash_round() {
    local mode=$1 label="$1-secondary-kill9" b0 lag0 b1 lag1 s sent decision \
        apart
    round=$((round + 1))
    start_writer "w$round" --seed "$((20 + round))"
    pri_snapshot b0 lag0
    wait_written $((b0 + 2 * MiB))

    pri_snapshot b0 lag0
    kill9_agent sec
    wait_until -t $((PEER_TIMEOUT + 15)) -m "$label: primary notices" \
        '[ "$(status_field pri connection)" = connecting ]'
    wait_written $((b0 + APART))
    writer_running "w$round" || fail "$label: writer stopped without the secondary"

    restart_secondary
    wait_connected "$label"
    pri_snapshot b1 lag1
    stop_writer "w$round"
    wait_resync "$label" "$CONNECTED_MS"
    wait_in_sync sec

    s=$(status_json pri)
    sent=$(jq -r .resync_bytes_sent <<<"$s")
    decision=$(jq -r .sync_decision <<<"$s")
    apart=$((b1 - b0 + lag0))
    compare_volumes primary.img replica.img
    check_resync_ratio "$label" "$apart" "$sent" \
        "lag_at_kill=$lag0 resync_bytes_total=$(jq -r .resync_bytes_total <<<"$s")" \
        "resync_data_bytes_sent=$(jq -r .resync_data_bytes_sent <<<"$s")" \
        "resync_zero_bytes_sent=$(jq -r .resync_zero_bytes_sent <<<"$s")" \
        "sync_decision=$decision"
    [ "$decision" = source-bitmap ] ||
        fail "$label: sync_decision is '$decision', expected source-bitmap"
    [ "$sent" -ge $((APART / 2)) ] ||
        fail "$label: resync sent only $sent bytes after $apart bytes written apart"
}

crash_round sync

stop_agent pri || fail "primary did not stop cleanly"
PAIR_MODE=async
restart_primary
wait_in_sync pri
crash_round async
