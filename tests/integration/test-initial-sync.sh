#!/bin/bash
# Initial sync of a non-empty primary to an empty secondary: the primary
# starts alone with data already on its volume (and keeps serving writes
# while the sync runs); the secondary's replica file does not exist yet.
# The sync ends byte-identical, the replica was created at the primary's
# size, and all-zero ranges were sent as zero ranges, not data
# (resync_data_bytes_sent close to the non-zero data size).
source "$(dirname "$0")/functions.sh"
requires_python_nbd

size_mib=256
size=$((size_mib * 1024 * 1024))
make_pattern_image primary.img $size_mib >/dev/null
# A few small islands of data inside otherwise zero megabytes.
for off in 7 77 177 250; do
    head -c 4096 /dev/urandom |
        dd of=primary.img bs=4096 seek=$((off * 256 + 3)) conv=notrunc status=none
done
# Exact non-zero bytes, and an upper bound: every 1 MiB chunk holding any
# non-zero byte sent whole.
read -r nonzero chunky < <("$PYTHON" - primary.img <<'PY'
import sys
MiB = 1 << 20
nz = chunks = 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(MiB)
        if not b:
            break
        n = len(b) - b.count(0)
        if n:
            chunks += 1
            # bytes of 4 KiB blocks that are not all zero
            nz += sum(4096 for i in range(0, len(b), 4096) if b[i:i + 4096].count(0) != 4096)
print(nz, chunks * MiB)
PY
)
log "primary volume: $nonzero bytes in non-zero 4 KiB blocks, $chunky in non-zero 1 MiB chunks, of $size"

make_certs "$CERTS" primary secondary
# The primary first, with no secondary listening yet: a port nobody uses.
port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_primary pri --volume "$TESTDIR/primary.img" --meta "$TESTDIR/primary.meta" \
    --nbd "unix:$TESTDIR/pri.sock" --peer "127.0.0.1:$port" --mode sync \
    --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name secondary
NBD_SOCK=$TESTDIR/pri.sock
c=$(status_field pri connection)
[ "$c" != connected ] || fail "primary says connected with no secondary"
[ "$(status_field pri size_bytes)" = "$size" ] || fail "primary size_bytes is not $size"
# It serves NBD while alone.
"$PYTHON" -c 'import nbd, sys; h = nbd.NBD(); h.connect_unix(sys.argv[1]); assert h.get_size() == int(sys.argv[2])' \
    "$NBD_SOCK" "$size" || fail "primary does not serve NBD without its secondary"

[ ! -e replica.img ] || fail "replica.img exists before the test made it"
start_secondary sec --volume "$TESTDIR/replica.img" --meta "$TESTDIR/replica.meta" \
    --listen "127.0.0.1:$port" \
    --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
    --tls-ca "$CERTS/ca.pem" --peer-name primary

# While the sync runs, a client overwrites blocks inside the data regions
# (so the zero-range bound above still holds) and samples progress.
nbd_python "$NBD_SOCK" "$TESTDIR/primary.img" "$TESTDIR/pri.ctl" "$DUPLEXCTL" \
    >during.txt <<'PY' || { cat during.txt; fail "writes during the initial sync failed"; }
import json, os, random, subprocess, sys
import nbd
sock, vol, ctl, duplexctl = sys.argv[1:5]
h = nbd.NBD()
h.connect_unix(sock)
rng = random.Random(5)
f = open(vol, "rb")
seen = set()
writes = 0
for i in range(300):
    off = rng.randrange(0, h.get_size() // 4096) * 4096
    f.seek(off)
    if f.read(4096).count(0) == 4096:
        continue            # keep zero blocks zero
    h.pwrite(os.urandom(4096), off)
    writes += 1
    if i % 10 == 0:
        s = json.loads(subprocess.run([duplexctl, "--control", ctl, "status", "--json"],
                                      check=True, capture_output=True, text=True).stdout)
        seen.add((s["sync"], s["sync_done_percent"]))
h.flush()
h.shutdown()
print(f"{writes} writes during the sync; (sync, percent) seen: {sorted(seen, key=str)}")
PY
cat during.txt

wait_in_sync pri sec
s=$(status_json pri)
log "primary status after the sync: $s"
[ -f replica.img ] || fail "the secondary did not create replica.img"
[ "$(stat -c %s replica.img)" = "$size" ] ||
    fail "replica.img is $(stat -c %s replica.img) bytes, the primary $size"
compare_volumes primary.img replica.img

data_sent=$(jq -r .resync_data_bytes_sent <<<"$s")
zero_sent=$(jq -r .resync_zero_bytes_sent <<<"$s")
total=$(jq -r .resync_total_bytes <<<"$s")
done_b=$(jq -r .resync_done_bytes <<<"$s")
pct=$(jq -r .sync_done_percent <<<"$s")
log "resync: total $total done $done_b data $data_sent zero $zero_sent percent $pct"
[ "$total" = "$size" ] || fail "resync_total_bytes $total, expected the volume size $size"
[ "$done_b" = "$total" ] || fail "resync_done_bytes $done_b != resync_total_bytes $total"
[ "${pct%.*}" = 100 ] || fail "sync_done_percent is $pct after the sync"
[ "$data_sent" -ge "$nonzero" ] ||
    fail "resync_data_bytes_sent $data_sent < $nonzero non-zero bytes: data went missing?"
[ "$data_sent" -le "$chunky" ] ||
    fail "resync_data_bytes_sent $data_sent > $chunky (every non-zero MiB whole): zero ranges were sent as data"
[ $((data_sent + zero_sent)) -ge "$size" ] ||
    fail "resync sent $data_sent data + $zero_sent zero bytes, less than the volume ($size)"
# All replication traffic: the data, not the whole volume, plus overhead.
sent=$(jq -r .bytes_sent <<<"$s")
[ "$sent" -lt $((chunky + 16 * 1024 * 1024)) ] ||
    fail "primary bytes_sent $sent for $chunky bytes of data: zero ranges sent as data?"

stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"
compare_volumes primary.img replica.img
