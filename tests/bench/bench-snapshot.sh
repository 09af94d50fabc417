#!/bin/bash
# Snapshot benchmark (issue 9): what taking, storing, copying and restoring
# snapshots costs, each figure beside a baseline measured in the same run.
#
#   DUPLEX_BUILD=build-release tests/bench/bench-snapshot.sh [OUT.md]
#
# 1. create latency: wall time of `duplexctl snapshot create --json` on the
#    primary's and on the secondary's control socket, on a sparse volume of
#    SMALL_MIB and one of BIG_MIB (DATA_MIB of random data written), while
#    the first (full) snapshot is still copying and with nothing copying;
#    baseline: `duplexctl status --json` on the same socket at the same time.
# 2. store growth: a SNAP_MIB volume of random data, its first (full)
#    snapshot, then 1 % of its 4 KiB blocks rewritten at random, and SEQ_MIB
#    written as 1 MiB sequential writes, a snapshot after each: store bytes
#    added ÷ bytes changed.
# 3. sync-mode 4 KiB random write latency at qd1 (fio nbd) with no snapshot
#    copying, then while the first snapshot of the volume copies (held back
#    with --snapshot-copy-rate COPY_RATE so that every block fio writes is
#    still to be copied: each first write to a block is a copy-before-write).
#    Beside them, what the secondary does in a copy-before-write, measured
#    alone on the same disk: a 4 KiB O_DIRECT read and a 4 KiB appending
#    write with O_DSYNC (fio psync).
# 4. background copy rate of the full first snapshot of scenario 2 (no
#    --snapshot-copy-rate), from taken to complete, beside the restore rate.
# 5. `duplex-store restore` of that snapshot onto an empty file, and of the
#    next one (1 % changed) onto the file holding the older state, beside
#    `cp --sparse=never` + sync and `dd bs=1M conv=fdatasync` of the image.
#
# Prints markdown tables on stdout (and to OUT.md if given).  Environment
# (defaults): BENCH_SNAP_REPEATS (5), BENCH_SNAP_SMALL_MIB (1024),
# BENCH_SNAP_BIG_MIB (65536), BENCH_SNAP_DATA_MIB (64), BENCH_SNAP_MIB
# (2048), BENCH_SNAP_SEQ_MIB (20), BENCH_SNAP_RUNTIME (15 s per fio run),
# BENCH_SNAP_COPY_RATE (16M), TMPDIR (needs about 4 x BENCH_SNAP_MIB free),
# DUPLEX_KEEP_TMP=1 (keep agent logs and fio output).  Takes about 5
# minutes on 2 cores, 2 of them the first snapshot of the BIG_MIB volume,
# which reads every block, holes included.
# shellcheck source-path=SCRIPTDIR
DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-1800}
TEST_NAME=bench-snapshot
# The harness changes directory: relative paths would be lost.
[ -z "${DUPLEX_BUILD:-}" ] || DUPLEX_BUILD=$(realpath -m "$DUPLEX_BUILD")
OUT=${1:+$(realpath -m "$1")}
# shellcheck source=../integration/functions.sh
source "$(dirname "$0")/../integration/functions.sh"
# shellcheck source=report.sh
source "$DUPLEX_SRC/tests/bench/report.sh"   # add, med, cell, ratio, verdict
requires fio jq awk du cmp dd
requires_python_nbd
DUPLEX_STORE=$DUPLEX_BUILD/duplex-store
[ -x "$DUPLEX_STORE" ] || fail "$DUPLEX_STORE not built (DUPLEX_BUILD=$DUPLEX_BUILD)"
export LC_ALL=C                 # $EPOCHREALTIME with a decimal point

