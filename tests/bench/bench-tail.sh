#!/bin/bash
# Tail capture benchmark (issue 11): what tailing a device costs the
# applications writing it, how far behind the replica is, how long a
# consistency point keeps the file system frozen, and the agent's CPU per
# GiB written.  Baselines in the same run.
#
#   DUPLEX_BUILD=build-release tests/bench/bench-tail.sh [OUT.md]
#
# 1. fio directly on a loop device (O_DIRECT, libaio): 4 KiB random writes
#    at queue depth 32 (IOPS) and 1 MiB sequential writes at queue depth 8
#    (MiB/s), without an agent and with duplex-primary tailing it (a
#    secondary on loopback applying everything), alternated REPEATS times;
#    the ratio is with ÷ without.
# 2. Capture-to-applied lag at a steady 20 MiB/s (fio --rate, 64 KiB random
#    writes): every 50 ms a probe writes a numbered 4 KiB block (O_DIRECT)
#    outside fio's range and times until the replica holds it.
# 3. Freeze duration of a consistency point (snapshot create --freeze) on
#    ext4 while fio writes files in it at 20 MiB/s.
# 4. CPU seconds of each agent per GiB written (1 GiB of 1 MiB writes),
#    beside the CPU fio itself used to write it.
#
# Environment (defaults): BENCH_TAIL_REPEATS (3), BENCH_TAIL_RUNTIME (5 s
# per fio run), BENCH_TAIL_VOL_MIB (2048), BENCH_TAIL_AGENT_ARGS (none:
# extra duplex-primary options, e.g. --trace-buffer 4M), TMPDIR.
DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-1800}
TEST_NAME=bench-tail
[ -z "${DUPLEX_BUILD:-}" ] || DUPLEX_BUILD=$(realpath -m "$DUPLEX_BUILD")
OUT=${1:+$(realpath -m "$1")}
# shellcheck source=../integration/functions.sh
source "$(dirname "$0")/../integration/functions.sh"
# shellcheck source=../integration/fs-functions.sh
source "$DUPLEX_SRC/tests/integration/fs-functions.sh"
# shellcheck source=../integration/tail-functions.sh
source "$DUPLEX_SRC/tests/integration/tail-functions.sh"
# shellcheck source=report.sh
source "$DUPLEX_SRC/tests/bench/report.sh"   # add, med, vmin, vmax
requires_tail
requires jq awk
export LC_ALL=C

REPEATS=${BENCH_TAIL_REPEATS:-3}
# e.g. "--trace-buffer 4M" for every agent started
TRACE_ARGS=${BENCH_TAIL_AGENT_ARGS:-}
RUNTIME=${BENCH_TAIL_RUNTIME:-5}
VOL_MIB=${BENCH_TAIL_VOL_MIB:-2048}
t_start=$SECONDS
load0=$(cut -d' ' -f1-3 /proc/loadavg)
FIO_MIB=$((VOL_MIB - 64))   # fio stays below; the lag probe writes above

# fio_dev NAME ARGS...: fio on $DEV for $RUNTIME s, prints its JSON.
fio_dev() {
    local name=$1
    shift
    fio --name="$name" --filename="$DEV" --direct=1 --ioengine=libaio \
        --size="${FIO_MIB}M" --time_based --runtime="$RUNTIME" \
        --ramp_time=1 --randrepeat=0 --output-format=json "$@" 2>/dev/null
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

make_raw_device "$VOL_MIB"
start_tail_secondary

# ---- 1. write cost ----
# Three variants, in a rotating order (the loop device's backing file gets
# faster as its page cache fills, so no variant always goes first):
# without an agent, tailed and replicated, and capture only (nothing
# listens on port 9: the agent traces and marks its bitmap but reads
# nothing back and sends nothing).
run_variant() {
    case $1 in
        base)
            add iops_base "$(fio_dev r --rw=randwrite --bs=4k --iodepth=32 | jq '.jobs[0].write.iops')"
            add seq_base "$(fio_dev s --rw=write --bs=1M --iodepth=8 | jq '.jobs[0].write.bw_bytes / 1048576')"
            ;;
        tail)
            start_tail_primary $TRACE_ARGS
            wait_status pri connection connected
            wait_tracing
            add iops_tail "$(fio_dev r --rw=randwrite --bs=4k --iodepth=32 | jq '.jobs[0].write.iops')"
            add seq_tail "$(fio_dev s --rw=write --bs=1M --iodepth=8 | jq '.jobs[0].write.bw_bytes / 1048576')"
            wait_drained
            add lost "$(status_json pri | jq .capture.records_lost)"
            stop_agent pri
            ;;
        cap)
            sec_port=9 start_tail_primary $TRACE_ARGS
            add iops_cap "$(fio_dev r --rw=randwrite --bs=4k --iodepth=32 | jq '.jobs[0].write.iops')"
            add seq_cap "$(fio_dev s --rw=write --bs=1M --iodepth=8 | jq '.jobs[0].write.bw_bytes / 1048576')"
            add lost_cap "$(status_json pri | jq .capture.records_lost)"
            stop_agent pri
            ;;
    esac
}
order=(base tail cap)
for i in $(seq 0 $((REPEATS - 1))); do
    for k in 0 1 2; do
        run_variant "${order[$(((i + k) % 3))]}"
    done
