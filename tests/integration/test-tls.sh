#!/bin/bash
# TLS refusals.  Nothing gets onto the replica unless both certificates
# chain to the configured CA and carry the expected peer name:
#   A. the secondary presents a certificate from another CA (primary refuses)
#   B. the secondary presents the right CA's certificate for another name
#   C. the primary presents a certificate from another CA (secondary refuses)
#   D. the primary presents the right CA's certificate for another name
#   E. a client without a certificate (openssl s_client)
#   F. a client with a certificate from another CA (openssl s_client)
#   G. a plaintext client sending garbage
# In each case the link never reaches "connected", the refusal is logged,
# and the replica is untouched; afterwards the right primary still syncs.
#
# TLS_DIRECTION=reverse (ctest integration/test-tls-reverse): the same
# cases with the primary listening (--listen) and the secondary dialling
# it (--peer); E, F and G then knock at the primary, which must survive
# them.  Same TLS rules both ways.
source "$(dirname "$0")/functions.sh"

reverse=0
[ "${TLS_DIRECTION:-}" != reverse ] || reverse=1

make_certs "$CERTS" primary secondary intruder
make_certs other primary secondary
size=$((64 * 1024 * 1024))
make_pattern_image primary.img 64 >/dev/null
# An existing replica whose content must survive every refusal.
truncate -s $size replica.img
head -c 8M /dev/urandom | dd of=replica.img bs=1M seek=4 conv=notrunc status=none
replica_sum=$(sha256sum <replica.img)

check_replica() {
    [ "$(sha256sum <replica.img)" = "$replica_sum" ] ||
        fail "case $1: the replica was modified"
}

refusal_re='certificate|verif|refus|reject|denied|alert|mismatch|unknown ca|untrusted'

# run_secondary NAME CERT KEY VOLUME: a secondary listening on port 0, or
# (reverse) dialling the primary started last.
run_secondary() {
    local name=$1 cert=$2 key=$3 vol=$4 conn
    if [ "$reverse" = 0 ]; then
        conn=(--listen 127.0.0.1:0)
    else
        conn=(--peer "127.0.0.1:$PRIMARY_PORT")
    fi
    start_secondary "$name" --volume "$TESTDIR/$vol" --meta "$TESTDIR/$name.meta" \
        "${conn[@]}" --tls-cert "$cert" --tls-key "$key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary
}
run_primary() {
    local name=$1 cert=$2 key=$3 conn
    if [ "$reverse" = 0 ]; then
        conn=(--peer "127.0.0.1:$SECONDARY_PORT")
    else
        conn=(--listen 127.0.0.1:0)
    fi
    start_primary "$name" --volume "$TESTDIR/primary.img" --meta "$TESTDIR/$name.meta" \
        --nbd "unix:$TESTDIR/$name.sock" "${conn[@]}" \
        --mode sync --tls-cert "$cert" --tls-key "$key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary
}
# run_pair PRI PCERT PKEY SEC SCERT SKEY VOLUME: the listening side first.
run_pair() {
    if [ "$reverse" = 0 ]; then
        run_secondary "$4" "$5" "$6" "$7"
        run_primary "$1" "$2" "$3"
    else
        run_primary "$1" "$2" "$3"
        run_secondary "$4" "$5" "$6" "$7"
    fi
}

# refused CASE PRI SEC REFUSER: wait until REFUSER logged a refusal, then
# watch both for 3 s more: neither may ever report "connected".
refused() {
    local case=$1 pri=$2 sec=$3 refuser=$4 end
    wait_until -t 30 -m "case $case: refusal logged by $refuser" \
        "grep -v '^+ ' '$TESTDIR/$refuser.log' | grep -qiE '$refusal_re'"
    end=$((SECONDS + 3))
    while [ "$SECONDS" -lt "$end" ]; do
        for a in "$pri" "$sec"; do
            c=$(status_field "$a" connection)
            [ "$c" != connected ] || fail "case $case: $a reports connected"
        done
        sleep 0.1
    done
    log "case $case: refused; $refuser logged: $(grep -iE "$refusal_re" "$TESTDIR/$refuser.log" | head -n 1)"
}