REPEATS=${BENCH_SNAP_REPEATS:-5}
SMALL_MIB=${BENCH_SNAP_SMALL_MIB:-1024}
BIG_MIB=${BENCH_SNAP_BIG_MIB:-65536}
DATA_MIB=${BENCH_SNAP_DATA_MIB:-64}
SNAP_MIB=${BENCH_SNAP_MIB:-2048}
SEQ_MIB=${BENCH_SNAP_SEQ_MIB:-20}
RUNTIME=${BENCH_SNAP_RUNTIME:-15}
COPY_RATE=${BENCH_SNAP_COPY_RATE:-16M}
for v in REPEATS SMALL_MIB BIG_MIB DATA_MIB SNAP_MIB SEQ_MIB RUNTIME; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || fail "$v=${!v} is not a positive integer"
done
{ [ "$DATA_MIB" -le "$SMALL_MIB" ] && [ "$SEQ_MIB" -le "$((SNAP_MIB / 2))" ]; } ||
    fail "BENCH_SNAP_DATA_MIB must fit the small volume, BENCH_SNAP_SEQ_MIB half of BENCH_SNAP_MIB"
MIB=1048576
STORE=$TESTDIR/S

INFO[load0]=$(cut -d' ' -f1-3 /proc/loadavg)
INFO[date]=$(date -u '+%Y-%m-%d %H:%M UTC')
# The commit the binaries measured were built from, and the uncommitted
# changes to the code they were built with (not docs or tests).
INFO[commit]=$(built_commit)
INFO[dirty]=$(code_changes "${INFO[commit]}")
INFO[build]=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$DUPLEX_BUILD/CMakeCache.txt" 2>/dev/null || true)
avail=$(df -Pm "$TESTDIR" | awk 'NR == 2 { print $4 }')
[ "$avail" -ge $((4 * SNAP_MIB + DATA_MIB + 512)) ] ||
    fail "$TESTDIR: $avail MiB free, this needs about $((4 * SNAP_MIB + 512)) MiB (set TMPDIR elsewhere or lower BENCH_SNAP_MIB)"

# ---- helpers ----

# timed LABEL CMD...: run CMD (stdout in LABEL.out, stderr in LABEL.err);
# its wall time in milliseconds in T_MS.  Fails naming CMD if it fails.
T_MS=
timed() {
    local label=$1 a b rc=0
    shift
    a=$EPOCHREALTIME
    "$@" >"$TESTDIR/$label.out" 2>"$TESTDIR/$label.err" </dev/null || rc=$?
    b=$EPOCHREALTIME
    [ "$rc" -eq 0 ] ||
        fail "$label: $(printf '%q ' "$@")exited with $rc: $(cat "$TESTDIR/$label.out" "$TESTDIR/$label.err")"
    T_MS=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", (b - a) * 1000 }')
}

# ms_between A B: milliseconds from $EPOCHREALTIME A to B.
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

# snap_create NAME KEY: `snapshot create --json` on agent NAME, its wall
# time added to R[KEY]; the id in SNAP_ID.
SNAP_ID=
snap_create() {
    timed "create-$1" "$DUPLEXCTL" --control "$TESTDIR/$1.ctl" snapshot create --json
    add "$2" "$T_MS"
    SNAP_ID=$(jq -er .id "$TESTDIR/create-$1.out") ||
        fail "snapshot create on $1 printed no id: $(cat "$TESTDIR/create-$1.out")"
}

# status_rtt NAME KEY: `status --json` on agent NAME, wall time to R[KEY].
status_rtt() {
    timed "status-$1" "$DUPLEXCTL" --control "$TESTDIR/$1.ctl" status --json
    add "$2" "$T_MS"
}

snap_field() { status_json "$SEC" | jq -r ".snapshots.$1"; }

# wait_copied COUNT [SECONDS]: the secondary holds COUNT complete snapshots
# and copies none (polled every 0.1 s).
wait_copied() {
    wait_until -t "${2:-120}" -m "$1 snapshots complete, none copying" \
        "status_json $SEC | jq -e '.snapshots.copying == 0 and .snapshots.count == $1' >/dev/null"
}

