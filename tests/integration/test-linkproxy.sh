#!/bin/bash
# The test link proxy itself (tests/tools/linkproxy.py and the start_proxy /
# proxy_cmd / proxy_status helpers), with a small echo server behind it
# instead of the agents: bytes flow both ways; cut resets the open
# connections and closes new ones at once; restore reopens the link; stall
# holds bytes (a short read gets nothing) and restore delivers them; throttle
# limits the rate, summed over connections (measured, not assumed); the
# status counters add up; quit and SIGTERM end it cleanly.
source "$(dirname "$0")/functions.sh"

# ---- an echo server and a bulk client ----

cat >echo.py <<'PY'
import os, socket, sys, threading
srv = socket.create_server(("127.0.0.1", 0))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d\n" % srv.getsockname()[1])
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return  # half-close from the client: close our side too
            c.sendall(d)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY

# bulk.py PORT NBYTES CONNECTIONS: send NBYTES of random data, split over
# CONNECTIONS concurrent connections, check every byte comes back, print
# the seconds it took.
cat >bulk.py <<'PY'
import os, socket, sys, threading, time
port, total, nconn = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
errors = []
def one(n):
    try:
        data = os.urandom(n)
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
        sender.join()
        s.close()
        if bytes(got) != data:
            errors.append("got %d bytes back of %d, %s" % (
                len(got), n, "a prefix" if data.startswith(bytes(got)) else "different"))
    except OSError as e:
        errors.append(str(e))
