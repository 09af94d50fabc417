#!/bin/bash
# Restore benchmark (issue 10): what `duplexctl restore` costs, beside the
# baselines a user would pick instead, measured in the same run.
#
#   DUPLEX_BUILD=build-release tests/bench/bench-restore.sh [OUT.md]
#
# A VOL_MIB volume holding DATA_MIB of random data (1 MiB pieces), its
# first snapshot (A), then CHANGE_MIB rewritten as 1 MiB pieces at random
# and a second snapshot (B).  Then, alternating between A and B (each
# restore moves the same CHANGE_MIB back or forth):
#
# 1. `restore --snapshot` (clients refused): wall time from the command to
#    `sync: in-sync` (the volume holds the snapshot and the replica the
#    volume), bytes fetched ÷ bytes that differ.
# 2. `restore --snapshot --instant`: time from the command to the first
#    answered read (64 KiB of the last region the background copy reaches:
#    python + libnbd, process start included) and to in-sync.
# Baselines, with the agents stopped: `duplex-store restore` of the same
# snapshot onto a copy of the volume in the other state (local, writes only
# the blocks that differ), and `dd bs=1M conv=fdatasync` of the whole
# volume image (a full copy from a backup).
#
# Prints a markdown table on stdout (and to OUT.md if given).  Environment
# (defaults): BENCH_RESTORE_REPEATS (3), BENCH_RESTORE_VOL_MIB (2048),
# BENCH_RESTORE_DATA_MIB (1024), BENCH_RESTORE_CHANGE_MIB (204, 10 % of
# the volume), TMPDIR (needs about 5 x VOL_MIB free).
DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-1800}
TEST_NAME=bench-restore
[ -z "${DUPLEX_BUILD:-}" ] || DUPLEX_BUILD=$(realpath -m "$DUPLEX_BUILD")
OUT=${1:+$(realpath -m "$1")}
# shellcheck source=../integration/functions.sh
source "$(dirname "$0")/../integration/functions.sh"
# shellcheck source=report.sh
source "$DUPLEX_SRC/tests/bench/report.sh"   # add, med, vmin, vmax
requires jq awk dd
requires_python_nbd
export LC_ALL=C

REPEATS=${BENCH_RESTORE_REPEATS:-3}
VOL_MIB=${BENCH_RESTORE_VOL_MIB:-2048}
DATA_MIB=${BENCH_RESTORE_DATA_MIB:-1024}
CHANGE_MIB=${BENCH_RESTORE_CHANGE_MIB:-204}
for v in REPEATS VOL_MIB DATA_MIB CHANGE_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || fail "$v=${!v} is not a positive integer"
done
t_start=$SECONDS
load0=$(cut -d' ' -f1-3 /proc/loadavg)

# ms_since A: milliseconds from $EPOCHREALTIME A to now.
ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

"$PYTHON" - primary.img "$VOL_MIB" "$DATA_MIB" <<'EOF'
import os, random, sys
path, vol, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
with open(path, "wb") as f:
    f.truncate(vol << 20)
    for m in rng.sample(range(vol), data):
        f.seek(m << 20)
        f.write(os.urandom(1 << 20))
EOF
SEC_EXTRA_ARGS=(--snapshot-store "$TESTDIR/S")
start_pair sync
wait_in_sync pri sec
CTL=("$DUPLEXCTL" --control "$TESTDIR/pri.ctl")
copied() {
    wait_until -t 600 -m "snapshots copied" \
        "[ \"\$(status_json sec | jq '.snapshots.copying')\" = 0 ]"
}
A=$("${CTL[@]}" snapshot create --name A --json | jq -r .id)
copied
cp --sparse=always primary.img stateA.img
"$PYTHON" - "$NBD_URI" "$VOL_MIB" "$CHANGE_MIB" changes.json <<'EOF'
import json, os, random, sys
import nbd
uri, vol, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
h = nbd.NBD()
h.connect_uri(uri)
ms = random.Random(2).sample(range(vol), n)
for m in ms:
    h.pwrite(os.urandom(1 << 20), m << 20)
h.flush()
h.shutdown()
json.dump(sorted(ms), open(out, "w"))
EOF
wait_in_sync pri sec
B=$("${CTL[@]}" snapshot create --name B --json | jq -r .id)
copied
cp --sparse=always primary.img stateB.img
differ_bytes=$("$PYTHON" - stateA.img stateB.img <<'EOF'
import sys
n = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(1 << 20), b.read(1 << 20)
        if not x:
            break
        for i in range(0, len(x), 4096):
            n += x[i:i + 4096] != y[i:i + 4096]
print(n * 4096)
EOF
)
last_mib=$(jq 'max' changes.json)
log "volume $VOL_MIB MiB, $DATA_MIB MiB of data; A=$A, B=$B differ in $differ_bytes bytes"

