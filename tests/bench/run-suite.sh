#!/bin/bash
# run-suite.sh: duplex's benchmark suite (issue 4), one command.
#
#   tests/bench/run-suite.sh [OUT.md [OUT.png]]
#
# Builds duplex in Release mode in build-release/, runs every scenario on
# loopback with TLS on the replication link, each beside the baseline a user
# would pick instead, measured in the same run, and writes the report
# (default docs/BENCHMARKS.md) and a chart of the headline ratios (default
# docs/benchmarks.png, next to the report):
#
#   1. write cost: fio's nbd engine, 4 KiB randwrite qd1 (p50/p99), 4 KiB
#      randwrite qd32 (IOPS), 1 MiB seq write qd8 (MiB/s), against nbdkit's
#      file plugin, duplex-primary without a secondary, async and sync pairs,
#      and (qd1 only) a sync pair whose replica is in RAM (/dev/shm);
#   2. initial sync of a random volume to an empty secondary, beside nbdcopy
#      into `nbdkit --tls=require file`, openssl speed and iperf3;
#   3. resync after an outage (1 % and 10 % of the 4 KiB blocks of 2 GiB
#      changed; the same change on a 4 GiB volume), beside rsync;
#   4. CPU seconds per GiB replicated, beside AES-128-GCM's cost of a GiB;
#   5. peak RSS of each agent, beside the configured --async-buffer.
#
# Environment:
#   BENCH_REPEATS=N      runs of each measurement (default 3): median, min-max
#   BENCH_SMOKE=1        tiny sizes, 1 repeat, 1 s runs: exercises every code
#                        path in well under a minute (ctest bench/smoke)
#   BENCH_SKIP_BUILD=1   do not build; use the binaries in $DUPLEX_BUILD
#   BENCH_BUILD_DIR      where to build (default build-release/)
#   BENCH_RUNTIME        seconds per fio run (default 5, after 1 s ramp)
#   BENCH_FIO_MIB        volume size for scenario 1 (default 256)
#   BENCH_SYNC_MIB       volume size for scenario 2 (default 2048)
#   BENCH_RESYNC_MIB     base volume size for scenario 3 (default 2048; the
#                        doubled run uses twice this)
#   BENCH_ASYNC_BUFFER_MIB  --async-buffer of every primary (default 64)
#   BENCH_REPORT_FROM=F  run nothing: write the report again from the
#                        figures a run saved in F (OUT.md with .data for
#                        .md, e.g. docs/BENCHMARKS.data), e.g. after editing
#                        docs/benchmarks-notes.md
#   TMPDIR               where the images go (needs about 6x RESYNC_MIB free)
#   DUPLEX_KEEP_TMP=1    keep the scratch directory (agent logs, fio JSON)
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT_MD=$(realpath -m "${1:-$BENCH_SRC/docs/BENCHMARKS.md}")
OUT_PNG=$(realpath -m "${2:-$(dirname "$OUT_MD")/benchmarks.png}")
# (the harness changes directory)
[ -z "${BENCH_REPORT_FROM:-}" ] || BENCH_REPORT_FROM=$(realpath -m "$BENCH_REPORT_FROM")

# ---- build (before the harness: it checks for the binaries) ----
if [ -z "${BENCH_SKIP_BUILD:-}" ] && [ -z "${BENCH_REPORT_FROM:-}" ]; then
    BENCH_BUILD_DIR=$(realpath -m "${BENCH_BUILD_DIR:-$BENCH_SRC/build-release}")
    echo "run-suite: building duplex (Release) in $BENCH_BUILD_DIR" >&2
    cmake -S "$BENCH_SRC" -B "$BENCH_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null ||
        { echo "run-suite: FAIL: cmake -S $BENCH_SRC -B $BENCH_BUILD_DIR -DCMAKE_BUILD_TYPE=Release" >&2; exit 1; }
    cmake --build "$BENCH_BUILD_DIR" -j "$(nproc)" \
        --target duplex-primary duplex-secondary duplexctl >/dev/null ||
        { echo "run-suite: FAIL: cmake --build $BENCH_BUILD_DIR (run it to see the errors)" >&2; exit 1; }
    export DUPLEX_BUILD=$BENCH_BUILD_DIR
