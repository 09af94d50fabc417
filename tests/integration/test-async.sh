#!/bin/bash
# Async mode (--async-buffer 16M):
#  1. writes are answered while the secondary cannot acknowledge them (it is
#     stopped with SIGSTOP) and the lag shows in status;
#  2. with the buffer full, further writes wait until the secondary catches
#     up: no more than the buffer is answered meanwhile;
#  3. during a 256 MiB write burst status shows a non-zero lag, never more
#     than the buffer; after a flush the replica converges byte-identical.
source "$(dirname "$0")/functions.sh"
requires nbdcopy
requires_python_nbd

buf=$((16 * 1024 * 1024))
truncate -s 256M primary.img
start_pair async --async-buffer 16M
wait_in_sync pri sec
[ "$(status_field pri mode)" = async ] || fail "pri mode is not async"

sec_pid=$(agent_pid sec)
cleanup_fn kill_quiet_sig CONT "$sec_pid"

kill -STOP "$sec_pid"
nbd_python "$NBD_SOCK" "$TESTDIR/pri.ctl" "$DUPLEXCTL" "$buf" "$sec_pid" <<'PY' ||
import json, os, signal, subprocess, sys, time
import nbd

sock, ctl, duplexctl, buf, sec_pid = sys.argv[1:6]
buf, sec_pid = int(buf), int(sec_pid)
MiB = 1 << 20
W = 2 * MiB

def status():
    out = subprocess.run([duplexctl, "--control", ctl, "status", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)

h = nbd.NBD()
h.connect_unix(sock)

# 1. Answered although the secondary acknowledges nothing.
t = time.monotonic()
for i in range(4):
    h.pwrite(os.urandom(W), i * W)
print(f"4 x 2 MiB answered in {time.monotonic() - t:.3f} s, secondary stopped")
lag = status()["replication_lag_bytes"]
print(f"replication_lag_bytes with the secondary stopped: {lag}")
if lag <= 0:
    sys.exit(f"FAIL: replication_lag_bytes is {lag} with 8 MiB unacknowledged")

# 2. 12 more writes: the buffer (16 MiB = 8 writes) cannot take them all.
bufs = [nbd.Buffer.from_bytearray(os.urandom(W)) for _ in range(12)]
cookies = [h.aio_pwrite(b, (4 + i) * W) for i, b in enumerate(bufs)]
done = set()
max_lag = lag
deadline = time.monotonic() + 1.5
while time.monotonic() < deadline:
    h.poll(20)
    for c in cookies:
        if c not in done and h.aio_command_completed(c):
            done.add(c)
    max_lag = max(max_lag, status()["replication_lag_bytes"])
st = status()
if st["connection"] != "connected":
    sys.exit(f"FAIL: the link dropped while the secondary was stopped for 2 s "
             f"(connection {st['connection']!r}); cannot judge the buffer bound")
answered = (4 + len(done)) * W
print(f"with the secondary stopped: {answered // MiB} MiB answered, "
      f"max replication_lag_bytes {max_lag}")
if answered > buf:
    sys.exit(f"FAIL: {answered} bytes answered with the secondary stopped, "
             f"more than --async-buffer {buf}")
if max_lag > buf:
    sys.exit(f"FAIL: replication_lag_bytes {max_lag} > --async-buffer {buf}")

os.kill(sec_pid, signal.SIGCONT)
deadline = time.monotonic() + 60
while len(done) < len(cookies):
    if time.monotonic() > deadline:
        sys.exit(f"FAIL: {len(cookies) - len(done)} writes still unanswered "
                 f"60 s after the secondary resumed")
    h.poll(100)
    for c in cookies:
        if c not in done and h.aio_command_completed(c):
            done.add(c)
print("all blocked writes answered after the secondary resumed")
h.flush()
h.shutdown()
PY
    fail "async buffer behaviour is wrong"
kill -CONT "$sec_pid"
wait_in_sync pri sec
compare_volumes primary.img replica.img

# 3. A burst: sample the lag while nbdcopy writes 256 MiB of random data.
head -c 256M /dev/urandom >src.img
(
    while [ ! -e burst.done ]; do
        "$DUPLEXCTL" --control "$TESTDIR/pri.ctl" status --json 2>/dev/null |
            jq -r '.replication_lag_bytes' 2>/dev/null || true
    done >lag.txt
) &
sampler=$!
cleanup_fn kill_quiet "$sampler"
timeout $((120 * SLOW)) nbdcopy --flush src.img "$NBD_URI" ||
    fail "nbdcopy into the primary failed"
touch burst.done
wait "$sampler"
samples=$(grep -c . lag.txt || true)
max=$(sort -n lag.txt | tail -n 1)
nonzero=$(awk '$1 > 0' lag.txt | wc -l)
log "burst: $samples status samples, $nonzero with non-zero lag, max lag ${max:-none} bytes"
[ "$samples" -gt 0 ] || fail "no status sample during the burst"
[ "$nonzero" -gt 0 ] || fail "replication_lag_bytes never non-zero during a 256 MiB async burst"
[ "$max" -le "$buf" ] || fail "replication_lag_bytes reached $max > --async-buffer $buf"

wait_in_sync pri sec
compare_volumes src.img primary.img
compare_volumes primary.img replica.img
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
compare_volumes primary.img replica.img
