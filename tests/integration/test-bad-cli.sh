#!/bin/bash
# Wrong flags and unreadable files: each agent prints exactly one line on
# stderr naming the flag or file, and exits with status 2, without starting.
# duplexctl fails with a message for a missing socket or an unknown command.
source "$(dirname "$0")/functions.sh"

make_certs "$CERTS" primary secondary
truncate -s 16M vol.img
echo "not a certificate" >garbage.pem

sec_ok=(--volume "$TESTDIR/rep.img" --meta "$TESTDIR/rep.meta" --listen 127.0.0.1:0
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key"
        --tls-ca "$CERTS/ca.pem" --peer-name primary)
pri_ok=(--volume "$TESTDIR/vol.img" --meta "$TESTDIR/vol.meta"
        --nbd "unix:$TESTDIR/x.sock" --peer 127.0.0.1:1 --mode sync
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key"
        --tls-ca "$CERTS/ca.pem" --peer-name secondary)

# mk BASE FLAG [VALUE]: A = array BASE without FLAG and its value, or with
# FLAG's value replaced by VALUE.
mk() {
    local -n base=$1
    local flag=$2 i
    A=()
    for ((i = 0; i < ${#base[@]}; i++)); do
        if [ "${base[i]}" = "$flag" ]; then
            [ $# -ge 3 ] && A+=("$flag" "$3")
            i=$((i + 1))
            continue
        fi
        A+=("${base[i]}")
    done
}

cases=0
# expect_2 NEEDLES BIN ARGS...: exit 2, one line on stderr containing one
# of NEEDLES ('|'-separated literal strings), and no pidfile.
expect_2() {
    local needle=$1 bin=$2 rc lines
    shift 2
    cases=$((cases + 1))
    rm -f err.txt out.txt bad.pid
    timeout 10 "$bin" --pidfile "$TESTDIR/bad.pid" --foreground "$@" \
        >out.txt 2>err.txt </dev/null && rc=0 || rc=$?
    lines=$(wc -l <err.txt)
    local -a pats=()
    IFS='|' read -r -a pats <<<"$needle"
    if [ "$rc" != 2 ] || [ "$lines" != 1 ] || ! grep -qF "${pats[@]/#/-e}" err.txt; then
        echo "command: $(basename "$bin") $*" >&2
        echo "stderr:" >&2; cat err.txt >&2
        fail "expected exit 2 and one line naming '$needle'; got exit $rc and $lines lines"
    fi
    [ ! -e bad.pid ] || fail "$(basename "$bin") wrote its pidfile despite the error"
    printf '  %-18s %s\n' "$(basename "$bin")" "$(cat err.txt)"
}

P=$PRIMARY_BIN S=$SECONDARY_BIN
mk sec_ok --listen;    expect_2 --listen "$S" "${A[@]}"
mk sec_ok --volume;    expect_2 --volume "$S" "${A[@]}"
mk sec_ok --peer-name; expect_2 --peer-name "$S" "${A[@]}"
mk sec_ok --tls-ca;    expect_2 --tls-ca "$S" "${A[@]}"
expect_2 --bogus "$S" "${sec_ok[@]}" --bogus
expect_2 --volume "$S" "${sec_ok[@]}" --volume
mk sec_ok --listen nonsense; expect_2 '--listen|nonsense' "$S" "${A[@]}"
mk sec_ok --tls-cert "$TESTDIR/missing.pem"; expect_2 "$TESTDIR/missing.pem" "$S" "${A[@]}"
mk sec_ok --tls-key "$TESTDIR/missing.key";  expect_2 "$TESTDIR/missing.key" "$S" "${A[@]}"
mk sec_ok --tls-ca "$TESTDIR/garbage.pem";   expect_2 "$TESTDIR/garbage.pem" "$S" "${A[@]}"
expect_2 -- "$S"
# One direction each: listen or dial, not both; dialling needs a port.
expect_2 '--peer|--listen or --peer' "$S" "${sec_ok[@]}" --peer 127.0.0.1:7
mk sec_ok --listen; expect_2 '--peer|port 0' "$S" "${A[@]}" --peer 127.0.0.1:0
expect_2 '--connect-interval|only with --peer' "$S" "${sec_ok[@]}" --connect-interval 1s
mk sec_ok --listen; expect_2 '--connect-interval|50ms' "$S" "${A[@]}" --peer 127.0.0.1:7 --connect-interval 50ms

mk pri_ok --peer;   expect_2 --peer "$P" "${A[@]}"
mk pri_ok --nbd;    expect_2 --nbd "$P" "${A[@]}"
mk pri_ok --mode;   expect_2 --mode "$P" "${A[@]}"
mk pri_ok --volume; expect_2 --volume "$P" "${A[@]}"
mk pri_ok --mode fast;            expect_2 '--mode|fast' "$P" "${A[@]}"
mk pri_ok --nbd nowhere;          expect_2 '--nbd|nowhere' "$P" "${A[@]}"
mk pri_ok --peer 127.0.0.1:99999; expect_2 '--peer|99999' "$P" "${A[@]}"
expect_2 '--async-buffer|12Q' "$P" "${pri_ok[@]}" --async-buffer 12Q
expect_2 --frobnicate "$P" "${pri_ok[@]}" --frobnicate
expect_2 -- "$P"
expect_2 '--listen|--peer or --listen' "$P" "${pri_ok[@]}" --listen 127.0.0.1:0
mk pri_ok --peer; expect_2 '--listen|unix:' "$P" "${A[@]}" --listen "unix:$TESTDIR/r.sock"
# An address this host does not have: refused before serving anything.
mk pri_ok --peer; expect_2 '--listen|203.0.113.7' "$P" "${A[@]}" --listen 203.0.113.7:7788
mk pri_ok --volume "$TESTDIR/missing.img";   expect_2 "$TESTDIR/missing.img" "$P" "${A[@]}"
mk pri_ok --tls-cert "$TESTDIR/garbage.pem"; expect_2 "$TESTDIR/garbage.pem" "$P" "${A[@]}"
mk pri_ok --tls-ca "$TESTDIR/missing-ca.pem"; expect_2 "$TESTDIR/missing-ca.pem" "$P" "${A[@]}"
# Tail capture (issue 11): a regular file, sync mode, NBD, a point option
# without tail capture.
mk pri_ok --nbd; tail_ok=("${A[@]}")
mk tail_ok --mode async; tail_ok=(--capture tail "${A[@]}")
expect_2 'not a block device' "$P" "${tail_ok[@]}"
mk tail_ok --mode sync;  expect_2 '--mode sync' "$P" "${A[@]}"
expect_2 '--nbd' "$P" "${tail_ok[@]}" --nbd "unix:$TESTDIR/x.sock"
expect_2 '--capture|ebpf' "$P" "${pri_ok[@]}" --capture ebpf
expect_2 '--freeze|--capture tail' "$P" "${pri_ok[@]}" --freeze /mnt
expect_2 '--trace-buffer|power of two' "$P" "${tail_ok[@]}" --trace-buffer 3K
[ ! -e x.sock ] || fail "the primary left its NBD socket behind after an error"
log "$cases bad command lines refused with exit 2 and one line"

# --help is not an error.
"$PRIMARY_BIN" --help >help.txt 2>&1 || fail "duplex-primary --help failed"
grep -q -- --peer-name help.txt || fail "duplex-primary --help does not list --peer-name"
"$SECONDARY_BIN" --help >help.txt 2>&1 || fail "duplex-secondary --help failed"
grep -q -- --listen help.txt || fail "duplex-secondary --help does not list --listen"

# --version names the release and the commit each program was built from
# (the same for all four: one build).
want=$("$PRIMARY_BIN" --version) || fail "duplex-primary --version failed"
[[ $want =~ ^duplex-primary\ [0-9.]+\ \(git\ ([0-9a-f]{7,}(-dirty)?|unknown)\)$ ]] ||
    fail "duplex-primary --version does not name a commit: $want"
for bin in "$SECONDARY_BIN" "$DUPLEXCTL" "$DUPLEX_BUILD/duplex-store"; do
    got=$("$bin" --version) || fail "$bin --version failed"
    [ "${got#* }" = "${want#* }" ] || fail "$bin --version says '$got', duplex-primary '$want'"
done
log "version: ${want#* }"

# duplexctl: no agent behind the socket, and an unknown command.
"$DUPLEXCTL" --control "$TESTDIR/nothing.ctl" status --json >out.txt 2>err.txt &&
    fail "duplexctl succeeded without an agent"
[ -s err.txt ] || fail "duplexctl failed silently without an agent"
grep -qF nothing.ctl err.txt || fail "duplexctl's error does not name the socket: $(cat err.txt)"
truncate -s 16M primary.img
start_pair sync
"$DUPLEXCTL" --control "$TESTDIR/sec.ctl" frobnicate >out.txt 2>err.txt &&
    fail "duplexctl frobnicate succeeded"
[ -s err.txt ] || fail "duplexctl frobnicate failed silently"
log "duplexctl frobnicate: $(head -n 1 err.txt)"