elif [ -n "${BENCH_REPORT_FROM:-}" ]; then
    export DUPLEX_BUILD=${DUPLEX_BUILD:-$BENCH_SRC/build-release}
fi

# ---- sizes ----
if [ "${BENCH_SMOKE:-0}" = 1 ]; then
    REPEATS=${BENCH_REPEATS:-1}
    RUNTIME=${BENCH_RUNTIME:-1}
    RAMP=0
    FIO_MIB=${BENCH_FIO_MIB:-16}
    SYNC_MIB=${BENCH_SYNC_MIB:-32}
    RESYNC_MIB=${BENCH_RESYNC_MIB:-32}
    SPEED_SECS=1
    DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-110}
else
    REPEATS=${BENCH_REPEATS:-3}
    RUNTIME=${BENCH_RUNTIME:-5}
    RAMP=1
    FIO_MIB=${BENCH_FIO_MIB:-256}
    SYNC_MIB=${BENCH_SYNC_MIB:-2048}
    RESYNC_MIB=${BENCH_RESYNC_MIB:-2048}
    SPEED_SECS=3
    DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-14400}
fi
ASYNC_BUF_MIB=${BENCH_ASYNC_BUFFER_MIB:-64}
for v in REPEATS RUNTIME FIO_MIB SYNC_MIB RESYNC_MIB ASYNC_BUF_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] ||
        { echo "run-suite: FAIL: $v=${!v} is not a positive integer" >&2; exit 2; }
done

export DUPLEX_TEST_TIMEOUT
# shellcheck source=../integration/functions.sh
source "$BENCH_SRC/tests/integration/functions.sh"
requires fio nbdkit nbdcopy rsync gnuplot bc awk ss
requires_python_nbd
# shellcheck source=report.sh
source "$BENCH_SRC/tests/bench/report.sh"

CLK_TCK=$(getconf CLK_TCK)
MIB=1048576
# The 2 GiB of issue 4's resync scenario, in 4 KiB blocks: the change of
# the doubled volume is the same number of blocks.
CHANGE_BASE_BLOCKS=$((RESYNC_MIB * 256))

# ---- helpers ----

# run LABEL CMD...: run CMD with stdout in LABEL.out and stderr in
# LABEL.err; if it fails, show both and fail naming the command.
run() {
    local label=$1 rc=0
    shift
    "$@" >"$TESTDIR/$label.out" 2>"$TESTDIR/$label.err" </dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$TESTDIR/$label.out" "$TESTDIR/$label.err" >&2
        fail "$label: command failed with status $rc: $(printf '%q ' "$@")"
    fi
}

# free_port: a TCP port on 127.0.0.1 nothing listens on (just now).
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# port_listening PORT
port_listening() { ss -Hltn "sport = :$1" | grep -q .; }

# random_image FILE MIB: FILE holds MIB MiB of random data, fully allocated.
random_image() {
    run "random-$(basename "$1")" \
        dd if=/dev/urandom of="$1" bs=1M count="$2" iflag=fullblock status=none
}