# stop_agents NAME...: SIGTERM each (the harness fails the run unless it
# exits 0 within 5 s) and forget it, so that it is listed once when started
# again.
stop_agents() {
    local n
    for n in "$@"; do
        stop_agent "$n" || fail "$n did not stop cleanly"
        _outage_forget "$n"
    done
}

fresh_files() { rm -rf primary.meta replica.img replica.meta replica.meta.snap* "$STORE"; }

# change_blocks SEED N: N distinct random 4 KiB blocks of the primary get
# new random data, through its NBD socket.
change_blocks() {
    timeout 600 "$PYTHON" - "$NBD_SOCK" "$1" "$2" >"$TESTDIR/change.out" 2>&1 <<'PY' ||
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
        { cat "$TESTDIR/change.out" >&2; fail "changing $2 blocks through $NBD_SOCK failed"; }
}

# write_seq OFFSET_MIB COUNT: COUNT MiB of random data from OFFSET_MIB, as
# 1 MiB sequential writes through the primary's NBD socket.
write_seq() {
    timeout 600 "$PYTHON" - "$NBD_SOCK" "$1" "$2" >"$TESTDIR/seq.out" 2>&1 <<'PY' ||
import os, sys
import nbd
sock, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_unix(sock)
for i in range(n):
    h.pwrite(os.urandom(1 << 20), (off + i) << 20)
h.flush()
h.shutdown()
PY
        { cat "$TESTDIR/seq.out" >&2; fail "writing $2 MiB through $NBD_SOCK failed"; }
}

store_bytes() { snap_field store_bytes; }
du_bytes() { du -sb "$STORE" | awk '{ print $1 }'; }

# thread_sched PID: "MAIN_RUN MAIN_WAIT OTHER_RUN OTHER_WAIT": nanoseconds
# the process's main thread and its other threads (the store thread) ran,
# and waited on a run queue for a core (/proc/PID/task/TID/schedstat).
thread_sched() {
    local t a b mr=0 mw=0 orun=0 ow=0
    for t in /proc/"$1"/task/*; do
        read -r a b _ <"$t/schedstat"
        if [ "${t##*/}" = "$1" ]; then
            mr=$((mr + a)) mw=$((mw + b))
        else
            orun=$((orun + a)) ow=$((ow + b))
        fi
    done
    echo "$mr $mw $orun $ow"
}

# fio_lat LABEL URI|FILE ENGINE-ARGS...: 4 KiB random writes (or what the
# arguments say) at qd1 for RUNTIME s; total latency p50/p99/mean (µs) and
# the number of writes into R[LABEL.*].
fio_lat() {
    local label=$1 dir j
    shift
    timed "fio-$label" fio --name="$label" --bs=4k --iodepth=1 --time_based \
        --runtime="$RUNTIME" --lat_percentiles=1 --output-format=json "$@"
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    j=$(sed -n '/^{/,$p' "$TESTDIR/fio-$label.out")
    dir=$(jq -r '.jobs[0] | if .write.total_ios > 0 then "write" else "read" end' <<<"$j")
    jq -e ".jobs[0].error == 0 and .jobs[0].$dir.total_ios > 0" >/dev/null <<<"$j" ||
        fail "fio $label: an error or no I/O: $(jq -c '.jobs[0] | {error}' <<<"$j" 2>&1)"
    add "$label.p50" "$(jq ".jobs[0].$dir.lat_ns.percentile[\"50.000000\"] / 1000" <<<"$j")"
    add "$label.p99" "$(jq ".jobs[0].$dir.lat_ns.percentile[\"99.000000\"] / 1000" <<<"$j")"
    add "$label.mean" "$(jq ".jobs[0].$dir.lat_ns.mean / 1000 | . * 10 | round / 10" <<<"$j")"
    add "$label.ios" "$(jq ".jobs[0].$dir.total_ios" <<<"$j")"
}

# ---- 1. create latency ----

