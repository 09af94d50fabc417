# report.sh: the figures run-suite.sh collects, their statistics, and the
# report it writes (docs/BENCHMARKS.md and the chart).  Sourced by
# run-suite.sh after tests/integration/functions.sh; uses its variables
# (REPEATS, RUNTIME, the sizes, TESTDIR) and fail.
#
# Figures: R[KEY] holds the samples of one measurement ("v1 v2 v3"), one per
# repeat; INFO[KEY] holds one descriptive value (the last seen).
# shellcheck shell=bash

declare -A R=()
declare -A INFO=()

# add KEY VALUE: one more sample of KEY.
add() {
    [[ "$2" =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]] ||
        fail "figure $1: '$2' is not a number"
    R[$1]="${R[$1]:-}$2 "
}

# _stat KEY med|min|max: printed with %.Nf where N is $3 (default 1);
# "n/a" if KEY has no samples.
_stat() {
    local v=${R[$1]:-}
    [ -n "$v" ] || { echo n/a; return 0; }
    tr ' ' '\n' <<<"$v" | grep . | sort -g | awk -v w="$2" -v d="${3:-1}" '
        { a[NR] = $1 }
        END {
            if (w == "min") x = a[1]
            else if (w == "max") x = a[NR]
            else if (NR % 2) x = a[(NR + 1) / 2]
            else x = (a[NR / 2] + a[NR / 2 + 1]) / 2
            printf "%.*f", d, x
        }'
}
med() { _stat "$1" med "${2:-1}"; }
vmin() { _stat "$1" min "${2:-1}"; }
vmax() { _stat "$1" max "${2:-1}"; }

# cell KEY [DECIMALS]: "median (min–max)", or the one value.
cell() {
    local d=${2:-1} n
    [ -n "${R[$1]:-}" ] || { echo n/a; return 0; }
    n=$(wc -w <<<"${R[$1]}")
    if [ "$n" -gt 1 ]; then
        echo "$(med "$1" "$d") ($(vmin "$1" "$d")–$(vmax "$1" "$d"))"
    else
        med "$1" "$d"
    fi
}

# ratio A B: A / B with two decimals; n/a unless both are positive numbers.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a !~ /^[0-9.eE+-]+$/ || b !~ /^[0-9.eE+-]+$/ || b + 0 <= 0) print "n/a"
        else printf "%.2f", a / b }'
}
# mratio KEY_A KEY_B: ratio of the medians.
mratio() { ratio "$(med "$1" 6)" "$(med "$2" 6)"; }

# verdict VALUE ge|le LIMIT: "met" or "**not met**" ("n/a" without a value).
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (v !~ /^[0-9.eE+-]+$/) { print "n/a"; exit }
        ok = (op == "ge") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
        print ok ? "met" : "**not met**" }'
}

# ---- machine facts ----

machine_facts_begin() {
    INFO[date]=$(date -u '+%Y-%m-%d %H:%M UTC')
    INFO[start]=$SECONDS
    INFO[smoke]=${BENCH_SMOKE:-0}
    INFO[load0]=$(cut -d' ' -f1-3 /proc/loadavg)
    INFO[cores]=$(nproc)
    INFO[kernel]=$(uname -r)
    INFO[cpu]=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    INFO[mem]=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    INFO[fs]=$(df -PT "$TESTDIR" | awk 'NR == 2 { print $2 " on " $1 }')
    # The commit the binaries measured were built from (their --version);
    # uncommitted changes to the code they were built with are listed in
    # INFO[dirty] (docs a previous run rewrote do not count).
    INFO[commit]=$(built_commit)
    INFO[dirty]=$(code_changes "${INFO[commit]}")
    INFO[build]=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$DUPLEX_BUILD/CMakeCache.txt" 2>/dev/null || true)
    INFO[versions]="$(fio --version), nbdkit $(nbdkit --version | awk '{ print $2 }'), nbdcopy $(nbdcopy --version | awk 'NR == 1 { print $2 }'), $(openssl version | awk '{ print $1 " " $2 }'), rsync $(rsync --version | awk 'NR == 1 { print $3 }')"
    if command -v iperf3 >/dev/null; then
        INFO[versions]+=", $(iperf3 --version | awk 'NR == 1 { print $1 " " $2 }')"
    fi
}

machine_facts_end() {
    INFO[load1]=$(cut -d' ' -f1-3 /proc/loadavg)
    INFO[minutes]=$(awk -v s=$((SECONDS - INFO[start])) 'BEGIN { printf "%.1f", s / 60 }')
}