# cpu_ticks PID: utime + stime of PID, in clock ticks.
cpu_ticks() {
    # Fields after the ")" that ends comm: state is $1, utime $12, stime $13.
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# peak_rss_mib PID: VmHWM of PID in MiB.
peak_rss_mib() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# cpu_per_gib TICKS BYTES: CPU seconds per GiB.
cpu_per_gib() {
    awk -v t="$1" -v b="$2" -v hz="$CLK_TCK" \
        'BEGIN { if (b > 0) printf "%.3f", t / hz / (b / 1073741824); else print "nan" }'
}

# mibs MIB MS: MiB per second.
mibs() { awk -v m="$1" -v ms="$2" 'BEGIN { printf "%.1f", (ms > 0 ? m * 1000 / ms : 0) }'; }
# secs MS: seconds with three decimals.
secs() { awk -v ms="$1" 'BEGIN { printf "%.3f", ms / 1000 }'; }

# fresh_sync: flush dirty pages (from earlier steps) so that writeback does
# not land in the next timed step; not timed itself.
fresh_sync() { sync; }

# ---- nbdkit ----

declare -A _kit_pid=()

# start_nbdkit NAME NBDKIT-ARGS...: nbdkit in the foreground (in the
# background of this shell), with a pidfile, waited for and registered for
# cleanup.  With -p PORT it also waits until the port listens; with -U SOCK
# it removes a socket an earlier nbdkit left behind.
start_nbdkit() {
    local name=$1 pid port="" sock="" prev="" a rc deadline
    shift
    for a in "$@"; do
        case $prev in
            -p) port=$a ;;
            -U) sock=$a ;;
        esac
        prev=$a
    done
    [ -z "$sock" ] || rm -f "$sock"
    rm -f "$TESTDIR/$name.pid"
    echo "+ nbdkit $*" >"$TESTDIR/$name.log"
    nbdkit -f --exit-with-parent -P "$TESTDIR/$name.pid" "$@" \
        >>"$TESTDIR/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >>"$TESTDIR/.agents"
    _kit_pid[$name]=$pid
    cleanup_fn stop_nbdkit "$name"
    deadline=$((SECONDS + 30))
    until [ -s "$TESTDIR/$name.pid" ]; do
        if ! _alive "$pid"; then
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            _kit_pid[$name]=
            cat "$TESTDIR/$name.log" >&2
            fail "nbdkit $name exited with status $rc before writing its pidfile: nbdkit $*"
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            fail "nbdkit $name (pid $pid) wrote no pidfile in 30 s: nbdkit $*"
        sleep 0.05
    done
    if [ -n "$port" ]; then
        wait_until -m "nbdkit $name listens on port $port" "port_listening $port"
    fi
}

# stop_nbdkit NAME: SIGTERM, at most 5 s, must exit 0.
stop_nbdkit() {
    local name=$1 pid rc=0 n=0
    pid=${_kit_pid[$name]:-}
    [ -n "$pid" ] || return 0
    _kit_pid[$name]=
    kill -TERM "$pid" 2>/dev/null || true
    while _alive "$pid" && [ "$n" -lt 100 ]; do
        sleep 0.05
        n=$((n + 1))
    done
    if _alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        fail "nbdkit $name (pid $pid) still running 5 s after SIGTERM"
    fi
    wait "$pid" 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] || { cat "$TESTDIR/$name.log" >&2; fail "nbdkit $name exited with status $rc"; }
}

# nbdkit_tls_certs DIR: the files nbdkit --tls-certificates=DIR and
# libnbd's tls-certificates=DIR read (nbdkit-tls(1)): ca-cert.pem,
# server-cert.pem, server-key.pem, client-cert.pem, client-key.pem; the
# server certificate names localhost.
nbdkit_tls_certs() {
    local dir=$1
    make_certs "$dir/src" localhost client
    cp "$dir/src/ca.pem" "$dir/ca-cert.pem"
    cp "$dir/src/localhost.pem" "$dir/server-cert.pem"
    cp "$dir/src/localhost.key" "$dir/server-key.pem"
    cp "$dir/src/client.pem" "$dir/client-cert.pem"
    cp "$dir/src/client.key" "$dir/client-key.pem"
}

# ---- duplex ----

PRI_ARGS=(--async-buffer "${ASYNC_BUF_MIB}M")

# wait_pair_in_sync SECONDS LABEL: primary connected, in sync, nothing
# pending (like wait_in_sync, with a deadline for large volumes).
wait_pair_in_sync() {
    wait_until -t "$1" -m "$2: $PRI connected, in sync, no lag" \
        "status_json $PRI | jq -e '.connection == \"connected\" and .sync == \"in-sync\" and .out_of_sync_bytes == 0 and .replication_lag_bytes == 0' >/dev/null"
}