# create_latency MIB: a pair on a sparse MIB MiB volume holding DATA_MIB of
# random data (four pieces, spread out), a store on the secondary.
create_latency() {
    local mib=$1 k=lat.$1 i piece t0 t1 sched0
    log "create latency on a sparse $mib MiB volume"
    fresh_files
    rm -f primary.img
    truncate -s "${mib}M" primary.img
    piece=$((DATA_MIB / 4 > 0 ? DATA_MIB / 4 : 1))
    for i in 0 1 2 3; do
        dd if=/dev/urandom of=primary.img bs=1M count="$piece" \
            seek=$((mib * i / 4)) conv=notrunc iflag=fullblock status=none
    done
    SEC_EXTRA_ARGS=(--snapshot-store "$STORE")
    start_pair sync
    wait_in_sync "$PRI"

    # The first snapshot holds every block: its copy reads the whole
    # volume, holes included.  Creates while it copies stack up behind it.
    snap_create "$PRI" "$k.first"
    t0=$EPOCHREALTIME
    sched0=$(thread_sched "$(agent_pid "$SEC")")
    for ((i = 0; i < REPEATS; i++)); do
        status_rtt "$PRI" "$k.copying.status.pri"
        snap_create "$PRI" "$k.copying.pri"
        status_rtt "$SEC" "$k.copying.status.sec"
        snap_create "$SEC" "$k.copying.sec"
    done
    INFO[$k.copying.live]=$(snap_field copying)
    INFO[$k.copying.jobs_bytes]=$(stat -c %s replica.meta.snapjobs)
    INFO[$k.copying.done]=$(snap_field copying_blocks_done)
    wait_copied $((2 * REPEATS + 1)) $((120 + mib / 100))
    t1=$EPOCHREALTIME
    INFO[$k.fullcopy.s]=$(awk -v ms="$(ms_between "$t0" "$t1")" 'BEGIN { printf "%.1f", ms / 1000 }')
    INFO[$k.fullcopy.sched]="$sched0 $(thread_sched "$(agent_pid "$SEC")")"

    # Nothing copying: a few changed blocks, a snapshot, wait until it is
    # in the store, the next.
    for ((i = 0; i < REPEATS; i++)); do
        change_blocks $((i + 1)) 64
        status_rtt "$PRI" "$k.idle.status.pri"
        snap_create "$PRI" "$k.idle.pri"
        wait_copied $((2 * REPEATS + 2 * i + 2))
        change_blocks $((i + 100)) 64
        status_rtt "$SEC" "$k.idle.status.sec"
        snap_create "$SEC" "$k.idle.sec"
        wait_copied $((2 * REPEATS + 2 * i + 3))
    done
    stop_agents "$PRI" "$SEC"
    fresh_files
    rm -f primary.img
}

# ---- 2, 4, 5: store growth, copy rate, restore ----

# snap_and_wait COUNT KEY: a snapshot through the primary, then until the
# secondary holds COUNT complete ones; the seconds from the command's
# return until then (polled every 0.1 s) in R[KEY].
snap_and_wait() {
    local t0 t1
    snap_create "$PRI" "create.$2"
    t0=$EPOCHREALTIME
    wait_copied "$1" $((120 + SNAP_MIB / 10))
    t1=$EPOCHREALTIME
    add "$2" "$(awk -v ms="$(ms_between "$t0" "$t1")" 'BEGIN { printf "%.3f", ms / 1000 }')"
}

