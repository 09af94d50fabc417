#!/bin/bash
# A new data generation is on disk before the first change the secondary
# does not get, or that change does not happen.  In each mode: the link is
# cut, the primary's superblock writes are made to fail (tests/tools/
# failwrite.so, LD_PRELOAD, armed by a trigger file), and an aligned write,
# an unaligned write (read-modify-write), a trim and a write-zeroes are
# sent: each must fail with EIO and leave the volume's bytes unchanged, the
# generation must stay as it was, and status (JSON and text) and the log
# must say why.  A flush still succeeds.  Once the failure is lifted the
# next write succeeds under a new generation (the old one becomes the
# bitmap generation), and after the link is back the replica is resynced
# to the primary's data.
source "$(dirname "$0")/functions.sh"
requires_python_nbd

FAILWRITE=$DUPLEX_BUILD/tests/failwrite.so
[ -f "$FAILWRITE" ] || fail "$FAILWRITE not built"
MiB=$((1 << 20))

# The primary runs under the shim: a wrapper that execs it (same pid, so
# the harness's pidfile check holds).  Only superblock writes (slots A and
# B, bytes 0..8191 of the metadata file) fail; activity-log and bitmap
# writes go through.
cat >primary-failwrite <<EOF
#!/bin/sh
export LD_PRELOAD="$FAILWRITE"
export FAILWRITE_PATH="$TESTDIR/primary.meta"
export FAILWRITE_TRIGGER="$TESTDIR/meta.fail"
export FAILWRITE_RANGE=0+8192
export FAILWRITE_LOG="$TESTDIR/failwrite.log"
# The sanitizer runtime need not come first when the shim is preloaded.
export ASAN_OPTIONS="\${ASAN_OPTIONS:+\$ASAN_OPTIONS:}verify_asan_link_order=0"
exec "$PRIMARY_BIN" "\$@"
EOF
chmod +x primary-failwrite
PRIMARY_BIN=$TESTDIR/primary-failwrite

# The client's side of the failed requests, in Python (libnbd): each must
# fail with EIO, and the volume (read back through NBD and from the file)
# must hold what it held before.  A flush must succeed.
failing_requests() {
    timeout $((60 * SLOW)) "$PYTHON" - "$@" <<'PY'
import errno, sys
import nbd

sock, image, mib = sys.argv[1], sys.argv[2], 1 << 20
# (what, offset, length)
reqs = [("write", 1 * mib, 4096),
        ("unaligned write", 5 * mib + 100, 1000),
        ("trim", 9 * mib, 65536),
        ("write-zeroes", 13 * mib, 65536)]

def from_file(off, n):
    with open(image, "rb") as f:
        f.seek(off)
        return f.read(n)

before = {what: from_file(off, n) for what, off, n in reqs}
h = nbd.NBD()
h.connect_unix(sock)
bad = []
for what, off, n in reqs:
    try:
        if what.endswith("write"):
            h.pwrite(bytes([0xA5]) * n, off)
        elif what == "trim":
            if not h.can_trim():
                sys.exit("the primary does not offer trim")
            h.trim(n, off)
        else:
            h.zero(n, off)
        bad.append("%s at %d succeeded" % (what, off))
    except nbd.Error as e:
        if e.errnum != errno.EIO:
            bad.append("%s at %d failed with %s, not EIO" % (what, off, e))
h.flush()
for what, off, n in reqs:
    if h.pread(n, off) != before[what]:
        bad.append("%s at %d: NBD reads changed bytes" % (what, off))
    if from_file(off, n) != before[what]:
        bad.append("%s at %d: the volume file holds changed bytes" % (what, off))
h.shutdown()
if bad:
    sys.exit("; ".join(bad))
PY
}

# write_one SOCKET OFFSET SEED: one 4 KiB write that must succeed; prints
# nothing.  check_one FILE OFFSET SEED: FILE holds it.
write_one() {
    timeout $((60 * SLOW)) "$PYTHON" - "$@" <<'PY'
import random, sys
import nbd
sock, off, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_unix(sock)
h.pwrite(random.Random(seed).randbytes(4096), off)
h.flush()
h.shutdown()
PY
}
check_one() {
    "$PYTHON" - "$@" <<'PY'
import random, sys
path, off, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    f.seek(off)
    if f.read(4096) != random.Random(seed).randbytes(4096):
        sys.exit("%s: wrong data at %d" % (path, off))
PY
}

