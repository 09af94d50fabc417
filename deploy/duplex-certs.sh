#!/bin/bash
# duplex-certs.sh: make a small certificate authority and agent certificates
# for duplex's mutually authenticated TLS link.
#
#   duplex-certs.sh DIR NAME...
#
# Creates DIR/ca.pem and DIR/ca.key if they do not exist yet, then for each
# NAME a key DIR/NAME.key and a certificate DIR/NAME.pem (EC P-256,
# CN=NAME, subjectAltName DNS:NAME, usable as TLS server and client),
# signed by that CA.  Existing NAME files are replaced.  Give each agent
# --tls-ca DIR/ca.pem, its own NAME.pem/NAME.key, and --peer-name set to the
# other agent's NAME.
#
# Environment: DUPLEX_CERT_DAYS (default 825), DUPLEX_CA_NAME (CA common
# name, default "duplex CA <random hex>").
set -euo pipefail

prog=${0##*/}
if [ $# -lt 2 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    echo "usage: $prog DIR NAME..." >&2
    exit 2
fi
command -v openssl >/dev/null || {
    echo "$prog: openssl not found; install the openssl package" >&2
    exit 2
}

dir=$1; shift
days=${DUPLEX_CERT_DAYS:-825}
mkdir -p "$dir"
umask 077

for name in "$@"; do
    if ! [[ "$name" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$ ]] || [ "$name" = ca ]; then
        echo "$prog: bad NAME '$name': use letters, digits, '.', '-' (a DNS name), not 'ca'" >&2
        exit 2
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
    # A random suffix keeps CAs made by separate runs distinguishable.
    ca_name=${DUPLEX_CA_NAME:-duplex CA $(openssl rand -hex 4)}
    ca_name=${ca_name//[\/=]/_}
    ca_name=${ca_name:0:64}
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$dir/ca.key" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" \
        -subj "/CN=$ca_name" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$dir/ca.pem" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    echo "$prog: created CA $dir/ca.pem"
fi

for name in "$@"; do
    cat >"$tmp/ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$name
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$tmp/key" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    openssl req -new -key "$tmp/key" -subj "/CN=$name" -out "$tmp/csr" \
        2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    openssl x509 -req -in "$tmp/csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -CAserial "$dir/ca.srl" -sha256 -days "$days" \
        -extfile "$tmp/ext" -out "$tmp/pem" 2>"$tmp/err" \
        || { cat "$tmp/err" >&2; exit 1; }
    mv "$tmp/key" "$dir/$name.key"
    mv "$tmp/pem" "$dir/$name.pem"
    chmod 600 "$dir/$name.key"
    chmod 644 "$dir/$name.pem" "$dir/ca.pem"
    echo "$prog: created $dir/$name.pem ($dir/$name.key)"
done