store_case() {
    local n sb0 sb1 du0 du1 id1 id2 id3 sched0 seq_off
    log "store growth, copy rate and restore on a $SNAP_MIB MiB random volume"
    fresh_files
    dd if=/dev/urandom of=primary.img bs=1M count="$SNAP_MIB" iflag=fullblock status=none
    SEC_EXTRA_ARGS=(--snapshot-store "$STORE")
    start_pair sync
    wait_until -t $((60 + SNAP_MIB / 10)) -m "initial sync of $SNAP_MIB MiB" \
        "status_json $PRI | jq -e '.connection == \"connected\" and .sync == \"in-sync\" and .out_of_sync_bytes == 0' >/dev/null"

    # 4. The first snapshot: every block read from the replica, hashed,
    # packed and written to the store.
    du0=$(du_bytes)
    sched0=$(thread_sched "$(agent_pid "$SEC")")
    snap_and_wait 1 copy.full
    INFO[copy.sched]="$sched0 $(thread_sched "$(agent_pid "$SEC")")"
    id1=$SNAP_ID
    INFO[copy.agent_s]=$(sed -n "s/.*snapshot $id1 complete: .* copied in \([0-9.]*\) s.*/\1/p" "$SEC.log" | tail -n 1)
    INFO[grow.full.store]=$(store_bytes)
    INFO[grow.full.du]=$(($(du_bytes) - du0))
    INFO[grow.full.changed]=$((SNAP_MIB * MIB))

    # 2. 1 % of the 4 KiB blocks, scattered.
    n=$((SNAP_MIB * 256 / 100))
    sb0=$(store_bytes)
    du0=$(du_bytes)
    change_blocks 42 "$n"
    snap_and_wait 2 copy.scattered
    id2=$SNAP_ID
    sb1=$(store_bytes)
    du1=$(du_bytes)
    INFO[grow.scattered.changed]=$((n * 4096))
    INFO[grow.scattered.blocks]=$n
    INFO[grow.scattered.store]=$((sb1 - sb0))
    INFO[grow.scattered.du]=$((du1 - du0))

    # 2. SEQ_MIB as 1 MiB sequential writes, from a random MiB.
    seq_off=$((RANDOM % (SNAP_MIB - SEQ_MIB)))
    sb0=$sb1
    du0=$du1
    write_seq "$seq_off" "$SEQ_MIB"
    snap_and_wait 3 copy.seq
    id3=$SNAP_ID
    INFO[grow.seq.changed]=$((SEQ_MIB * MIB))
    INFO[grow.seq.store]=$(($(store_bytes) - sb0))
    INFO[grow.seq.du]=$(($(du_bytes) - du0))
    "$DUPLEXCTL" --control "$TESTDIR/$SEC.ctl" snapshot list --json >list.json ||
        fail "snapshot list failed"
    for s in "full:$id1" "scattered:$id2" "seq:$id3"; do
        INFO[grow.${s%%:*}.stored]=$(jq --argjson i "${s#*:}" '.[] | select(.id == $i) | .stored_bytes' list.json)
    done
    stop_agents "$PRI" "$SEC"   # the store is free for duplex-store

    # 5. Restores, every source in the page cache (as the store just
    # written is): onto an empty file, then the next snapshot onto it.
    rm -f replica.img restored.img
    cat primary.img "$STORE"/objects/pack/*/* >/dev/null
    timed restore-full "$DUPLEX_STORE" --store "$STORE" restore "$id1" --to "$TESTDIR/restored.img"
    add restore.full "$(awk -v ms="$T_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    INFO[restore.full.out]=$(cat "$TESTDIR/restore-full.out")
    timed restore-delta "$DUPLEX_STORE" --store "$STORE" restore "$id2" --to "$TESTDIR/restored.img"
    add restore.delta "$(awk -v ms="$T_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    INFO[restore.delta.out]=$(cat "$TESTDIR/restore-delta.out")
    INFO[restore.delta.written]=$(sed -n 's/.* blocks, \([0-9]*\) written.*/\1/p' "$TESTDIR/restore-delta.out")
    # The newest snapshot is the volume as it is now.
    "$DUPLEX_STORE" --store "$STORE" restore "$id3" --to "$TESTDIR/restored.img" >/dev/null ||
        fail "restore $id3 failed"
    compare_volumes primary.img restored.img
    rm -f restored.img
    timed cp-copy bash -c 'cp --sparse=never primary.img copy.img && sync copy.img'
    add restore.cp "$(awk -v ms="$T_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    rm -f copy.img
    timed dd-copy dd if=primary.img of=copy.img bs=1M conv=fdatasync status=none
    add restore.dd "$(awk -v ms="$T_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    rm -f copy.img
    fresh_files
}

