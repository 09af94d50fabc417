#!/bin/bash
# Both sides agree on when the link is dead: the secondary adopts the
# primary's --peer-timeout from its hello, and from HELLO on both sides
# send heartbeats, so a phase in which only one side has something to say
# (the bitmap exchange after `resolve --discard-local`) does not look like
# a dead peer to the other.
#
#   1. --peer-timeout 2: the secondary says so in its log.
#   2. Idle for three timeouts: neither side drops the link.
#   3. The link stalls (linkproxy: nothing forwarded, connections open):
#      both sides drop it after about 2 s, not the secondary after 10 s.
#   4. The link is throttled to 16 KiB/s (a TLS record a second) and the
#      secondary's changes are discarded: its 256 KiB bitmap takes ~16 s to
#      reach the primary, during which only heartbeats go the other way.  The pair connects and ends
#      in sync (a secondary that heard nothing for 10 s dropped the link in
#      the middle of every attempt).
source "$(dirname "$0")/functions.sh"
requires_python_nbd

TIMEOUT_S=2
truncate -s 8G primary.img
PAIR_PROXY=1 start_pair sync --peer-timeout "$TIMEOUT_S"
wait_in_sync pri sec

# ---- 1 ----
grep -q "peer timeout $((TIMEOUT_S * 1000)) ms (from its hello)" sec.log ||
    fail "the secondary did not log the primary's peer timeout"

# ---- 2 ----
c0=$(status_field pri connects)
t_end=$((SECONDS + 3 * TIMEOUT_S))
wait_until -t 30 -m "idle for $((3 * TIMEOUT_S)) s" \
    "[ \"\$(status_field pri connection)\" = connected ] &&
     [ \"\$(status_field sec connection)\" = connected ] &&
     [ \"\$(status_field pri connects)\" = $c0 ] &&
     [ \$SECONDS -ge $t_end ]"
grep -q "nothing received" sec.log && fail "the secondary dropped an idle link"

# ---- 3 ----
proxy_cmd px stall >/dev/null
t0=$(now_ms)
wait_until -t 30 -m "both sides drop the stalled link" \
    "[ \"\$(status_field pri connection)\" != connected ] &&
     [ \"\$(status_field sec connection)\" != connected ]"
ms=$(($(now_ms) - t0))
echo "FIGURES: $TEST_NAME stalled link dropped by both sides after $ms ms (peer timeout $((TIMEOUT_S * 1000)) ms)"
grep -q "nothing received for $((TIMEOUT_S * 1000)) ms" sec.log ||
    fail "the secondary did not time out after the primary's $TIMEOUT_S s"
[ "$ms" -le $(((TIMEOUT_S * 1000 + 2000) * SLOW)) ] ||
    fail "the stalled link was dropped after $ms ms, timeout $TIMEOUT_S s"
proxy_cmd px restore >/dev/null
wait_in_sync pri sec

# ---- 4 ----
# 8 GiB at 4 KiB per bit: a 256 KiB bitmap.
proxy_cmd px throttle 16384 >/dev/null
c0=$(status_field pri connects)
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" resolve --discard-local ||
    fail "resolve --discard-local failed"
t0=$(now_ms)
wait_until -t 120 -m "connected again after the throttled bitmap exchange" \
    "[ \"\$(status_field pri connects)\" -gt $c0 ]"
ms=$(($(now_ms) - t0))
echo "FIGURES: $TEST_NAME bitmap exchange at 16 KiB/s: connected after $ms ms"
[ "$ms" -ge 8000 ] || fail "the bitmap exchange took only $ms ms: the throttle did not hold it back, nothing was tested"
n=$(grep -c "nothing received" sec.log || true)
[ "$n" -eq 1 ] || fail "the secondary timed out $n times (once expected, the stall)"
proxy_cmd px throttle 0 >/dev/null
wait_in_sync pri sec
compare_volumes primary.img replica.img