# A deadline for moving MIB MiB at no less than 10 MiB/s.
deadline_for() { echo $((60 + $1 / 10)); }

# fresh_pair_files: no replica, no metadata: the next pair starts with a
# full initial sync.
fresh_pair_files() { rm -f primary.meta replica.img replica.meta; }

# ---- fio ----

# fio_job TARGET JOB URI: one fio nbd run; appends its figures to R.
# JOB: 4k1 (4 KiB randwrite qd1), 4k32 (qd32), 1m8 (1 MiB seq write qd8).
fio_job() {
    local target=$1 job=$2 uri=$3 rw bs qd label j
    case $job in
        4k1) rw=randwrite bs=4k qd=1 ;;
        4k32) rw=randwrite bs=4k qd=32 ;;
        1m8) rw=write bs=1M qd=8 ;;
        *) fail "fio_job: unknown job $job" ;;
    esac
    label=fio-$target-$job
    run "$label" fio --name="$target-$job" --ioengine=nbd --uri="$uri" \
        --rw="$rw" --bs="$bs" --iodepth="$qd" --size="${FIO_MIB}M" \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --lat_percentiles=1 --output-format=json
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    j=$(sed -n '/^{/,$p' "$TESTDIR/$label.out")
    jq -e '.jobs[0].error == 0 and .jobs[0].write.total_ios > 0' >/dev/null <<<"$j" ||
        fail "$label: fio reported an error or no writes: $(jq -c '.jobs[0] | {error, total_ios: .write.total_ios}' <<<"$j" 2>&1)"
    case $job in
        4k1)
            add "s1.$target.p50" "$(jq '.jobs[0].write.lat_ns.percentile["50.000000"] / 1000' <<<"$j")"
            add "s1.$target.p99" "$(jq '.jobs[0].write.lat_ns.percentile["99.000000"] / 1000' <<<"$j")"
            ;;
        4k32) add "s1.$target.iops" "$(jq '.jobs[0].write.iops | round' <<<"$j")" ;;
        1m8) add "s1.$target.mibs" "$(jq '.jobs[0].write.bw_bytes / 1048576 * 10 | round / 10' <<<"$j")" ;;
    esac
}

# fio_all TARGET URI: the three jobs.  For the 1 MiB job, the CPU of the
# running duplex agents and the bytes written through the primary (which a
# pair replicates) are recorded, after the replica caught up.
fio_all() {
    local target=$1 uri=$2 p0="" s0="" w0="" p1 s1 w1 pp sp
    fio_job "$target" 4k1 "$uri"
    fio_job "$target" 4k32 "$uri"
    pp=$(agent_pid_or_empty "$PRI")
    sp=$(agent_pid_or_empty "$SEC")
    if [ -n "$pp" ]; then
        [ "$target" = nosec ] || wait_pair_in_sync 120 "$target before 1 MiB"
        p0=$(cpu_ticks "$pp")
        [ -z "$sp" ] || s0=$(cpu_ticks "$sp")
        w0=$(status_field "$PRI" bytes_written)
    fi
    fio_job "$target" 1m8 "$uri"
    if [ -n "$pp" ]; then
        [ "$target" = nosec ] || wait_pair_in_sync 120 "$target after 1 MiB"
        p1=$(cpu_ticks "$pp")
        w1=$(status_field "$PRI" bytes_written)
        add "cpu.$target.pri" "$(cpu_per_gib $((p1 - p0)) $((w1 - w0)))"
        if [ -n "$sp" ]; then
            s1=$(cpu_ticks "$sp")
            add "cpu.$target.sec" "$(cpu_per_gib $((s1 - s0)) $((w1 - w0)))"
        fi
    fi
}

agent_pid_or_empty() { echo "${_agent_pid[$1]:-}"; }

# stop_agents NAME...: stop each (SIGTERM; fails the suite unless it exits
# 0 in time) and drop it from the harness's list of agents, so that it is
# listed once when started again.
stop_agents() {
    local n pid
    for n in "$@"; do
        pid=$(agent_pid_or_empty "$n")
        stop_agent "$n" || fail "$n (pid $pid) did not stop cleanly"
        _outage_forget "$n"
    done
}