# ---- 3. sync write latency while a snapshot copies ----

cbw_case() {
    local half=$((SNAP_MIB / 2)) jbytes
    log "4 KiB sync write latency while a snapshot copies (--snapshot-copy-rate $COPY_RATE)"
    fresh_files
    SEC_EXTRA_ARGS=(--snapshot-store "$STORE" --snapshot-copy-rate "$COPY_RATE")
    start_pair sync
    wait_until -t $((60 + SNAP_MIB / 10)) -m "initial sync of $SNAP_MIB MiB" \
        "status_json $PRI | jq -e '.connection == \"connected\" and .sync == \"in-sync\" and .out_of_sync_bytes == 0' >/dev/null"
    # fio writes the second half of the volume; the copier reads from the
    # first block on, at COPY_RATE, so it stays in the first half.
    fio_lat cbw.none --ioengine=nbd --uri="$NBD_URI" --rw=randwrite \
        --offset="${half}M" --size="${half}M"
    [ "$(snap_field copying)" = 0 ] || fail "a snapshot is copying before the first one"
    snap_create "$PRI" cbw.create
    fio_lat cbw.copying --ioengine=nbd --uri="$NBD_URI" --rw=randwrite \
        --offset="${half}M" --size="${half}M"
    INFO[cbw.live]=$(snap_field copying)
    INFO[cbw.done]=$(snap_field copying_blocks_done)
    INFO[cbw.total]=$(snap_field copying_blocks_total)
    { [ "${INFO[cbw.live]}" = 1 ] && [ "${INFO[cbw.done]}" -lt $((half * 256)) ]; } ||
        fail "the snapshot did not stay copying below the written half (copying ${INFO[cbw.live]}, ${INFO[cbw.done]} of ${INFO[cbw.total]} blocks done): lower BENCH_SNAP_COPY_RATE"
    jbytes=$(stat -c %s replica.meta.snapjournal)
    INFO[cbw.journaled]=$((jbytes / (4096 + 24)))
    stop_agents "$PRI" "$SEC"
    fresh_files
    # What a copy-before-write does besides the write itself, alone on the
    # same disk: read the old block (O_DIRECT, as the secondary does) and
    # append it to a journal with fdatasync.
    fio_lat disk.read --ioengine=psync --direct=1 --rw=randread \
        --filename="$TESTDIR/primary.img" --size="${SNAP_MIB}M" --runtime=5
    # (O_DSYNC: fio's write latency then includes the sync, as the
    # secondary's does; with --fdatasync=1 fio reports the sync apart.)
    rm -f journal.bin
    fio_lat disk.sync --ioengine=psync --rw=write --sync=dsync \
        --fallocate=none --filename="$TESTDIR/journal.bin" --size=256M --runtime=5
    rm -f journal.bin
}

# ---- run ----

T_START=$SECONDS
create_latency "$SMALL_MIB"
create_latency "$BIG_MIB"
store_case
cbw_case
INFO[load1]=$(cut -d' ' -f1-3 /proc/loadavg)
INFO[minutes]=$(awk -v s=$((SECONDS - T_START)) 'BEGIN { printf "%.1f", s / 60 }')

# ---- report ----