gen_field() { status_json pri | jq -r ".generation.$1"; }

run_mode() {
    local mode=$1 gen0 s acked0 errors text
    log "---- $mode mode ----"
    rm -f primary.img primary.meta replica.img replica.meta meta.fail \
        failwrite.log
    head -c $((32 * MiB)) /dev/urandom >primary.img
    PAIR_PROXY=1 start_pair "$mode" --peer-timeout 3
    wait_in_sync pri sec
    gen0=$(gen_field current)

    proxy_cmd px cut >/dev/null
    wait_status pri connection connecting
    acked0=$(status_field pri writes_acked)

    # ---- superblock writes fail: no generation, no change ----
    touch meta.fail
    failing_requests "$NBD_SOCK" "$TESTDIR/primary.img" ||
        fail "$mode: requests needing a new generation were not refused cleanly"
    [ -s failwrite.log ] || fail "$mode: the shim injected no failure"
    s=$(status_json pri)
    [ "$(jq -r .generation.current <<<"$s")" = "$gen0" ] ||
        fail "$mode: generation changed although it was not recorded: $(jq -c .generation <<<"$s")"
    [ "$(jq -r .writes_acked <<<"$s")" -eq "$acked0" ] ||
        fail "$mode: writes_acked grew from $acked0 to $(jq -r .writes_acked <<<"$s")"
    jq -e '.metadata_error | type == "string" and
            test("new data generation") and test("primary.meta") and
            test("Input/output error")' >/dev/null <<<"$s" ||
        fail "$mode: metadata_error does not say why: $(jq -c .metadata_error <<<"$s")"
    # Every refused request tried again: one failed attempt each.
    errors=$(jq -r .metadata_write_errors <<<"$s")
    [ "$errors" -eq 4 ] ||
        fail "$mode: metadata_write_errors is $errors, expected 4 (one per request)"
    text=$("$DUPLEXCTL" --control "$TESTDIR/pri.ctl" status)
    grep -q '^metadata:.*new data generation' <<<"$text" ||
        fail "$mode: text status does not show the metadata error: $text"
    grep -q 'cannot record a new data generation.*Input/output error.*fail' pri.log ||
        fail "$mode: pri.log does not explain the failed generation"
    log "$mode: refused: $(jq -c '{metadata_error, metadata_write_errors}' <<<"$s")"

    # ---- lifted: the next write starts the generation ----
    rm -f meta.fail
    write_one "$NBD_SOCK" $((1 * MiB)) 7 || fail "$mode: write after the failure was lifted failed"
    check_one primary.img $((1 * MiB)) 7 || fail "$mode: primary.img lacks the write"
    s=$(status_json pri)
    [ "$(jq -r .generation.current <<<"$s")" != "$gen0" ] ||
        fail "$mode: no new generation after the first unreplicated write"
    [ "$(jq -r .generation.bitmap <<<"$s")" = "$gen0" ] ||
        fail "$mode: bitmap generation is $(jq -r .generation.bitmap <<<"$s"), expected $gen0"
    [ "$(jq -r .metadata_error <<<"$s")" = null ] ||
        fail "$mode: metadata_error still set: $(jq -r .metadata_error <<<"$s")"
    log "$mode: generation $gen0 -> $(jq -r .generation.current <<<"$s")"

    # ---- link back: resynced to the primary's data ----
    proxy_cmd px restore >/dev/null
    wait_resync "$mode"
    [ "$(status_field pri sync_decision)" = source-bitmap ] ||
        fail "$mode: sync decision $(status_field pri sync_decision), expected source-bitmap"
    stop_agent pri || fail "$mode: primary did not stop cleanly"
    stop_agent sec || fail "$mode: secondary did not stop cleanly"
    stop_proxy px || fail "$mode: proxy did not stop cleanly"
    compare_volumes primary.img replica.img
}

run_mode sync
run_mode async
