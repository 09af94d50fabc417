#!/bin/bash
# demo.sh: install the packages, build duplex (Release, in build/), and run a
# replicating pair on loopback: fresh self-signed certificates, two sparse
# 256 MiB image files, a secondary and a sync-mode primary, data written
# through NBD with nbdcopy, status of both agents, and a byte comparison of
# the two volumes.  Everything lives in a temporary directory that is
# removed at the end (DUPLEX_KEEP=1 keeps it).  DUPLEX_SKIP_DEPS=1 skips the
# package step; DUPLEX_MODE=async runs the primary in async mode.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
mode=${DUPLEX_MODE:-sync}
step() { printf '\n==> %s\n' "$*"; }

if [ -z "${DUPLEX_SKIP_DEPS:-}" ]; then
    step "installing packages"
    "$src/deploy/install-deps.sh"
fi

step "building (Release) in $src/build"
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DDUPLEX_WERROR=OFF \
    -DDUPLEX_SANITIZE=OFF >/dev/null
cmake --build "$src/build" -j "$(nproc)" >/dev/null
bin=$src/build

work=$(mktemp -d /tmp/duplex-demo.XXXXXX)
sec_pid= pri_pid=
# stop NAME PID: SIGTERM, then wait up to 5 s.
stop() {
    local name=$1 pid=$2 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $name did not stop within 5 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    stop primary "$pri_pid"
    stop secondary "$sec_pid"
    if [ "$rc" -ne 0 ]; then
        for f in "$work"/*.log; do
            [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }
        done >&2
    fi
    if [ -n "${DUPLEX_KEEP:-}" ]; then
        echo "demo: files kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local secs=$1 what=$2 end
    shift 2
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || { echo "demo: timed out waiting for $what" >&2; exit 1; }
        sleep 0.1
    done
}
status_is() { # status_is CTL JQ-CONDITION
    "$bin/duplexctl" --control "$1" status --json | jq -e "$2"
}

step "certificates (fresh CA, 'primary' and 'secondary') in $work/certs"
"$src/deploy/duplex-certs.sh" "$work/certs" primary secondary
certs=$work/certs

step "two sparse 256 MiB volumes"
truncate -s 256M "$work/primary.img"
ls -ls "$work/primary.img"

step "starting duplex-secondary (replica $work/replica.img, TLS on 127.0.0.1, port chosen by the agent)"
"$bin/duplex-secondary" --volume "$work/replica.img" --meta "$work/replica.meta" \
    --listen 127.0.0.1:0 --tls-cert "$certs/secondary.pem" \
    --tls-key "$certs/secondary.key" --tls-ca "$certs/ca.pem" --peer-name primary \
    --control "$work/secondary.ctl" --pidfile "$work/secondary.pid" --foreground \
    >"$work/secondary.log" 2>&1 </dev/null &
sec_pid=$!
wait_for 30 "the secondary's pidfile" test -s "$work/secondary.pid.port"
port=$(cat "$work/secondary.pid.port")
echo "secondary pid $sec_pid listening on 127.0.0.1:$port"

step "starting duplex-primary ($mode mode, NBD on unix:$work/nbd.sock)"
"$bin/duplex-primary" --volume "$work/primary.img" --meta "$work/primary.meta" \
    --nbd "unix:$work/nbd.sock" --peer "127.0.0.1:$port" --mode "$mode" \
    --tls-cert "$certs/primary.pem" --tls-key "$certs/primary.key" \
    --tls-ca "$certs/ca.pem" --peer-name secondary \
    --control "$work/primary.ctl" --pidfile "$work/primary.pid" --foreground \
    >"$work/primary.log" 2>&1 </dev/null &
pri_pid=$!
wait_for 30 "the primary's pidfile" test -s "$work/primary.pid"
echo "primary pid $pri_pid"
wait_for 120 "the initial sync" status_is "$work/primary.ctl" \
    '.connection == "connected" and .sync == "in-sync"'
echo "connected over TLS, initial sync done"

step "writing 256 MiB (random data and zero regions) through NBD with nbdcopy"
/usr/bin/python3 - "$work/data.img" <<'PY'
import os, sys
MiB = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(256 * MiB)
    for i in range(0, 256, 4):       # 2 MiB of data in every 4 MiB
        f.seek(i * MiB)
        f.write(os.urandom(2 * MiB))
PY
uri="nbd+unix:///?socket=$work/nbd.sock"
nbdinfo "$uri" | sed -n '1,6p'
t0=$(date +%s.%N)
nbdcopy --flush "$work/data.img" "$uri"
echo "nbdcopy: 256 MiB copied and flushed in $(awk -v a="$t0" -v b="$(date +%s.%N)" \
    'BEGIN { printf "%.2f", b - a }') s"

step "waiting until status says in sync"
wait_for 120 "the replica to catch up" status_is "$work/primary.ctl" \
    '.sync == "in-sync" and .replication_lag_bytes == 0 and .out_of_sync_bytes == 0'

step "status of the primary"
"$bin/duplexctl" --control "$work/primary.ctl" status
step "status of the secondary"
"$bin/duplexctl" --control "$work/secondary.ctl" status

step "comparing the volumes"
if cmp "$work/primary.img" "$work/replica.img" && cmp -s "$work/data.img" "$work/primary.img"; then
    echo "replica is byte-identical to the primary ($(stat -c %s "$work/replica.img") bytes)"
else
    echo "demo: the replica differs from the primary" >&2
    exit 1
fi

step "stopping both agents (SIGTERM)"
stop primary "$pri_pid"; pri_pid=
stop secondary "$sec_pid"; sec_pid=
echo "stopped; demo finished"