secs_of() { med "$1" 3; }
mibs() { awk -v m="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", m / s; else print "n/a" }'; }
# sched_text "BEFORE AFTER" (thread_sched twice): what the secondary's
# threads did in between.
sched_text() {
    awk '{ printf "main thread ran %.1f s and waited %.1f s for a core, the other threads (the store thread) ran %.1f s and waited %.1f s", ($5 - $1) / 1e9, ($6 - $2) / 1e9, ($7 - $3) / 1e9, ($8 - $4) / 1e9 }' <<<"$1"
}
lat_row() {
    local mib=$1 when=$2 k=lat.$1.$2 label kib
    if [ "$when" = copying ]; then
        kib=$((${INFO[lat.$mib.copying.jobs_bytes]} / 1024))
        label="while the first snapshot copies (${INFO[lat.$mib.copying.live]} copying at the end, META.snapjobs $kib KiB)"
    else
        label="nothing copying (64 blocks changed before each)"
    fi
    echo "| $mib MiB | $label | $(cell "$k.pri") | $(cell "$k.sec") | $(cell "$k.status.pri") | $(cell "$k.status.sec") | $(mratio "$k.pri" "$k.status.pri") | $(mratio "$k.sec" "$k.status.sec") | $(verdict "$(awk -v a="$(med "$k.pri")" -v b="$(med "$k.sec")" 'BEGIN { print (a > b ? a : b) }')" le 50) / $(verdict "$(awk -v a="$(vmax "$k.pri")" -v b="$(vmax "$k.sec")" 'BEGIN { print (a > b ? a : b) }')" le 50) |"
}
grow_row() {
    local k=grow.$1 label=$2
    echo "| $label | ${INFO[$k.changed]} | ${INFO[$k.store]} | $(ratio "${INFO[$k.store]}" "${INFO[$k.changed]}") | ${INFO[$k.du]} | $(ratio "${INFO[$k.du]}" "${INFO[$k.changed]}") | ${INFO[$k.stored]} | $(verdict "$(ratio "${INFO[$k.store]}" "${INFO[$k.changed]}")" le 1.53) |"
}