# record_peak_rss KEY: VmHWM of the running primary and secondary, as
# mem.KEY.pri / mem.KEY.sec.
record_peak_rss() {
    local pp sp
    pp=$(agent_pid_or_empty "$PRI")
    sp=$(agent_pid_or_empty "$SEC")
    [ -z "$pp" ] || add "mem.$1.pri" "$(peak_rss_mib "$pp")"
    [ -z "$sp" ] || add "mem.$1.sec" "$(peak_rss_mib "$sp")"
}

# ---- scenario 1: write cost ----

scenario_write_cost() {
    local rep mode closed
    log "scenario 1: write cost, fio nbd on ${FIO_MIB} MiB volumes, $REPEATS x"
    SHM_DIR=$(mktemp -d /dev/shm/duplex-bench.XXXXXX)
    cleanup_fn rm -rf "$SHM_DIR"
    random_image base.img "$FIO_MIB"
    cp --sparse=never base.img kit.img
    cp --sparse=never base.img primary.img
    for ((rep = 1; rep <= REPEATS; rep++)); do
        # Targets interleaved, so that load from elsewhere spreads over all.
        fresh_sync
        start_nbdkit kit -U "$TESTDIR/kit.sock" file "$TESTDIR/kit.img"
        fio_all nbdkit "nbd+unix:///?socket=$TESTDIR/kit.sock"
        stop_nbdkit kit

        # No secondary: the peer is a port nothing listens on.
        fresh_pair_files
        closed=$(free_port)
        fresh_sync
        start_primary "$PRI" --volume "$TESTDIR/primary.img" \
            --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/$PRI.sock" \
            --peer "127.0.0.1:$closed" --mode sync \
            --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
            --tls-ca "$CERTS/ca.pem" --peer-name secondary "${PRI_ARGS[@]}"
        fio_all nosec "nbd+unix:///?socket=$TESTDIR/$PRI.sock"
        record_peak_rss s1.nosec
        stop_agents "$PRI"

        for mode in async sync; do
            fresh_pair_files
            start_pair "$mode" "${PRI_ARGS[@]}"
            wait_pair_in_sync "$(deadline_for "$FIO_MIB")" "$mode initial sync"
            fresh_sync
            fio_all "$mode" "$NBD_URI"
            wait_pair_in_sync 120 "$mode after fio"
            compare_volumes primary.img replica.img
            record_peak_rss "s1.$mode"
            stop_agents "$PRI" "$SEC"
        done

        loopback_rtt

        # Sync once more with the replica in RAM: the latency without the
        # secondary's write queueing on the primary's disk.
        fresh_pair_files
        truncate -s "${FIO_MIB}M" "$SHM_DIR/replica.img"
        ln -s "$SHM_DIR/replica.img" replica.img
        start_pair sync "${PRI_ARGS[@]}"
        wait_pair_in_sync "$(deadline_for "$FIO_MIB")" "syncram initial sync"
        fresh_sync
        fio_job syncram 4k1 "$NBD_URI"
        wait_pair_in_sync 120 "syncram after fio"
        compare_volumes primary.img replica.img
        stop_agents "$PRI" "$SEC"
        rm -f replica.img "$SHM_DIR/replica.img"
    done
    rm -f base.img kit.img primary.img primary.meta replica.img replica.meta
}

# ---- scenario 2: initial sync ----

