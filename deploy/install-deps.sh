#!/bin/bash
# install-deps.sh: install every Debian 12 package duplex needs to build, to
# run its test suite (unit, integration, sanitizer, fuzz) and to run the demo.
# Idempotent and non-interactive; run as root.  When every package is already
# installed it does nothing (set DUPLEX_DEPS_FORCE=1, or CI=true, to run
# apt-get anyway).
set -euo pipefail

packages=(
    # build
    build-essential cmake pkg-config git ca-certificates
    libaio-dev libssl-dev libevent-dev libprotobuf-c-dev protobuf-c-compiler
    libxxhash-dev libzstd-dev libtraceevent-dev libtracefs-dev
    # unit tests, fuzzing, sanitizers
    libcmocka-dev clang libclang-rt-14-dev
    # integration tests and demo: NBD clients and tools
    libnbd-bin python3 python3-libnbd qemu-utils fio nbdkit
    e2fsprogs fuse3 openssl jq bc util-linux mount diffutils rsync procps coreutils
    # benchmark suite (tests/bench/run-suite.sh): chart, loopback TCP limit,
    # ss, and the lint CI runs on the bench scripts
    gnuplot-nox iperf3 iproute2 shellcheck
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

# CI always runs apt-get, so a clean machine and this one take the same path.
if [ ${#missing[@]} -eq 0 ] && [ -z "${DUPLEX_DEPS_FORCE:-}" ] &&
    [ "${CI:-}" != true ]; then
    echo "install-deps: all ${#packages[@]} packages already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run this script as root" >&2
    exit 1
fi

echo "install-deps: installing: ${missing[*]:-${packages[*]}}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