{
    echo "Snapshot benchmark, $(nproc) cores, $(uname -r), duplex ${INFO[commit]}$([ -z "${INFO[dirty]}" ] || echo " with uncommitted changes in ${INFO[dirty]}") (${INFO[build]:-?}), ${INFO[date]}; load average (1, 5, 15 min) at the start ${INFO[load0]}, at the end ${INFO[load1]}; ${INFO[minutes]} minutes.  Times: median (min–max) of $REPEATS unless one value."
    echo
    echo "**1. snapshot create latency** (ms, wall time of \`duplexctl --control SOCKET snapshot create --json\`; baseline \`duplexctl status --json\` on the same socket, just before each create).  Sparse volumes with $DATA_MIB MiB of random data; sync mode."
    echo
    echo "| volume | when | create on primary | create on secondary | status, primary | status, secondary | create ÷ status, primary | create ÷ status, secondary | ≤ 50 ms: median / max |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for mib in "$SMALL_MIB" "$BIG_MIB"; do
        echo "| $mib MiB | the first snapshot (full) | $(cell "lat.$mib.first") | | | | | | $(verdict "$(vmax "lat.$mib.first")" le 50) |"
        lat_row "$mib" copying
        lat_row "$mib" idle
    done
    echo
    for mib in "$SMALL_MIB" "$BIG_MIB"; do
        echo "First snapshot of the sparse $mib MiB volume, created → every snapshot above complete: ${INFO[lat.$mib.fullcopy.s]} s ($(mibs "$mib" "${INFO[lat.$mib.fullcopy.s]}") MiB/s of volume); meanwhile the secondary's $(sched_text "${INFO[lat.$mib.fullcopy.sched]}")."
    done
    echo
    echo "**2. store growth** (a $SNAP_MIB MiB volume of random data; bytes; store: the secondary's \`.snapshots.store_bytes\`; du: \`du -sb\` of the store; target ≤ 1.5 × changed + 2 %, i.e. ≤ 1.53×)"
    echo
    echo "| snapshot | bytes changed | store bytes added | ÷ changed | du -sb added | ÷ changed | the snapshot's stored_bytes | ≤ 1.53× |"
    echo "|---|---|---|---|---|---|---|---|"
    grow_row full "first (full), the whole volume"
    grow_row scattered "${INFO[grow.scattered.blocks]} random 4 KiB blocks (1 %)"
    grow_row seq "$SEQ_MIB MiB as 1 MiB sequential writes"
    echo
    echo "**3. sync 4 KiB randwrite qd1** (fio nbd, ${RUNTIME} s, on the second half of a $SNAP_MIB MiB random volume; µs, fio's total latency)"
    echo
    echo "| | p50 | p99 | mean | writes |"
    echo "|---|---|---|---|---|"
    echo "| no snapshot copying | $(med cbw.none.p50) | $(med cbw.none.p99) | $(med cbw.none.mean) | $(med cbw.none.ios 0) |"
    echo "| the first snapshot copying (--snapshot-copy-rate $COPY_RATE), every block fio writes still to copy | $(med cbw.copying.p50) | $(med cbw.copying.p99) | $(med cbw.copying.mean) | $(med cbw.copying.ios 0) |"
    echo "| copying ÷ none | $(mratio cbw.copying.p50 cbw.none.p50) | $(mratio cbw.copying.p99 cbw.none.p99) | $(mratio cbw.copying.mean cbw.none.mean) | |"
    echo "| the disk alone: 4 KiB O_DIRECT random read (fio psync, 5 s) | $(med disk.read.p50) | $(med disk.read.p99) | $(med disk.read.mean) | |"
    echo "| the disk alone: 4 KiB appending write, O_DSYNC (fio psync, 5 s) | $(med disk.sync.p50) | $(med disk.sync.p99) | $(med disk.sync.mean) | |"
    echo
    echo "Create while fio was idle: $(cell cbw.create) ms.  At the end of the copying run: ${INFO[cbw.done]} of ${INFO[cbw.total]} blocks copied, ${INFO[cbw.journaled]} blocks journaled by copy-before-write."
    echo
    echo "**4. background copy and restore rate** ($SNAP_MIB MiB of random data, the first (full) snapshot, no --snapshot-copy-rate)"
    echo
    echo "| | seconds | MiB/s | ÷ restore onto an empty file |"
    echo "|---|---|---|---|"
    echo "| snapshot copy, create returned → complete (polled 0.1 s) | $(secs_of copy.full) | $(mibs "$SNAP_MIB" "$(secs_of copy.full)") | $(ratio "$(secs_of restore.full)" "$(secs_of copy.full)") |"
    echo "| the agent's own \"copied in\" | ${INFO[copy.agent_s]} | $(mibs "$SNAP_MIB" "${INFO[copy.agent_s]}") | $(ratio "$(secs_of restore.full)" "${INFO[copy.agent_s]}") |"
    echo "| restore onto an empty file | $(secs_of restore.full) | $(mibs "$SNAP_MIB" "$(secs_of restore.full)") | 1.00 |"
    echo
    echo "During the copy the secondary's $(sched_text "${INFO[copy.sched]}").  Later snapshots, taken → complete: 1 % scattered $(secs_of copy.scattered) s, $SEQ_MIB MiB sequential $(secs_of copy.seq) s."
    echo
    echo "**5. restore** (\`duplex-store --store DIR restore ID --to FILE\`, $SNAP_MIB MiB; sources in the page cache)"
    echo
    echo "| | seconds | MiB/s of volume | time ÷ dd's |"
    echo "|---|---|---|---|"
    echo "| restore of the full snapshot onto an empty file | $(secs_of restore.full) | $(mibs "$SNAP_MIB" "$(secs_of restore.full)") | $(mratio restore.full restore.dd) |"
    echo "| restore of the next snapshot (1 % differs) onto that file: ${INFO[restore.delta.written]} blocks written | $(secs_of restore.delta) | $(mibs "$SNAP_MIB" "$(secs_of restore.delta)") | $(mratio restore.delta restore.dd) |"
    echo "| cp --sparse=never + sync | $(secs_of restore.cp) | $(mibs "$SNAP_MIB" "$(secs_of restore.cp)") | $(mratio restore.cp restore.dd) |"
    echo "| dd bs=1M conv=fdatasync | $(secs_of restore.dd) | $(mibs "$SNAP_MIB" "$(secs_of restore.dd)") | 1.00 |"
    echo
    echo "duplex-store said: ${INFO[restore.full.out]} / ${INFO[restore.delta.out]}"
} | tee ${OUT:+"$OUT"}
