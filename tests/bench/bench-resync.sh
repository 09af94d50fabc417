#!/bin/bash
# Resync benchmark: after an outage during which PCT % of the 4 KiB blocks
# of a SIZE_MIB volume changed, how long until the replica is in sync again,
# beside `rsync --inplace --no-whole-file` bringing a copy of the old image
# up to date with the same change (--ignore-times: never skip by mtime),
# measured in the same run.
#
#   DUPLEX_BUILD=build-release tests/bench/bench-resync.sh [OUT.md]
#   (BENCH_SIZE_MIB=1024 BENCH_PCT=1 by default)
DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-3000}
TEST_NAME=bench-resync
source "$(dirname "$0")/../integration/functions.sh"
requires rsync jq bc
requires_python_nbd

OUT=${1:-}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
PCT=${BENCH_PCT:-1}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

head -c "$((SIZE_MIB * 1048576))" /dev/urandom >primary.img
PAIR_PROXY=1 start_pair sync --peer-timeout 3
wait_in_sync "$PRI"
stop_agent "$SEC"
cp --sparse=never replica.img old.img          # the state before the change
wait_until -m "primary notices the outage" \
    '[ "$(status_field "$PRI" connection)" != connected ]'

# The change: PCT % of the 4 KiB blocks, random offsets, fixed seed.
blocks=$((SIZE_MIB * 256 * PCT / 100))
"$PYTHON" - "$NBD_URI" "$SIZE_MIB" "$blocks" <<'PY'
import nbd, os, random, sys
uri, size_mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(42)
h = nbd.NBD()
h.connect_uri(uri)
for off in random.sample(range(size_mib * 256), n):
    h.pwrite(os.urandom(4096), off * 4096)
h.flush()
h.shutdown()
PY
written=$(status_field "$PRI" bytes_written)

# duplex: the secondary comes back; time until in sync.
t0=$(now_ms)
start_secondary "$SEC" --volume "$TESTDIR/replica.img" \
    --meta "$TESTDIR/replica.meta" --listen "127.0.0.1:$SECONDARY_PORT" \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary
wait_until -t 600 -m "resync finished" \
    "status_json $PRI | jq -e '.connection == \"connected\" and .sync == \"in-sync\"' >/dev/null"
t1=$(now_ms)
resync_sent=$(status_field "$PRI" resync_bytes_sent)
resync_secs=$(status_field "$PRI" resync_seconds)
decision=$(status_field "$PRI" sync_decision)
cmp primary.img replica.img || fail "replica differs after the resync"
duplex_ms=$((t1 - t0))

# rsync: bring the old copy up to date with the same change.
t0=$(now_ms)
rsync --inplace --no-whole-file --ignore-times primary.img old.img
t1=$(now_ms)
rsync_ms=$((t1 - t0))
cmp primary.img old.img || fail "rsync copy differs"

secs() { echo "scale=3; $1 / 1000" | bc; }
{
    echo "| resync after $PCT % of 4 KiB blocks of $SIZE_MIB MiB changed | duplex (TLS, loopback) | rsync --inplace --no-whole-file (local) | rsync/duplex |"
    echo "|---|---|---|---|"
    echo "| seconds, secondary restart to in sync | $(secs $duplex_ms) | $(secs $rsync_ms) | $(echo "scale=1; $rsync_ms / $duplex_ms" | bc) |"
    echo "| seconds, the resync itself | $resync_secs | $(secs $rsync_ms) | $(echo "scale=1; $rsync_ms / 1000 / $resync_secs" | bc) |"
    echo
    echo "written while apart: $written bytes; resync sent: $resync_sent bytes (ratio $(echo "scale=2; $resync_sent / $written" | bc)); decision: $decision; resync rate: $(echo "scale=1; $resync_sent / 1048576 / $resync_secs" | bc) MiB/s"
    echo "Machine: $(nproc) cores, $(uname -r)"
} | tee ${OUT:+"$OUT"}