# client_server LABEL PORT SERVER... -- CLIENT...: SERVER serves one client
# and exits (its output in LABEL-server.out; stopped by the cleanup if it
# does not); once PORT listens, CLIENT runs through run (its output in
# LABEL.out); then SERVER must have exited cleanly.
client_server() {
    local label=$1 port=$2 pid
    local -a server=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        server+=("$1")
        shift
    done
    [ $# -gt 1 ] || fail "client_server $label: no -- CLIENT command"
    shift
    "${server[@]}" >"$TESTDIR/$label-server.out" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >>"$TESTDIR/.agents"
    cleanup_fn kill_quiet "$pid"
    wait_until -m "$label server listens on port $port" "port_listening $port"
    run "$label" "$@"
    wait "$pid" || {
        cat "$TESTDIR/$label-server.out" >&2
        fail "$label server exited with an error: $(printf '%q ' "${server[@]}")"
    }
}

# machine_limits: AES-128-GCM on one core (openssl speed, 16 KiB blocks)
# and loopback TCP (iperf3, if installed), appended to R.
machine_limits() {
    local port v
    run openssl-speed openssl speed -evp aes-128-gcm -seconds "$SPEED_SECS" \
        -bytes 16384 -mr
    # "+F:25:AES-128-GCM:BYTES_PER_SECOND" (machine-readable, bytes/s)
    v=$(awk -F: '/^\+F:/ { printf "%.1f", $NF / 1048576 }' "$TESTDIR/openssl-speed.out")
    [ -n "$v" ] || fail "openssl speed: no +F line in $(cat "$TESTDIR/openssl-speed.out")"
    add limit.aes "$v"
    if command -v iperf3 >/dev/null; then
        port=$(free_port)
        client_server iperf3 "$port" iperf3 -s -1 -B 127.0.0.1 -p "$port" -- \
            iperf3 -c 127.0.0.1 -p "$port" -t "$SPEED_SECS" -J
        v=$(jq '.end.sum_received.bits_per_second / 8 / 1048576 * 10 | round / 10' "$TESTDIR/iperf3.out")
        add limit.tcp "$v"
    fi
}

# nbdcopy_tls_copy REP: the image into an empty nbdkit file server that
# requires TLS, over loopback TCP; MiB/s appended to R.
nbdcopy_tls_copy() {
    local rep=$1 port t0 t1
    rm -f kitcopy.img
    truncate -s "${SYNC_MIB}M" kitcopy.img
    port=$(free_port)
    start_nbdkit kittls -i 127.0.0.1 -p "$port" --tls=require \
        --tls-certificates="$TESTDIR/kitcerts" file "$TESTDIR/kitcopy.img"
    fresh_sync
    t0=$(now_ms)
    run nbdcopy nbdcopy "$TESTDIR/sync.img" \
        "nbds://localhost:$port/?tls-certificates=$TESTDIR/kitcerts"
    t1=$(now_ms)
    stop_nbdkit kittls
    add s2.nbdcopy "$(mibs "$SYNC_MIB" $((t1 - t0)))"
    [ "$rep" -gt 1 ] || compare_volumes sync.img kitcopy.img
    rm -f kitcopy.img
}

# duplex_initial_sync: an empty secondary, then a primary with the random
# image; time from the primary's start to in sync, the agent's own
# resync_seconds, CPU per GiB of each agent, peak RSS of each.
duplex_initial_sync() {
    local t0 t1 s0 rs kind
    fresh_pair_files
    ln -f sync.img primary.img
    start_secondary "$SEC" --volume "$TESTDIR/replica.img" \
        --meta "$TESTDIR/replica.meta" --listen 127.0.0.1:0 \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary
    s0=$(cpu_ticks "$(agent_pid "$SEC")")
    fresh_sync
    t0=$(now_ms)
    start_primary "$PRI" --volume "$TESTDIR/primary.img" \
        --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/$PRI.sock" \
        --peer "127.0.0.1:$SECONDARY_PORT" --mode async \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary "${PRI_ARGS[@]}"
    wait_pair_in_sync "$(deadline_for "$SYNC_MIB")" "initial sync of $SYNC_MIB MiB"
    t1=$(now_ms)
    add cpu.init.pri "$(cpu_per_gib "$(cpu_ticks "$(agent_pid "$PRI")")" $((SYNC_MIB * MIB)))"
    add cpu.init.sec "$(cpu_per_gib $(($(cpu_ticks "$(agent_pid "$SEC")") - s0)) $((SYNC_MIB * MIB)))"
    add s2.wall "$(mibs "$SYNC_MIB" $((t1 - t0)))"
    rs=$(status_field "$PRI" resync_seconds)
    kind=$(status_field "$PRI" resync_kind)
    add s2.rssecs "$rs"
    add s2.agent "$(awk -v m="$SYNC_MIB" -v s="$rs" 'BEGIN { printf "%.1f", (s > 0 ? m / s : 0) }')"
    INFO["s2.kind"]=$kind
    INFO["s2.sent"]=$(status_field "$PRI" resync_bytes_sent)
    record_peak_rss s2
    stop_agents "$PRI" "$SEC"
    compare_volumes sync.img replica.img
}

# loopback_rtt: one round trip between two processes over loopback TCP on
# this machine (fio's net engine, ping-pong of 4 KiB, no TLS): the floor of
# what a sync write adds to a local one.
loopback_rtt() {
    local port
    port=$(free_port)
    client_server fio-ping "$port" fio --name=pong --ioengine=net \
        --protocol=tcp --port="$port" --listen --pingpong=1 --rw=read \
        --bs=4k --size=64m --output-format=json -- \
        fio --name=ping --ioengine=net --protocol=tcp --hostname=127.0.0.1 \
        --port="$port" --pingpong=1 --rw=write --bs=4k --size=64m \
        --output-format=json
    add limit.rtt "$(sed -n '/^{/,$p' "$TESTDIR/fio-ping.out" |
        jq '.jobs[0].write.clat_ns.percentile["50.000000"] / 1000')"
}