start = time.monotonic()
ts = [threading.Thread(target=one, args=(total // nconn,)) for _ in range(nconn)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit("bulk: " + "; ".join(errors))
print("%.3f" % (time.monotonic() - start))
PY

rm -f echo.port
"$PYTHON" echo.py echo.port >echo.log 2>&1 </dev/null &
echo_pid=$!
cleanup_fn kill_quiet "$echo_pid"
wait_until -t 10 -m "echo server ready" '[ -s echo.port ]'
ECHO_PORT=$(cat echo.port)

start_proxy px "$ECHO_PORT"
[ "$PROXY_PORT" = "$px_port" ] || fail "PROXY_PORT $PROXY_PORT != px_port $px_port"
[ "$(cat px.pid)" = "$(proxy_pid px)" ] || fail "px.pid does not hold the proxy's pid"

# Expected counters, updated as the test goes.
sent=0      # bytes through the proxy each way (the echo returns them all)
accepted=0
refused=0

# expect_echo FD STRING: STRING comes back on FD within 5 s.
expect_echo() {
    local got
    read -r -t $((5 * SLOW)) -N "${#2}" got <&"$1" ||
        fail "no echo of '$2' through the proxy"
    [ "$got" = "$2" ] || fail "echo: sent '$2', got '$got'"
}
# expect_closed FD: the connection on FD is closed (EOF or reset) within 5 s.
expect_closed() {
    local got rc=0
    read -r -t $((5 * SLOW)) -N 1 got <&"$1" 2>/dev/null || rc=$?
    [ "$rc" -le 128 ] || fail "connection still open 5 s after the cut"
    [ "$rc" -ne 0 ] || fail "read '$got' from a connection that should be closed"
}
# expect_nothing FD: nothing arrives on FD within 0.5 s.
expect_nothing() {
    local got rc=0
    read -r -t 0.5 -N 1 got <&"$1" || rc=$?
    [ "$rc" -gt 128 ] || fail "the stalled link delivered '$got' (read status $rc)"
}

# ---- normal forwarding ----

exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT"
accepted=$((accepted + 1))
printf hello >&3; sent=$((sent + 5))
expect_echo 3 hello
[ "$(proxy_status px state)" = normal ] || fail "state is not normal at start"
[ "$(proxy_status px connections)" = 1 ] || fail "one connection expected: $(proxy_status px)"

t=$("$PYTHON" bulk.py "$PROXY_PORT" $((8 << 20)) 4) || fail "8 MiB over 4 connections did not echo intact"
sent=$((sent + (8 << 20))); accepted=$((accepted + 4))
log "8 MiB echoed over 4 connections in $t s"

# ---- cut ----

out=$(proxy_cmd px cut)
log "cut: $out"
expect_closed 3
exec 3<&-
wait_proxy px connections 0
[ "$(proxy_status px state)" = cut ] || fail "state is not cut"
# A new connection is accepted, then closed at once.
exec 4<>"/dev/tcp/127.0.0.1/$PROXY_PORT"
accepted=$((accepted + 1)); refused=$((refused + 1))
(printf lost >&4) 2>/dev/null || true   # a subshell: SIGPIPE stays there
expect_closed 4
exec 4<&-
if "$PYTHON" bulk.py "$PROXY_PORT" 1000 1 2>/dev/null; then
    fail "bytes echoed through a cut link"
fi
accepted=$((accepted + 1)); refused=$((refused + 1))

# ---- restore ----

proxy_cmd px restore >/dev/null
exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT"
accepted=$((accepted + 1))
printf again >&3; sent=$((sent + 5))
expect_echo 3 again

# ---- stall ----

proxy_cmd px stall >/dev/null
[ "$(proxy_status px state)" = stalled ] || fail "state is not stalled"
printf held >&3; sent=$((sent + 4))
expect_nothing 3
# A new connection during the stall is accepted and held too.
exec 4<>"/dev/tcp/127.0.0.1/$PROXY_PORT"
accepted=$((accepted + 1))
printf new >&4; sent=$((sent + 3))
expect_nothing 4
wait_proxy px connections 2
[ "$(proxy_status px bytes_up)" = $((sent - 7)) ] ||
    fail "bytes forwarded during the stall: $(proxy_status px)"
proxy_cmd px restore >/dev/null
expect_echo 3 held
expect_echo 4 new
exec 4<&-

# A stalled link can be cut: the held connection is reset.
proxy_cmd px stall >/dev/null
printf gone >&3
expect_nothing 3
proxy_cmd px cut >/dev/null
expect_closed 3
exec 3<&-
wait_proxy px connections 0
proxy_cmd px restore >/dev/null

# ---- throttle ----

proxy_cmd px throttle 100000 >/dev/null
[ "$(proxy_status px throttle)" = 100000 ] || fail "throttle not in status"
t=$("$PYTHON" bulk.py "$PROXY_PORT" 300000 1) || fail "300 kB throttled did not echo intact"
sent=$((sent + 300000)); accepted=$((accepted + 1))
log "300 kB at 100000 B/s, one connection: $t s"
awk -v t="$t" 'BEGIN { exit !(t >= 2.0) }' || fail "300 kB at 100000 B/s took only $t s"
awk -v t="$t" -v s="$SLOW" 'BEGIN { exit !(t < 15 * s) }' || fail "300 kB at 100000 B/s took $t s"
# The limit is summed over connections.
t=$("$PYTHON" bulk.py "$PROXY_PORT" 300000 3) || fail "300 kB throttled over 3 connections did not echo intact"
sent=$((sent + 300000)); accepted=$((accepted + 3))
log "300 kB at 100000 B/s, three connections: $t s"
awk -v t="$t" 'BEGIN { exit !(t >= 2.0) }' ||
    fail "300 kB at 100000 B/s over 3 connections took only $t s (limit per connection?)"
# The limit goes away with throttle 0.
proxy_cmd px throttle 0 >/dev/null
t=$("$PYTHON" bulk.py "$PROXY_PORT" $((4 << 20)) 1) || fail "4 MiB unthrottled did not echo intact"
sent=$((sent + (4 << 20))); accepted=$((accepted + 1))
log "4 MiB unthrottled: $t s"
awk -v t="$t" 'BEGIN { exit !(t < 4.0) }' || fail "4 MiB still slow after throttle 0: $t s"

# ---- errors and counters ----

if (proxy_cmd px bogus) 2>/dev/null; then fail "proxy_cmd accepted an unknown command"; fi
if (proxy_cmd px throttle fast) 2>/dev/null; then fail "proxy_cmd accepted throttle fast"; fi
wait_proxy px connections 0
st=$(proxy_status px)
log "status: $st"
jq -e --argjson sent "$sent" --argjson acc "$accepted" --argjson ref "$refused" \
    '.state == "normal" and .connections == 0 and .bytes_up == $sent and
     .bytes_down == $sent and .accepted == $acc and .refused == $ref and
     .throttle == 0' <<<"$st" >/dev/null ||
    fail "status $st, expected $sent bytes each way, $accepted accepted, $refused refused"

# ---- quit, SIGTERM, an unreachable target ----

port=$("$PYTHON" -c 'import socket; s = socket.create_server(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_proxy px2 "$port"     # nothing listens there any more
exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT"
expect_closed 3
exec 3<&-
proxy_cmd px2 quit >/dev/null
wait_until -t 10 -m "proxy px2 exits after quit" '! proxy_alive px2'
[ ! -e px2.ctl ] || fail "px2 left its control socket behind"
stop_proxy px2 || fail "proxy px2 did not exit cleanly after quit"
stop_proxy px || fail "proxy px did not exit cleanly on SIGTERM"