done

# ---- 2. lag at 20 MiB/s, 4. CPU per GiB ----
start_tail_primary $TRACE_ARGS
wait_status pri connection connected
wait_tracing
fio --name=steady --filename="$DEV" --direct=1 --ioengine=libaio \
    --size="${FIO_MIB}M" --rw=randwrite --bs=64k --iodepth=4 --rate=20m \
    --time_based --runtime=12 --randrepeat=0 --output=/dev/null \
    >/dev/null 2>&1 </dev/null &
fio_pid=$!
hold proc fio "$fio_pid"
"$PYTHON" - "$DEV" "$TESTDIR/replica.img" "$((FIO_MIB + 16))" >lag.txt <<'EOF'
import mmap, os, struct, sys, time
dev, rep, off_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
off = off_mib << 20
wfd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
rfd = os.open(rep, os.O_RDONLY)
buf = mmap.mmap(-1, 4096)
time.sleep(1)
for n in range(1, 201):
    buf.seek(0)
    buf.write(struct.pack("<QQ", 0x6475706c6578, n) + b"\0" * 4080)
    os.pwrite(wfd, buf, off)
    t0 = time.monotonic()
    while True:
        got = os.pread(rfd, 16, off)
        if len(got) == 16 and struct.unpack("<QQ", got) == (0x6475706c6578, n):
            break
        if time.monotonic() - t0 > 30:
            sys.exit("probe %d never reached the replica" % n)
        time.sleep(0.0005)
    print("%.2f" % ((time.monotonic() - t0) * 1000))
    time.sleep(0.05)
EOF
wait "$fio_pid" || true
forget proc fio
while read -r ms; do add lag "$ms"; done <lag.txt
lag_p50=$(sort -n lag.txt | awk '{a[NR]=$1} END {print a[int(NR*0.50+0.5)]}')
lag_p99=$(sort -n lag.txt | awk '{a[NR]=$1} END {print a[int(NR*0.99+0.5)]}')
wait_drained

pri_pid=$(agent_pid pri)
sec_pid=$(agent_pid sec)
c_pri=$(cpu_ticks "$pri_pid")
c_sec=$(cpu_ticks "$sec_pid")
fio --name=gib --filename="$DEV" --direct=1 --ioengine=libaio --size=1G \
    --rw=write --bs=1M --iodepth=8 --output-format=json >gib.json 2>/dev/null
wait_drained
hz=$(getconf CLK_TCK)
fio_cpu=$(jq '(.jobs[0].usr_cpu + .jobs[0].sys_cpu) / 100 * .jobs[0].job_runtime / 1000 * 1000 | round / 1000' gib.json)
cpu_pri=$(awk -v a="$c_pri" -v b="$(cpu_ticks "$pri_pid")" -v hz="$hz" 'BEGIN { printf "%.3f", (b - a) / hz }')
cpu_sec=$(awk -v a="$c_sec" -v b="$(cpu_ticks "$sec_pid")" -v hz="$hz" 'BEGIN { printf "%.3f", (b - a) / hz }')
stop_agent pri
# The agent capturing only (nothing listens on port 9): 1 GiB of 1 MiB
# writes, and 1 GiB of 4 KiB random writes (the most records per byte).
sec_port=9 start_tail_primary $TRACE_ARGS
cap_pid=$(agent_pid pri)
c_cap=$(cpu_ticks "$cap_pid")
fio --name=gib --filename="$DEV" --direct=1 --ioengine=libaio --size=1G \
    --rw=write --bs=1M --iodepth=8 --output=/dev/null >/dev/null 2>&1
cpu_cap=$(awk -v a="$c_cap" -v b="$(cpu_ticks "$cap_pid")" -v hz="$hz" 'BEGIN { printf "%.3f", (b - a) / hz }')
c_cap=$(cpu_ticks "$cap_pid")
fio --name=gib4k --filename="$DEV" --direct=1 --ioengine=libaio \
    --size="${FIO_MIB}M" --io_size=1G --rw=randwrite --bs=4k --iodepth=32 \
    --randrepeat=0 --output-format=json >gib4k.json 2>/dev/null