# restore ID [--instant]: time to in-sync (R[...]) and, with --instant, to
# the first read.
state=B
restore() {
    local id=$1 instant=${2:-} t0 fetched
    t0=$EPOCHREALTIME
    "${CTL[@]}" restore --snapshot "$id" $instant >/dev/null || fail "restore $id $instant failed"
    if [ -n "$instant" ]; then
        "$PYTHON" - "$NBD_URI" "$last_mib" <<'EOF' || fail "first read failed"
import sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(65536, int(sys.argv[2]) << 20)
h.shutdown()
EOF
        add first_read "$(ms_since "$t0")"
    fi
    wait_until -t 600 -m "restore $id done" \
        '[ "$(status_json pri | jq -r .restore.state)" = done ] && [ "$(status_field pri sync)" = in-sync ]'
    add "total${instant:+_instant}" "$(ms_since "$t0")"
    fetched=$(status_json pri | jq -r .restore.fetched_bytes)
    add "fetched${instant:+_instant}" "$fetched"
}
for ((i = 0; i < REPEATS; i++)); do
    restore "$A"; state=A
    restore "$B"; state=B
done
for ((i = 0; i < REPEATS; i++)); do
    restore "$A" --instant; state=A
    restore "$B" --instant; state=B
done
cmp -s primary.img stateB.img || fail "the volume is not in state B after the last restore"
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"

# Baselines.
for ((i = 0; i < 2 * REPEATS; i++)); do
    cp --sparse=always stateB.img target.img
    sync
    t0=$EPOCHREALTIME
    "$DUPLEX_BUILD/duplex-store" --store S restore "$A" --to target.img >/dev/null ||
        fail "duplex-store restore failed"
    add store_restore "$(ms_since "$t0")"
    cmp -s target.img stateA.img || fail "duplex-store restore gave the wrong bytes"
    t0=$EPOCHREALTIME
    dd if=stateA.img of=target.img bs=1M conv=fdatasync,notrunc status=none ||
        fail "dd failed"
    add dd_full "$(ms_since "$t0")"
done

# fmt KEY: "median (min–max)".
fmt() { printf '%s (%s–%s)' "$(med "$1" 1)" "$(vmin "$1" 1)" "$(vmax "$1" 1)"; }
r() { awk -v a="$(med "$1" 6)" -v b="$(med "$2" 6)" 'BEGIN { printf "%.2f", a / b }'; }
mibs() { awk -v b="$differ_bytes" -v ms="$(med "$1" 6)" 'BEGIN { printf "%.1f", b / 1048576 / (ms / 1000) }'; }
{
    echo "Restore of $((differ_bytes / 1048576)) MiB that differ on a $VOL_MIB MiB volume ($DATA_MIB MiB of data), sync pair over TLS on loopback, $((2 * REPEATS)) restores each way; load at the start $load0, at the end $(cut -d' ' -f1-3 /proc/loadavg); $(( (SECONDS - t_start) / 60 )) minutes; duplex $(built_commit)."
    echo
    echo "| measurement | ms, median (min–max) | MiB/s of differing data | ratio |"
    echo "|---|---|---|---|"
    echo "| \`restore --snapshot\` → in-sync | $(fmt total) | $(mibs total) | 1 |"
    echo "| \`restore --snapshot --instant\` → first read answered | $(fmt first_read) | | $(r first_read total) of the restore |"
    echo "| \`restore --snapshot --instant\` → in-sync | $(fmt total_instant) | $(mibs total_instant) | $(r total_instant total) |"
    echo "| baseline: \`duplex-store restore\` onto the volume in the other state (local, no link) | $(fmt store_restore) | $(mibs store_restore) | restore ÷ this: $(r total store_restore) |"
    echo "| baseline: \`dd bs=1M conv=fdatasync\` of the whole $VOL_MIB MiB image | $(fmt dd_full) | | restore ÷ this: $(r total dd_full) |"
    echo
    echo "Bytes fetched ÷ bytes that differ: $(awk -v a="$(med fetched 6)" -v b="$differ_bytes" 'BEGIN { printf "%.3f", a / b }') (restore), $(awk -v a="$(med fetched_instant 6)" -v b="$differ_bytes" 'BEGIN { printf "%.3f", a / b }') (instant)."
} | tee ${OUT:+"$OUT"}
