#!/bin/bash
# Link outages under a write load, in both modes: the link proxy cuts the
# link (and, in sync mode, also stalls it, so that only --peer-timeout gets
# the primary going again).  The primary keeps answering writes while the
# secondary is unreachable, and after the link is back it resyncs only what
# was written meanwhile: each round ends byte-identical, with resync bytes
# <= 2 x the bytes written while apart and the decision "source-bitmap".
#
# Bytes written while apart = bytes_written when the link was restored and
# seen connected - bytes_written just before the outage + the replication
# lag just before the outage (what the secondary had not acknowledged yet).
source "$(dirname "$0")/functions.sh"
requires_python_nbd

PEER_TIMEOUT=3
APART=$((16 << 20))             # bytes written while the link is down
MiB=$((1 << 20))

truncate -s 256M primary.img
PAIR_PROXY=1 start_outage_pair sync --peer-timeout "$PEER_TIMEOUT"
wait_in_sync pri sec

# round MODE HOW: one outage (HOW: cut or stall) under a write load.
round=0
outage_round() {
    local mode=$1 how=$2 label b0 lag0 b1 lag1 s sent decision apart t_out \
        lat
    round=$((round + 1))
    label="$mode-$how"
    start_writer "w$round" --seed "$round"
    pri_snapshot b0 lag0
    wait_written $((b0 + 2 * MiB))

    pri_snapshot b0 lag0
    proxy_cmd px "$how" >/dev/null
    t_out=$(now_ms)
    wait_until -t $((PEER_TIMEOUT + 15)) -m "$label: primary notices the outage" \
        '[ "$(status_field pri connection)" = connecting ]'
    log "$label: primary connecting $(( $(now_ms) - t_out )) ms after the $how"
    # It keeps serving: the writer goes on while the link is down.
    wait_written $((b0 + APART))
    writer_running "w$round" || fail "$label: writer stopped during the outage"
    [ "$(status_field pri connection)" = connecting ] ||
        fail "$label: primary reconnected during the $how"

    proxy_cmd px restore >/dev/null
    wait_connected "$label"
    pri_snapshot b1 lag1
    stop_writer "w$round"
    lat=$(writer_sum "w$round" max_latency_s)
    wait_resync "$label" "$CONNECTED_MS"

    s=$(status_json pri)
    sent=$(jq -r .resync_bytes_sent <<<"$s")
    decision=$(jq -r .sync_decision <<<"$s")
    apart=$((b1 - b0 + lag0))
    compare_volumes primary.img replica.img
    check_resync_ratio "$label" "$apart" "$sent" \
        "resync_bytes_total=$(jq -r .resync_bytes_total <<<"$s")" \
        "resync_data_bytes_sent=$(jq -r .resync_data_bytes_sent <<<"$s")" \
        "resync_zero_bytes_sent=$(jq -r .resync_zero_bytes_sent <<<"$s")" \
        "sync_decision=$decision max_write_latency_s=$lat"
    [ "$decision" = source-bitmap ] ||
        fail "$label: sync_decision is '$decision', expected source-bitmap"
    # The bitmap covers what was written apart: the resync cannot be less
    # than the distinct blocks written (random 4 KiB blocks in 256 MiB
    # rarely repeat), so a tiny resync would mean lost blocks; cmp above
    # has the final word, this only makes the figure plausible.
    [ "$sent" -ge $((APART / 2)) ] ||
        fail "$label: resync sent only $sent bytes after $apart bytes written apart"
    # In sync mode a write waits for the secondary at most --peer-timeout
    # (plus scheduling slack) before it is answered locally.
    if [ "$mode" = sync ]; then
        awk -v l="$lat" -v t="$PEER_TIMEOUT" -v k="$SLOW" \
            'BEGIN { exit !(l <= t + 3 * k) }' ||
            fail "$label: a write waited $lat s (peer timeout $PEER_TIMEOUT s)"
    fi
}

outage_round sync cut
outage_round sync stall

# The same pair in async mode: a clean restart of the primary.
stop_agent pri || fail "primary did not stop cleanly"
PAIR_MODE=async
restart_primary
wait_in_sync pri
outage_round async cut
