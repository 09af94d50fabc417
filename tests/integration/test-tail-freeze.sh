#!/bin/bash
# Issue 11: a consistency point never leaves the file system frozen.
#
# ext4 on a loop device, tailed with hooks and a 2 s --freeze-timeout, the
# link to the secondary through a proxy that can stall it.  Each case must
# end with the file system writable (a synchronous write completes within
# 2 s) and the command reporting why the point failed:
#   1. the pre-hook fails: no freeze, the post-hook does not run;
#   2. the post-hook fails: the point is reported failed, thawed;
#   3. the link stalls while draining: the time limit aborts the point;
#   4. the agent is killed with SIGKILL while the file system is frozen
#      (--freeze-timeout 30): its watchdog thaws at once, long before the
#      limit;
#   5. the agent is stopped (SIGTERM) while frozen: thawed as it stops.
# And a point that works, before and after, for comparison.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/fs-functions.sh"
source "$(dirname "$0")/tail-functions.sh"
requires_tail
requires fsfreeze

make_device 64
cat >hook.sh <<EOF
#!/bin/bash
echo "\$1 \$DUPLEX_POINT" >>"$TESTDIR/hooks.log"
[ -e "$TESTDIR/fail-\$1" ] && exit \$(cat "$TESTDIR/fail-\$1")
exit 0
EOF
chmod +x hook.sh
hooks=(--pre-hook "$TESTDIR/hook.sh pre" --post-hook "$TESTDIR/hook.sh post")

start_tail_secondary
start_proxy px "$sec_port"
sec_port=$PROXY_PORT
start_tail_primary --freeze-timeout 2 "${hooks[@]}"
wait_status pri connection connected
wait_tracing

# writable: a synchronous write to the file system completes within 2 s
# (a frozen ext4 blocks it).
writable() {
    local t0=$SECONDS
    timeout 2 dd if=/dev/urandom of="$MNT/probe" bs=4k count=1 oflag=sync \
        status=none 2>/dev/null ||
        fail "$1: the file system is not writable (frozen?) after $((SECONDS - t0)) s"
}

# point NAME: snapshot create --freeze; sets OUT and RC.
point() {
    OUT=$("$DUPLEXCTL" --control pri.ctl snapshot create --freeze "$MNT" --name "$1" 2>&1) &&
        RC=0 || RC=$?
    log "point $1: rc $RC: $OUT"
}

point ok-before
[ "$RC" = 0 ] || fail "a plain point failed: $OUT"
grep -q "^pre ok-before$" hooks.log && grep -q "^post ok-before$" hooks.log ||
    fail "the hooks did not run with DUPLEX_POINT: $(cat hooks.log)"
writable ok-before

# ---- 1. the pre-hook fails ----
echo 3 >fail-pre
point pre-fails
rm -f fail-pre
[ "$RC" != 0 ] || fail "the point succeeded although its pre-hook failed"
grep -q 'pre-hook exited with status 3' <<<"$OUT" || fail "the reason is not given: $OUT"
! grep -q "^post pre-fails$" hooks.log || fail "the post-hook ran after a failed pre-hook"
writable pre-fails

# ---- 2. the post-hook fails ----
echo 4 >fail-post
point post-fails
rm -f fail-post
[ "$RC" != 0 ] || fail "the point succeeded although its post-hook failed"
grep -q 'post-hook exited with status 4' <<<"$OUT" || fail "the reason is not given: $OUT"
writable post-fails

# ---- 3. the link stalls: the time limit ----
echo "dirty" >"$MNT/dirty" # something to drain
proxy_cmd px stall
t0=$SECONDS
point stalled
proxy_cmd px restore
[ "$RC" != 0 ] || fail "the point succeeded over a stalled link"
grep -q 'freeze-timeout' <<<"$OUT" || fail "the reason is not the time limit: $OUT"
[ $((SECONDS - t0)) -le 6 ] || fail "the point took $((SECONDS - t0)) s with a 2 s limit"
writable stalled
st=$(status_json pri)
[ "$(jq -r .points.failed <<<"$st")" = 3 ] || fail "status counts $(jq -r .points.failed <<<"$st") failed points, not 3"
grep -q 'freeze-timeout' <<<"$(jq -r .points.last_error <<<"$st")" ||
    fail "status does not say why the last point failed: $(jq -c .points <<<"$st")"

# frozen_point NAME: a fresh agent (--freeze-timeout 30), something to
# drain, the link stalled, and a point NAME started in the background
# (ctl_pid) that is now draining with the file system frozen.
frozen_point() {
    start_tail_primary --freeze-timeout 30 "${hooks[@]}"
    wait_status pri connection connected
    wait_tracing
    echo "dirty" >"$MNT/dirty-$1"
    proxy_cmd px stall
    "$DUPLEXCTL" --control pri.ctl snapshot create --freeze "$MNT" --name "$1" \
        >"$1.out" 2>&1 &
    ctl_pid=$!
    wait_until -m "the point is draining (frozen)" \
        '[ "$(status_json pri | jq -r .points.state)" = draining ]'
}

# ---- 4. SIGKILL while frozen ----
wait_until -m "the link is back" '[ "$(status_field pri sync)" = in-sync ]'
stop_agent pri
frozen_point killed
kill9_agent pri
t0=$(now_ms)
writable killed
log "after SIGKILL of the frozen agent, writable again in $(($(now_ms) - t0)) ms"
wait "$ctl_pid" 2>/dev/null || true
proxy_cmd px restore

# ---- 5. SIGTERM while frozen ----
frozen_point stopped
stop_agent pri
writable stopped
wait "$ctl_pid" 2>/dev/null || true
proxy_cmd px restore

# ---- and a point that works again ----
start_tail_primary --freeze-timeout 2 "${hooks[@]}"
wait_status pri connection connected
wait_tracing
point ok-after
[ "$RC" = 0 ] || fail "a plain point failed after all that: $OUT"
writable ok-after
log "PASS: the file system was writable after every failure"