# ---- the report ----

_s1_row() {
    local label=$1 f=$2 d=$3
    echo "| $label | $(cell "s1.nbdkit.$f" "$d") | $(cell "s1.nosec.$f" "$d") | $(cell "s1.async.$f" "$d") | $(cell "s1.sync.$f" "$d") | $(mratio "s1.nosec.$f" "s1.nbdkit.$f") | $(mratio "s1.async.$f" "s1.nbdkit.$f") | $(mratio "s1.sync.$f" "s1.nbdkit.$f") | $(mratio "s1.sync.$f" "s1.nosec.$f") |"
}

report_write_cost() {
    cat <<EOF

## 1. Write cost

fio's nbd engine on the agent's (or nbdkit's) Unix socket; a ${FIO_MIB} MiB
volume file filled with random data (fully allocated) for every target;
each run ${RUNTIME} s after ${RAMP} s of ramp.  duplex writes its volume
with O_DIRECT, nbdkit (default \`cache=default\`) into the page cache.
Latency is fio's total latency (\`lat_percentiles\`), submission to
completion.  The pairs replicate over TLS 1.3 on loopback TCP; "no
secondary" is duplex-primary whose \`--peer\` is a closed port (it serves
alone and tracks the writes in
its bitmap).  Figures: median (min–max) of $REPEATS_TEXT; ratios of the
medians.

| figure | nbdkit file | duplex, no secondary | duplex async | duplex sync | no-sec ÷ nbdkit | async ÷ nbdkit | sync ÷ nbdkit | sync ÷ no-sec |
|---|---|---|---|---|---|---|---|---|
$(_s1_row "4 KiB randwrite qd1, p50 latency (µs)" p50 1)
$(_s1_row "4 KiB randwrite qd1, p99 latency (µs)" p99 1)
$(_s1_row "4 KiB randwrite qd32 (IOPS)" iops 0)
$(_s1_row "1 MiB seq write qd8 (MiB/s)" mibs 1)

For latency a ratio above 1 is a cost; for IOPS and MiB/s a ratio below 1
is.

Where the sync latency goes: the same sync pair once more with its replica
file in RAM (tmpfs under /dev/shm, which takes O_DIRECT), so that the
secondary's 4 KiB write no longer queues on the one virtual disk that also
holds the primary's volume.  What remains above "no secondary" is the
round trip over the link: encrypt, loopback TCP, wake the secondary,
decrypt, apply, acknowledge, wake the primary, with fio and both agents
sharing ${INFO[cores]} cores.  Beside it, one bare round trip between two
processes on this machine: fio's net engine, 4 KiB ping-pong over
loopback TCP without TLS (\`--ioengine=net --pingpong=1\`, p50).

| 4 KiB randwrite qd1, p50 (µs) | no secondary | sync | sync, replica in RAM | sync ÷ no-sec | sync in RAM ÷ no-sec | loopback TCP round trip | (no-sec + round trip) ÷ no-sec |
|---|---|---|---|---|---|---|---|
| median (min–max) | $(cell s1.nosec.p50 1) | $(cell s1.sync.p50 1) | $(cell s1.syncram.p50 1) | $(mratio s1.sync.p50 s1.nosec.p50) | $(mratio s1.syncram.p50 s1.nosec.p50) | $(cell limit.rtt 1) | $(awk -v a="$(med s1.nosec.p50 3)" -v b="$(med limit.rtt 3)" 'BEGIN { if (a > 0 && b != "") printf "%.2f", (a + b) / a; else print "n/a" }') |
EOF
}

report_initial_sync() {
    local tcp_row=""
    if [ -n "${R[limit.tcp]:-}" ]; then
        tcp_row="| loopback TCP, iperf3 (one stream) | $(cell limit.tcp) | $(mratio s2.wall limit.tcp) |"
    else
        tcp_row="| loopback TCP, iperf3 | not installed | |"
    fi
    cat <<EOF

## 2. Initial sync

A ${SYNC_MIB} MiB volume of random data, an empty secondary (no replica
file: it is created sparse).  duplex: from the primary's start to
connected, in sync and nothing pending (polled every 0.1 s), and the rate
from the agent's own \`resync_seconds\` (resync_kind: ${INFO[s2.kind]:-?}).
nbdcopy: the same image into \`nbdkit --tls=require file\` on an empty file,
over TLS on loopback TCP (\`nbds://localhost:PORT/?tls-certificates=DIR\`,
nbdcopy's defaults: 4 connections when the server allows multi-conn).
Machine limits from the same run: \`openssl speed -evp aes-128-gcm
-seconds $SPEED_SECS -bytes 16384\` (one core, the 16384-byte column),
iperf3 on 127.0.0.1, and the disk: both volumes live on the same disk
here, so an initial sync reads and writes every byte on it; \`dd bs=4M
iflag=direct oflag=direct\` copying the image into a new file on it is
what the disk allows for that.  MiB/s, median (min–max) of $REPEATS_TEXT.

| measurement | MiB/s | duplex (start → in sync) ÷ this |
|---|---|---|
| duplex, primary start → in sync | $(cell s2.wall) | 1.00 |
| duplex, agent's resync_seconds | $(cell s2.agent) | $(mratio s2.wall s2.agent) |
| nbdcopy → nbdkit file, TLS | $(cell s2.nbdcopy) | $(mratio s2.wall s2.nbdcopy) |
| AES-128-GCM, openssl speed, 1 core | $(cell limit.aes) | $(mratio s2.wall limit.aes) |
$tcp_row
| the disk: dd O_DIRECT copy of the image on it | $(cell limit.disk) | $(mratio s2.wall limit.disk) |

Bytes the primary sent for the sync: ${INFO[s2.sent]:-?} (volume: $((SYNC_MIB * MIB))).
EOF
}

# _s3_row MIB PCT
_s3_row() {
    local k=s3.$1.$2
    echo "| $1 MiB | ${INFO[$k.blocks]:-?} × 4 KiB ($(awk -v n="${INFO[$k.blocks]:-0}" 'BEGIN { printf "%.1f", n / 256 }') MiB, $2 % of $RESYNC_MIB MiB) | $(cell "$k.rsecs" 3) | $(cell "$k.conn" 3) | $(cell "$k.wall" 3) | $(cell "$k.rsync" 3) | $(mratio "$k.rsync" "$k.rsecs") | $(mratio "$k.rsync" "$k.wall") | ${INFO[$k.sent]:-?} | $(awk -v b="${INFO[$k.sent]:-0}" -v t="$(med "$k.rsecs" 6)" 'BEGIN { if (t > 0) printf "%.1f", b / 1048576 / t; else print "n/a" }') | ${INFO[$k.kind]:-?} |"
}

report_resync() {
    local big=$((2 * RESYNC_MIB)) pct
    cat <<EOF

## 3. Resync after an outage

A pair in sync on a volume of random data; the secondary stops; through
the primary's NBD socket the change overwrites distinct random 4 KiB blocks
with random data; the secondary restarts.  duplex: the agent's own
\`resync_seconds\` (the resync itself), the wall time from the secondary's
restart until the primary is connected again, and until it is in sync with
nothing pending (polled every 0.1 s).  The wall times include the
secondary's start, the TLS handshake and the wait for the primary's next
connection attempt: its retry interval doubles from 200 ms to 5 s while the
secondary is away (\`REPL_BACKOFF_*\` in primary/repl.c).  rsync: \`rsync
--inplace --no-whole-file --ignore-times\` bringing a copy of the old image
up to date with the same change (local files, so no ssh; both in the page
cache, where duplex reads and writes with O_DIRECT; \`--ignore-times\` so that the quick check cannot skip a file changed
within the second of the last copy).  Seconds, median (min–max) of
$REPEATS_TEXT; the doubled volume gets the same absolute change.

| volume | change | duplex resync_seconds | duplex restart → connected | duplex restart → in sync | rsync | rsync ÷ duplex (resync_seconds) | rsync ÷ duplex (restart → in sync) | resync bytes sent | MiB/s (sent ÷ resync_seconds) | resync_kind |
|---|---|---|---|---|---|---|---|---|---|---|
$(_s3_row "$RESYNC_MIB" 1)
$(_s3_row "$RESYNC_MIB" 10)
$(_s3_row "$big" 1)
$(_s3_row "$big" 10)

How each scales (ratios of medians): when the volume doubles with the same
change, and when the change grows tenfold on the same volume.

| change | duplex resync_seconds | duplex wall | rsync |
|---|---|---|---|
EOF
    for pct in 1 10; do
        echo "| $pct % of $RESYNC_MIB MiB: $big MiB ÷ $RESYNC_MIB MiB | $(mratio "s3.$big.$pct.rsecs" "s3.$RESYNC_MIB.$pct.rsecs") | $(mratio "s3.$big.$pct.wall" "s3.$RESYNC_MIB.$pct.wall") | $(mratio "s3.$big.$pct.rsync" "s3.$RESYNC_MIB.$pct.rsync") |"
    done
    echo "| $RESYNC_MIB MiB: 10 % ÷ 1 % | $(mratio "s3.$RESYNC_MIB.10.rsecs" "s3.$RESYNC_MIB.1.rsecs") | $(mratio "s3.$RESYNC_MIB.10.wall" "s3.$RESYNC_MIB.1.wall") | $(mratio "s3.$RESYNC_MIB.10.rsync" "s3.$RESYNC_MIB.1.rsync") |"
}

report_cpu() {
    local aes row
    aes=$(awk -v m="$(med limit.aes 3)" 'BEGIN { if (m > 0) printf "%.3f", 1024 / m; else print "n/a" }')
    cat <<EOF

## 4. CPU cost

CPU seconds (utime + stime from /proc/PID/stat) per GiB replicated, per
agent: for the initial sync of scenario 2 (the primary from its start, the
secondary from before the primary's start, both until in sync; GiB = the
volume), and for the 1 MiB sequential-write runs of scenario 1 (from before
the run until the replica caught up after it; GiB = the primary's
\`bytes_written\` in between).  Beside the cost of AES-128-GCM on one GiB from
\`openssl speed\` (1024 ÷ its MiB/s: $aes s), which each direction of TLS
pays once.  Median (min–max) of $REPEATS_TEXT.

| agent, run | CPU s per GiB | ÷ AES-128-GCM s per GiB |
|---|---|---|
EOF
    for row in "cpu.init.pri|primary, initial sync" "cpu.init.sec|secondary, initial sync" \
        "cpu.async.pri|primary, async 1 MiB seq write" "cpu.async.sec|secondary, async 1 MiB seq write" \
        "cpu.sync.pri|primary, sync 1 MiB seq write" "cpu.sync.sec|secondary, sync 1 MiB seq write" \
        "cpu.nosec.pri|primary without secondary, 1 MiB seq write (per GiB written)"; do
        echo "| ${row#*|} | $(cell "${row%%|*}" 3) | $(ratio "$(med "${row%%|*}" 6)" "$aes") |"
    done
}

report_memory() {
    local budget=$((64 + ASYNC_BUF_MIB)) row
    cat <<EOF

## 5. Memory

Peak RSS (VmHWM from /proc/PID/status, read just before the agent is
stopped) of each agent run in scenarios 1 and 2, beside the configured
\`--async-buffer ${ASYNC_BUF_MIB}M\` and the target's budget of 64 MiB plus
that buffer (${budget} MiB).  MiB, median (min–max) of $REPEATS_TEXT.

| agent, run | peak RSS (MiB) | --async-buffer (MiB) | ÷ budget (${budget} MiB) |
|---|---|---|---|
EOF
    for row in "mem.s1.nosec.pri|primary without secondary, scenario 1" \
        "mem.s1.async.pri|primary, async, scenario 1" "mem.s1.async.sec|secondary, async, scenario 1" \
        "mem.s1.sync.pri|primary, sync, scenario 1" "mem.s1.sync.sec|secondary, sync, scenario 1" \
        "mem.s2.pri|primary, initial sync" "mem.s2.sec|secondary, initial sync"; do
        echo "| ${row#*|} | $(cell "${row%%|*}") | $ASYNC_BUF_MIB | $(ratio "$(vmax "${row%%|*}" 3)" "$budget") (max) |"
    done
}

# The headline ratios, one per target: LABEL|RATIO|OP|LIMIT|MEASURED TEXT.
# Sets HEADLINES (an array) for the targets table and the chart.
_headlines() {
    local big=$((2 * RESYNC_MIB)) rss_max k v budget=$((64 + ASYNC_BUF_MIB))
    local r1 r2 r3 r4 r5 r5a r6a r6b r7a r7b grow
    r1=$(mratio s1.async.mibs s1.nbdkit.mibs)
    r2=$(mratio s1.sync.p50 s1.nosec.p50)
    r3=$(ratio "$(med s2.wall 6)" 1024)
    r4=$(mratio s2.wall s2.nbdcopy)
    r5=$(mratio "s3.$RESYNC_MIB.1.rsync" "s3.$RESYNC_MIB.1.wall")
    r5a=$(mratio "s3.$RESYNC_MIB.1.rsync" "s3.$RESYNC_MIB.1.rsecs")
    r6a=$(mratio "s3.$big.1.rsecs" "s3.$RESYNC_MIB.1.rsecs")
    r6b=$(mratio "s3.$big.10.rsecs" "s3.$RESYNC_MIB.10.rsecs")
    r7a=$(mratio "s3.$RESYNC_MIB.10.rsecs" "s3.$RESYNC_MIB.1.rsecs")
    r7b=$(mratio "s3.$big.10.rsecs" "s3.$big.1.rsecs")
    # Volume doubling: the worse of the two changes.
    grow=$(awk -v a="$r6a" -v b="$r6b" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else print (a > b ? a : b) }')
    rss_max=0
    for k in "${!R[@]}"; do
        [[ "$k" == mem.* ]] || continue
        v=$(vmax "$k" 1)
        rss_max=$(awk -v a="$rss_max" -v b="$v" 'BEGIN { print (b > a ? b : a) }')
    done
    HEADLINES=(
        "async 1M seq ÷ nbdkit|$r1|ge|0.9|async $(med s1.async.mibs) MiB/s, nbdkit $(med s1.nbdkit.mibs) MiB/s: ${r1}×"
        "sync 4K p50 ÷ no secondary|$r2|le|1.5|sync $(med s1.sync.p50) µs, no secondary $(med s1.nosec.p50) µs: ${r2}×"
        "initial sync ÷ 1 GiB/s|$r3|ge|1|$(med s2.wall) MiB/s start → in sync (agent's resync_seconds: $(med s2.agent) MiB/s), ${SYNC_MIB} MiB"
        "initial sync ÷ nbdcopy TLS|$r4|ge|4|$(med s2.wall) MiB/s vs nbdcopy → nbdkit TLS $(med s2.nbdcopy) MiB/s: ${r4}×"
        "rsync ÷ resync (1 % of $RESYNC_MIB MiB)|$r5a|ge|20|rsync $(med "s3.$RESYNC_MIB.1.rsync" 3) s, duplex resync_seconds $(med "s3.$RESYNC_MIB.1.rsecs" 3) s: ${r5a}× (secondary restart → in sync $(med "s3.$RESYNC_MIB.1.wall" 3) s: ${r5}×)"
        "resync: 2× volume, same change|$grow|le|1.25|resync_seconds ${big} MiB ÷ ${RESYNC_MIB} MiB: ${r6a}× (1 %), ${r6b}× (10 %); 10 % ÷ 1 %: ${r7a}× (${RESYNC_MIB} MiB), ${r7b}× (${big} MiB)"
        "peak RSS ÷ (64 MiB + buffer)|$(ratio "$rss_max" "$budget")|le|1|largest peak RSS $rss_max MiB, budget ${budget} MiB"
    )
    HEAD_GROWS=$(awk -v a="$r7a" -v b="$r7b" 'BEGIN { print ((a != "n/a" && b != "n/a" && a > 1 && b > 1) ? 1 : 0) }')
}

report_targets() {
    local h label r op lim text v i=0
    cat <<EOF

## Targets

| target | measured | |
|---|---|---|
EOF
    for h in "${HEADLINES[@]}"; do
        IFS='|' read -r label r op lim text <<<"$h"
        v=$(verdict "$r" "$op" "$lim")
        case $i in
            0) label="async 1 MiB sequential write ≥ 0.9× nbdkit's file plugin" ;;
            1) label="sync 4 KiB qd1 p50 latency ≤ 1.5× duplex-primary with no secondary" ;;
            2) label="initial sync ≥ 1 GiB/s over TLS" ;;
            3) label="initial sync ≥ 4× the nbdcopy → nbdkit TLS copy" ;;
            4) label="resync of 1 % of ${RESYNC_MIB} MiB ≥ 20× faster than rsync (the agent's resync_seconds)" ;;
            5)
                label="resync time grows with the changed bytes, not the volume (doubled volume ≤ 1.25×, tenfold change > 1×)"
                if [ "$v" = met ] && [ "$HEAD_GROWS" != 1 ]; then v="**not met**"; fi
                ;;
            6) label="peak RSS ≤ 64 MiB + async buffer" ;;
        esac
        echo "| $label | $text | $v |"
        i=$((i + 1))
    done
    echo
    echo "Figures are medians; the sections below give min–max and the method."
}

# write_chart PNG: gnuplot bar chart of the headline ratios beside their
# targets (log scale; green met, red not).
write_chart() {
    local png=$1 dat=$TESTDIR/headlines.dat h label r op lim text met i=0
    : >"$dat"
    for h in "${HEADLINES[@]}"; do
        IFS='|' read -r label r op lim text <<<"$h"
        [ "$r" != n/a ] || r=0
        met=0
        [ "$(verdict "$r" "$op" "$lim")" = met ] && met=1
        [ "$op" = ge ] && op="≥" || op="≤"
        printf '%d\t"%s"\t%s\t%s\t%d\t"%s %s"\n' "$i" "$label" "$r" "$lim" "$met" "$op" "$lim" >>"$dat"
        i=$((i + 1))
    done
    run gnuplot gnuplot -e "datafile='$dat'; outfile='$png'; subtitle='${INFO[cores]} cores, ${INFO[kernel]}, ${INFO[date]}, median of $REPEATS'" \
        "$DUPLEX_SRC/tests/bench/chart.gp"
}

write_report() {
    local md=$1 png=$2 img
    REPEATS_TEXT="$REPEATS run"
    [ "$REPEATS" -eq 1 ] || REPEATS_TEXT+=s
    _headlines
    mkdir -p "$(dirname "$md")" "$(dirname "$png")"
    write_chart "$png"
    if [ "$(dirname "$png")" = "$(dirname "$md")" ]; then
        img=$(basename "$png")
    else
        img=$png
    fi
    {
        cat <<EOF
# duplex benchmarks

Written by \`tests/bench/run-suite.sh\` on ${INFO[date]}; every baseline was
measured in the same run, on the same machine, with the same files.

- Machine: ${INFO[cores]} cores, ${INFO[cpu]}, ${INFO[mem]} RAM, kernel ${INFO[kernel]}; images on ${INFO[fs]}.  The duplex agents open their volumes with O_DIRECT; nbdkit's file plugin (1.32 has no O_DIRECT mode), nbdcopy's source and rsync go through the page cache, which holds every image.
- Load average (1, 5, 15 min) at the start ${INFO[load0]}, at the end ${INFO[load1]}.
- duplex ${INFO[commit]}$( [ -z "${INFO[dirty]}" ] || echo " (uncommitted changes in ${INFO[dirty]})"), CMAKE_BUILD_TYPE=${INFO[build]:-?}; replication over TLS 1.3 on loopback TCP, --async-buffer ${ASYNC_BUF_MIB}M.
- ${INFO[versions]}.
- $REPEATS_TEXT of each measurement; the suite took ${INFO[minutes]} minutes$( [ "${INFO[smoke]:-0}" = 1 ] && echo " (BENCH_SMOKE=1: tiny sizes, not figures to quote)").

![headline ratios]($img)
EOF
        report_targets
        report_write_cost
        report_initial_sync
        report_resync
        report_cpu
        report_memory
        # The snapshot benchmark is a script of its own
        # (tests/bench/bench-snapshot.sh); its section, written by hand
        # from that script's output, survives regeneration here.
        if [ -s "$DUPLEX_SRC/docs/benchmarks-snapshot.md" ]; then
            printf '\n'
            cat "$DUPLEX_SRC/docs/benchmarks-snapshot.md"
        fi
        # Likewise the restore benchmark (tests/bench/bench-restore.sh).
        if [ -s "$DUPLEX_SRC/docs/benchmarks-restore.md" ]; then
            printf '\n'
            cat "$DUPLEX_SRC/docs/benchmarks-restore.md"
        fi
        # And the tail capture benchmark (tests/bench/bench-tail.sh).
        if [ -s "$DUPLEX_SRC/docs/benchmarks-tail.md" ]; then
            printf '\n'
            cat "$DUPLEX_SRC/docs/benchmarks-tail.md"
        fi
        # Hand-written explanations (e.g. why a target is not met on this
        # machine) survive regeneration in a file of their own.
        if [ -s "$DUPLEX_SRC/docs/benchmarks-notes.md" ]; then
            printf '\n## Notes\n\n(from docs/benchmarks-notes.md)\n\n'
            cat "$DUPLEX_SRC/docs/benchmarks-notes.md"
        fi
    } >"$md.tmp"
    mv "$md.tmp" "$md"
}
