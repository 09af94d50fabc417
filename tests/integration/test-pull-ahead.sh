#!/bin/bash
# Congestion policy in async mode, through a throttled link proxy.
#   1. --on-congestion pull-ahead, --async-buffer 2M, link throttled to
#      500 kB/s: a client writing 64 MiB is not held to the link's pace (it
#      would need 128 s); status shows congestion "ahead" during the write
#      and counts pull_ahead_events; once unthrottled the pair converges to
#      byte-identical volumes.
#   2. Control run, the default --on-congestion block: while throttled the
#      client waits and status shows congestion "blocked"; unthrottled, it
#      finishes and the pair converges.
source "$(dirname "$0")/functions.sh"
requires nbdcopy

MiB=$((1024 * 1024))
THROTTLE=500000
WRITE_MIB=64

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

# watch_write PID OUT: poll the primary's status every 0.1 s while PID
# runs; record the congestion states seen, one per line, in OUT.  Returns
# PID's exit status.
watch_write() {
    local pid=$1 out=$2 c
    : >"$out"
    while _alive "$pid"; do
        c=$(status_json pri | jq -r .congestion) || fail "status of pri failed"
        echo "$c" >>"$out"
        sleep 0.1
    done
    wait "$pid"
}

truncate -s 128M primary.img
head -c $((WRITE_MIB * MiB)) /dev/urandom >data1.bin
head -c $((8 * MiB)) /dev/urandom >data2.bin

PAIR_PROXY=1 start_pair async --async-buffer 2M --on-congestion pull-ahead
wait_in_sync pri sec
[ "$(status_field pri on_congestion)" = pull-ahead ] ||
    fail "on_congestion is $(status_field pri on_congestion), not pull-ahead"
[ "$(status_field pri congestion)" = none ] ||
    fail "congestion is $(status_field pri congestion) on an idle pair"

# ---- 1. pull-ahead ----

proxy_cmd px throttle "$THROTTLE" >/dev/null
t0=$(now)
nbdcopy data1.bin "$NBD_URI" &
copy_pid=$!
cleanup_fn kill_quiet "$copy_pid"
watch_write "$copy_pid" congestion1.txt || fail "nbdcopy of $WRITE_MIB MiB failed"
t1=$(now)
secs=$(elapsed "$t0" "$t1")
s=$(status_json pri)
events=$(jq -r .pull_ahead_events <<<"$s")
seen=$(sort -u congestion1.txt | paste -sd,)
log "pull-ahead: $WRITE_MIB MiB written in $secs s through a $THROTTLE B/s link; congestion seen: $seen; $(jq -c '{congestion, pull_ahead_events, out_of_sync_bytes, replication_lag_bytes, sync}' <<<"$s")"
awk -v s="$secs" 'BEGIN {exit !(s < 40)}' ||
    fail "the client was held to the link's pace: $WRITE_MIB MiB took $secs s (>= 40 s) with pull-ahead"
grep -qx ahead congestion1.txt || [ "$(jq -r .congestion <<<"$s")" = ahead ] ||
    fail "congestion never showed \"ahead\" during the write (seen: $seen)"
[ "$events" -gt 0 ] || fail "pull_ahead_events is $events after writing faster than the link"
grep -qx blocked congestion1.txt &&
    log "note: congestion also showed \"blocked\" during the pull-ahead run"
bytes_up_throttled=$(proxy_status px bytes_up)

proxy_cmd px throttle 0 >/dev/null
t2=$(now)
wait_in_sync pri sec
t3=$(now)
compare_volumes primary.img replica.img
s=$(status_json pri)
[ "$(jq -r .congestion <<<"$s")" = none ] ||
    fail "congestion is $(jq -r .congestion <<<"$s") after the pair converged"
fig1="pull-ahead: ${WRITE_MIB} MiB in ${secs} s (link ${THROTTLE} B/s would need $((WRITE_MIB * MiB / THROTTLE)) s), pull_ahead_events=$events, congestion seen=$seen, proxy bytes_up while throttled=$bytes_up_throttled, converged $(elapsed "$t2" "$t3") s after unthrottling, last resync_bytes_sent=$(jq -r .resync_bytes_sent <<<"$s")"

# ---- 2. control run: block ----

stop_agent pri || fail "primary did not stop cleanly"
PRI=pri
start_primary pri --volume "$TESTDIR/primary.img" \
    --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/pri.sock" \
    --peer "127.0.0.1:$PROXY_PORT" --mode async --async-buffer 2M \
    --on-congestion block \
    --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name secondary
wait_in_sync pri sec
[ "$(status_field pri on_congestion)" = block ] ||
    fail "on_congestion is $(status_field pri on_congestion), not block"
events0=$(status_field pri pull_ahead_events)

proxy_cmd px throttle "$THROTTLE" >/dev/null
t0=$(now)
nbdcopy data2.bin "$NBD_URI" &
copy_pid=$!
cleanup_fn kill_quiet "$copy_pid"
wait_until -t 60 -m "congestion blocked while the link is throttled" \
    '[ "$(status_field pri congestion)" = blocked ]'
tb=$(now)
_alive "$copy_pid" || fail "the client finished 8 MiB through a $THROTTLE B/s link without waiting"
log "block: congestion \"blocked\" after $(elapsed "$t0" "$tb") s; $(status_json pri | jq -c '{congestion, replication_lag_bytes, async_buffer_bytes}')"
lag=$(status_field pri replication_lag_bytes)
[ "$lag" -le $((2 * MiB)) ] || fail "replication lag $lag exceeds the 2 MiB async buffer while blocked"
proxy_cmd px throttle 0 >/dev/null
wait "$copy_pid" || fail "nbdcopy of 8 MiB failed in the block run"
t1=$(now)
wait_in_sync pri sec
compare_volumes primary.img replica.img
events1=$(status_field pri pull_ahead_events)
[ "$events1" = "$events0" ] || fail "pull_ahead_events grew ($events0 -> $events1) with --on-congestion block"
[ "$(status_field pri congestion)" = none ] ||
    fail "congestion is $(status_field pri congestion) after the pair converged"

echo "FIGURES: $fig1; block: blocked after $(elapsed "$t0" "$tb") s, 8 MiB took $(elapsed "$t0" "$t1") s"
