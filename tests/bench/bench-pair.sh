#!/bin/bash
# Replicating-pair benchmark: the figures a user asks first, each beside
# nbdkit's file plugin (a non-replicating NBD server) measured in the same
# run on the same kind of file.
#
#   DUPLEX_BUILD=build-release tests/bench/bench-pair.sh [OUT.md]
#
# Scenarios: initial sync of a 1 GiB random volume (vs nbdcopy of the same
# image into nbdkit); fio nbd 4 KiB random write qd1 p50/p99 latency and
# 1 MiB sequential write qd8 MiB/s, in sync and async mode (vs nbdkit).
# Prints a markdown table on stdout (and to OUT.md if given).
DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-3000}
TEST_NAME=bench-pair
source "$(dirname "$0")/../integration/functions.sh"
requires fio nbdkit nbdcopy jq

OUT=${1:-}
SIZE_MIB=${BENCH_SYNC_MIB:-1024}
RUNTIME=${BENCH_RUNTIME:-10}
declare -A R

# fio_run NAME URI RW BS QD: results in R[NAME.*]
fio_run() {
    local name=$1 uri=$2 rw=$3 bs=$4 qd=$5 j
    j=$(fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --size=256M --time_based --runtime="$RUNTIME" \
        --ramp_time=1 --output-format=json 2>/dev/null) ||
        fail "fio $name failed"
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    j=$(sed -n '/^{/,$p' <<<"$j")
    R[$name.p50]=$(jq '.jobs[0].write.clat_ns.percentile["50.000000"] / 1000' <<<"$j")
    R[$name.p99]=$(jq '.jobs[0].write.clat_ns.percentile["99.000000"] / 1000' <<<"$j")
    R[$name.mibs]=$(jq '.jobs[0].write.bw_bytes / 1048576 | . * 10 | round / 10' <<<"$j")
    R[$name.iops]=$(jq '.jobs[0].write.iops | round' <<<"$j")
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- baseline: nbdkit file plugin ----
truncate -s 256M nbdkit.img
nbdkit -U "$TESTDIR/nbdkit.sock" -P "$TESTDIR/nbdkit.pid" file "$TESTDIR/nbdkit.img"
wait_until '[ -s "$TESTDIR/nbdkit.pid" ]'
cleanup_fn bash -c "kill \$(cat '$TESTDIR/nbdkit.pid') 2>/dev/null || true"
KURI="nbd+unix:///?socket=$TESTDIR/nbdkit.sock"
fio_run kit4k "$KURI" randwrite 4k 1
fio_run kit1m "$KURI" write 1M 8
kill "$(cat "$TESTDIR/nbdkit.pid")"

# Initial-sync baseline: nbdcopy the random image into nbdkit.
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >primary.img
truncate -s "$((SIZE_MIB * 1048576))" kitcopy.img
nbdkit -U "$TESTDIR/kit2.sock" -P "$TESTDIR/kit2.pid" file "$TESTDIR/kitcopy.img"
wait_until '[ -s "$TESTDIR/kit2.pid" ]'
t0=$(now_ms)
nbdcopy primary.img "nbd+unix:///?socket=$TESTDIR/kit2.sock"
t1=$(now_ms)
R[kitcopy.mibs]=$(echo "scale=1; $SIZE_MIB * 1000 / ($t1 - $t0)" | bc)
kill "$(cat "$TESTDIR/kit2.pid")"
rm -f kitcopy.img

# ---- duplex initial sync: 1 GiB random primary, empty secondary ----
t0=$(now_ms)
start_pair sync
wait_in_sync "$PRI"
t1=$(now_ms)
R[initsync.mibs]=$(echo "scale=1; $SIZE_MIB * 1000 / ($t1 - $t0)" | bc)
cmp primary.img replica.img || fail "replica differs after initial sync"
stop_agent "$PRI"
stop_agent "$SEC"

# ---- duplex write cost, sync and async ----
for mode in sync async; do
    rm -f primary.img primary.meta replica.img replica.meta
    truncate -s 256M primary.img
    start_pair "$mode"
    wait_in_sync "$PRI"
    fio_run "$mode.4k" "$NBD_URI" randwrite 4k 1
    fio_run "$mode.1m" "$NBD_URI" write 1M 8
    wait_in_sync "$PRI"
    cmp primary.img replica.img || fail "$mode: replica differs after fio"
    stop_agent "$PRI"
    stop_agent "$SEC"
done

ratio() { echo "scale=2; $1 / $2" | bc; }
{
    echo "| figure | duplex sync | duplex async | nbdkit file | sync/nbdkit | async/nbdkit |"
    echo "|---|---|---|---|---|---|"
    echo "| 4 KiB randwrite qd1 p50 (µs) | ${R[sync.4k.p50]} | ${R[async.4k.p50]} | ${R[kit4k.p50]} | $(ratio "${R[sync.4k.p50]}" "${R[kit4k.p50]}") | $(ratio "${R[async.4k.p50]}" "${R[kit4k.p50]}") |"
    echo "| 4 KiB randwrite qd1 p99 (µs) | ${R[sync.4k.p99]} | ${R[async.4k.p99]} | ${R[kit4k.p99]} | $(ratio "${R[sync.4k.p99]}" "${R[kit4k.p99]}") | $(ratio "${R[async.4k.p99]}" "${R[kit4k.p99]}") |"
    echo "| 1 MiB seq write qd8 (MiB/s) | ${R[sync.1m.mibs]} | ${R[async.1m.mibs]} | ${R[kit1m.mibs]} | $(ratio "${R[sync.1m.mibs]}" "${R[kit1m.mibs]}") | $(ratio "${R[async.1m.mibs]}" "${R[kit1m.mibs]}") |"
    echo
    echo "| initial sync of $SIZE_MIB MiB random | duplex over TLS | nbdcopy into nbdkit (unix socket, no TLS) | ratio |"
    echo "|---|---|---|---|"
    echo "| MiB/s | ${R[initsync.mibs]} | ${R[kitcopy.mibs]} | $(ratio "${R[initsync.mibs]}" "${R[kitcopy.mibs]}") |"
    echo
    echo "Machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
} | tee ${OUT:+"$OUT"}