# disk_copy: the disk's own limit for an initial sync on this machine, where
# both volumes share one disk: copy the image with O_DIRECT reads and
# writes (dd, 4 MiB blocks) into a new sparse file, as the agents do.
disk_copy() {
    local t0 t1
    rm -f ddcopy.img
    fresh_sync
    t0=$(now_ms)
    run dd dd if="$TESTDIR/sync.img" of="$TESTDIR/ddcopy.img" bs=4M \
        iflag=direct oflag=direct
    t1=$(now_ms)
    add limit.disk "$(mibs "$SYNC_MIB" $((t1 - t0)))"
    rm -f ddcopy.img
}

scenario_initial_sync() {
    local rep
    log "scenario 2: initial sync of $SYNC_MIB MiB, $REPEATS x"
    random_image sync.img "$SYNC_MIB"
    nbdkit_tls_certs "$TESTDIR/kitcerts"
    for ((rep = 1; rep <= REPEATS; rep++)); do
        machine_limits
        disk_copy
        nbdcopy_tls_copy "$rep"
        duplex_initial_sync
    done
    rm -f sync.img primary.img primary.meta replica.img replica.meta
}

# ---- scenario 3: resync after an outage ----

# change_blocks SEED N: N distinct random 4 KiB blocks of the primary get
# new random data, through its NBD socket.
change_blocks() {
    timeout 600 "$PYTHON" - "$NBD_SOCK" "$1" "$2" >"$TESTDIR/change.out" 2>&1 <<'PY' || { cat "$TESTDIR/change.out" >&2; fail "changing $2 blocks through $NBD_SOCK failed"; }
import os, random, sys
import nbd
sock, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_unix(sock)
for blk in rng.sample(range(h.get_size() // 4096), n):
    h.pwrite(os.urandom(4096), blk * 4096)
h.flush()
h.shutdown()
PY
}

# resync_case MIB: a pair on a MIB MiB random volume, then per repeat and
# per change (1 % and 10 % of the base volume's blocks): the secondary
# stops, the blocks change, it restarts; duplex's resync time beside rsync
# bringing the old copy up to date with the same change.
resync_case() {
    local mib=$1 rep pct n t0 tc t1 key
    random_image primary.img "$mib"
    fresh_pair_files
    start_outage_pair sync "${PRI_ARGS[@]}"
    wait_pair_in_sync "$(deadline_for "$mib")" "initial sync of $mib MiB"
    cp --sparse=never replica.img old.img
    for ((rep = 1; rep <= REPEATS; rep++)); do
        for pct in 1 10; do
            key=s3.$mib.$pct
            n=$((CHANGE_BASE_BLOCKS * pct / 100))
            stop_agents "$SEC"
            wait_until -m "primary notices the outage" \
                "[ \"\$(status_field $PRI connection)\" != connected ]"
            change_blocks $((rep * 1000 + pct)) "$n"
            INFO[$key.oos]=$(status_field "$PRI" out_of_sync_bytes)
            fresh_sync
            t0=$(now_ms)
            restart_secondary
            # The primary reconnects on its own schedule (a backoff that
            # grows while the secondary is away): restart -> connected is
            # recorded apart from connected -> in sync.
            wait_until -t 60 -m "$PRI reconnects to the restarted secondary" \
                "[ \"\$(status_field $PRI connection)\" = connected ]"
            tc=$(now_ms)
            wait_pair_in_sync "$(deadline_for "$mib")" "resync of $n blocks on $mib MiB"
            t1=$(now_ms)
            add "$key.wall" "$(secs $((t1 - t0)))"
            add "$key.conn" "$(secs $((tc - t0)))"
            add "$key.rsecs" "$(status_field "$PRI" resync_seconds)"
            INFO[$key.sent]=$(status_field "$PRI" resync_bytes_sent)
            INFO[$key.kind]=$(status_field "$PRI" resync_kind)
            INFO[$key.blocks]=$n
            fresh_sync
            t0=$(now_ms)
            run rsync rsync --inplace --no-whole-file --ignore-times primary.img old.img
            t1=$(now_ms)
            add "$key.rsync" "$(secs $((t1 - t0)))"
            if [ "$rep" -eq 1 ]; then
                compare_volumes primary.img replica.img
                compare_volumes primary.img old.img
            fi
        done
    done
    stop_agents "$PRI" "$SEC"
    rm -f primary.img primary.meta replica.img replica.meta old.img
}

scenario_resync() {
    log "scenario 3: resync after an outage, $RESYNC_MIB and $((2 * RESYNC_MIB)) MiB, $REPEATS x"
    resync_case "$RESYNC_MIB"
    resync_case $((2 * RESYNC_MIB))
}

# ---- main ----

check_disk() {
    local need avail
    need=$((6 * RESYNC_MIB + 512))
    [ $((3 * SYNC_MIB + 512)) -le "$need" ] || need=$((3 * SYNC_MIB + 512))
    avail=$(df -Pm "$TESTDIR" | awk 'NR == 2 { print $4 }')
    [ "$avail" -ge "$need" ] ||
        fail "$TESTDIR: $avail MiB free, the suite needs about $need MiB (set TMPDIR elsewhere or lower BENCH_RESYNC_MIB)"
}

# The figures and the settings the report reads, so that it can be written
# again without a run (BENCH_REPORT_FROM).
SAVED_VARS=(R INFO REPEATS RUNTIME RAMP FIO_MIB SYNC_MIB RESYNC_MIB
    ASYNC_BUF_MIB SPEED_SECS)

if [ -n "${BENCH_REPORT_FROM:-}" ]; then
    # shellcheck source=/dev/null
    source "$BENCH_REPORT_FROM" ||
        fail "BENCH_REPORT_FROM=$BENCH_REPORT_FROM: cannot read the saved figures"
    write_report "$OUT_MD" "$OUT_PNG"
    log "wrote $OUT_MD and $OUT_PNG from $BENCH_REPORT_FROM"
    exit 0
fi

check_disk
make_certs "$CERTS" primary secondary
machine_facts_begin
scenario_write_cost
scenario_initial_sync
scenario_resync
machine_facts_end
mkdir -p "$(dirname "$OUT_MD")"
declare -p "${SAVED_VARS[@]}" | sed 's/^declare -\([aA]*\)[^ ]* /declare -g\1 /' \
    >"${OUT_MD%.md}.data"
write_report "$OUT_MD" "$OUT_PNG"
log "wrote $OUT_MD, $OUT_PNG and ${OUT_MD%.md}.data"