# A: secondary with another CA's certificate; its replica does not exist
# and must not be created with data.
run_pair priA "$CERTS/primary.pem" "$CERTS/primary.key" \
    secA "$TESTDIR/other/secondary.pem" "$TESTDIR/other/secondary.key" replicaA.img
refused A priA secA priA
if [ -e replicaA.img ] && [ "$(tr -d '\0' <replicaA.img | head -c 1 | wc -c)" -ne 0 ]; then
    fail "case A: data was written to the replica"
fi
stop_agent priA; stop_agent secA

# B: secondary with a certificate of the right CA for "intruder".
run_pair priB "$CERTS/primary.pem" "$CERTS/primary.key" \
    secB "$CERTS/intruder.pem" "$CERTS/intruder.key" replica.img
refused B priB secB priB
stop_agent priB; stop_agent secB
check_replica B

# C: primary with another CA's certificate.
run_pair priC "$TESTDIR/other/primary.pem" "$TESTDIR/other/primary.key" \
    secC "$CERTS/secondary.pem" "$CERTS/secondary.key" replica.img
refused C priC secC secC
stop_agent priC; stop_agent secC
check_replica C

# D: primary with a certificate of the right CA for "intruder".
run_pair priD "$CERTS/intruder.pem" "$CERTS/intruder.key" \
    secD "$CERTS/secondary.pem" "$CERTS/secondary.key" replica.img
refused D priD secD secD
stop_agent priD; stop_agent secD
check_replica D

# E, F, G against the listening agent, which must survive them all: one
# secondary, or (reverse) one primary with no secondary yet.
if [ "$reverse" = 0 ]; then
    run_secondary sec "$CERTS/secondary.pem" "$CERTS/secondary.key" replica.img
    port=$SECONDARY_PORT
else
    run_primary pri "$CERTS/primary.pem" "$CERTS/primary.key"
    port=$PRIMARY_PORT
fi

# E: no client certificate.  The server certificate itself is fine.
printf 'garbage after the handshake\n' |
    timeout 20 openssl s_client -connect "127.0.0.1:$port" -CAfile "$CERTS/ca.pem" \
        -verify_return_error -ign_eof >sclientE.txt 2>&1 && rc=0 || rc=$?
grep -q 'Verify return code: 0 (ok)' sclientE.txt ||
    { cat sclientE.txt; fail "case E: the listening agent's own certificate did not verify"; }
grep -qiE 'alert|certificate required|handshake failure' sclientE.txt ||
    { cat sclientE.txt; fail "case E: a client without a certificate was not refused (s_client rc $rc)"; }
log "case E: refused: $(grep -iE 'alert|certificate required' sclientE.txt | head -n 1)"
check_replica E

# F: a client certificate from another CA.
printf 'garbage after the handshake\n' |
    timeout 20 openssl s_client -connect "127.0.0.1:$port" -CAfile "$CERTS/ca.pem" \
        -cert "$TESTDIR/other/primary.pem" -key "$TESTDIR/other/primary.key" \
        -ign_eof >sclientF.txt 2>&1 && rc=0 || rc=$?
grep -qiE 'alert|handshake failure' sclientF.txt ||
    { cat sclientF.txt; fail "case F: a client certificate from another CA was not refused (s_client rc $rc)"; }
log "case F: refused: $(grep -iE 'alert' sclientF.txt | head -n 1)"
check_replica F

# G: plaintext garbage; the listening agent closes the connection.
timeout 20 "$PYTHON" - "$port" <<'PY' || fail "case G: the listening agent kept a plaintext garbage connection open"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 64)
try:
    while s.recv(4096):
        pass
except ConnectionResetError:
    pass
PY
check_replica G
_check_agents_alive

# Finally the right peer: the same listening agent takes it and syncs.
if [ "$reverse" = 0 ]; then
    run_primary pri "$CERTS/primary.pem" "$CERTS/primary.key"
else
    run_secondary sec "$CERTS/secondary.pem" "$CERTS/secondary.key" replica.img
fi
wait_in_sync pri sec
compare_volumes primary.img replica.img