cpu_cap4k=$(awk -v a="$c_cap" -v b="$(cpu_ticks "$cap_pid")" -v hz="$hz" 'BEGIN { printf "%.3f", (b - a) / hz }')
fio_cpu4k=$(jq '(.jobs[0].usr_cpu + .jobs[0].sys_cpu) / 100 * .jobs[0].job_runtime / 1000 * 1000 | round / 1000' gib4k.json)
stop_agent pri
stop_agent sec

# ---- 3. freeze duration on ext4 under 20 MiB/s ----
rm -f "$TESTDIR/replica.img" "$TESTDIR/replica.meta" "$TESTDIR/primary.meta"
rm -rf "$TESTDIR/S"
release loop "$DEV"
make_device 512
start_tail_secondary
start_tail_primary $TRACE_ARGS
wait_status pri connection connected
wait_tracing
fio --name=files --directory="$MNT" --rw=randwrite --bs=64k --size=64M \
    --ioengine=psync --rate=20m --time_based --runtime=30 \
    --output=/dev/null >/dev/null 2>&1 </dev/null &
fio_pid=$!
hold proc fio "$fio_pid"
for i in $(seq 1 10); do
    out=$("$DUPLEXCTL" --control pri.ctl snapshot create --freeze "$MNT" --json) ||
        fail "consistency point $i failed: $out"
    add freeze "$(jq .frozen_ms <<<"$out")"
    sleep 0.5
done
kill "$fio_pid" 2>/dev/null
wait "$fio_pid" 2>/dev/null || true
forget proc fio

r() { awk -v a="$(med "$1" 6)" -v b="$(med "$2" 6)" 'BEGIN { printf "%.3f", a / b }'; }
cell3() { printf '%s (%s–%s)' "$(med "$1" 1)" "$(vmin "$1" 1)" "$(vmax "$1" 1)"; }
{
    echo "## 8. Tail capture (issue 11)"
    echo
    echo "\`DUPLEX_BUILD=build-release tests/bench/bench-tail.sh\`: a ${VOL_MIB} MiB loop device,"
    echo "the secondary on loopback (TLS), $REPEATS runs of $RUNTIME s per fio figure, median (min–max);"
    echo "$(nproc) CPUs, load average before: $load0; $((SECONDS - t_start)) s in all; agent options: ${TRACE_ARGS:-defaults}; duplex $(built_commit)."
    echo
    echo "| figure | without agent | tailed and replicated | ÷ without | capture only (no secondary) | ÷ without |"
    echo "|---|---|---|---|---|---|"
    echo "| fio 4 KiB randwrite qd32 (IOPS) | $(cell3 iops_base) | $(cell3 iops_tail) | $(r iops_tail iops_base) | $(cell3 iops_cap) | $(r iops_cap iops_base) |"
    echo "| fio 1 MiB seq write qd8 (MiB/s) | $(cell3 seq_base) | $(cell3 seq_tail) | $(r seq_tail seq_base) | $(cell3 seq_cap) | $(r seq_cap seq_base) |"
    echo
    echo "Trace records lost per agent in those runs (trace buffer: ${TRACE_ARGS:-default, 1 MiB per CPU}), median: $(med lost 0) replicating, $(med lost_cap 0) capturing only."
    echo "Replicating, the agent reads back and sends every write and the secondary applies it, on the same $(nproc) CPUs as fio."
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| capture-to-applied lag at 20 MiB/s, p50 (ms) | $lag_p50 |"
    echo "| capture-to-applied lag at 20 MiB/s, p99 (ms) | $lag_p99 |"
    echo "| freeze duration of a consistency point on ext4 at 20 MiB/s (ms), 10 points | $(cell3 freeze) |"
    echo "| CPU s per GiB written: duplex-primary (trace, read back, TLS) | $cpu_pri |"
    echo "| CPU s per GiB written: duplex-primary capturing only (trace, bitmap), 1 MiB writes | $cpu_cap |"
    echo "| CPU s per GiB written: duplex-primary capturing only (trace, bitmap), 4 KiB random writes | $cpu_cap4k |"
    echo "| CPU s per GiB written: fio itself, 4 KiB random writes (baseline) | $fio_cpu4k |"
    echo "| CPU s per GiB written: duplex-secondary (TLS, apply) | $cpu_sec |"
    echo "| CPU s per GiB written: fio itself, 1 MiB writes (baseline) | $fio_cpu |"
} | tee ${OUT:+"$OUT"}
