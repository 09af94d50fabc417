# Shared harness for duplex integration tests (in the manner of nbdkit's
# tests/functions.sh.in).  Each test-*.sh sources this file, which:
#
#   - makes a fresh temporary directory, cds into it, removes it on exit;
#   - arms a watchdog that fails the whole test after $DUPLEX_TEST_TIMEOUT s;
#   - starts agents in the background (--foreground --pidfile), waits for the
#     pidfile with a deadline, and registers them for cleanup;
#   - stops agents with SIGTERM and fails the test if one does not exit
#     cleanly within 5 s (then SIGKILLs it);
#   - polls status (duplexctl status --json) instead of sleeping.
#
# Environment: DUPLEX_BUILD (build tree with the binaries), DUPLEX_SRC
# (source tree), DUPLEX_TEST_TIMEOUT (seconds, default 300),
# DUPLEX_KEEP_TMP=1 (keep the temporary directory), DUPLEX_VERBOSE=1 (start
# agents with -v).
#
# Exit codes: 0 pass, 77 skip (a tool is genuinely missing), anything else
# is a failure.

set -euo pipefail

DUPLEX_SRC=${DUPLEX_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
DUPLEX_BUILD=${DUPLEX_BUILD:-$DUPLEX_SRC/build}
export DUPLEX_SRC DUPLEX_BUILD
PRIMARY_BIN=$DUPLEX_BUILD/duplex-primary
SECONDARY_BIN=$DUPLEX_BUILD/duplex-secondary
DUPLEXCTL=$DUPLEX_BUILD/duplexctl
# libnbd's Python binding is packaged for the system interpreter only.
PYTHON=/usr/bin/python3
TEST_NAME=$(basename "$0" .sh)

# Sanitizer builds: make any report fatal and visible in the agent's log.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:exitcode=66}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:exitcode=66}

# Names of the agents started by start_agent, and their pids.
declare -a _agents=()
declare -A _agent_pid=()
# Cleanup commands run in reverse order at exit.
declare -a _cleanup=()
_failed=0
_watchdog_pid=

log() { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }
# Fail the test now with a message.
fail() {
    printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2
    _failed=1
    exit 1
}

# Register a command to run at exit (cleanup_fn CMD ARGS...).
cleanup_fn() {
    local q
    printf -v q '%q ' "$@"
    _cleanup+=("$q")
}

# kill_quiet PID...: SIGTERM processes that may have exited already.
kill_quiet() { kill "$@" 2>/dev/null || true; }
# kill_quiet_sig SIG PID...
kill_quiet_sig() { local sig=$1; shift; kill "-$sig" "$@" 2>/dev/null || true; }

_on_exit() {
    local rc=$? i name
    set +e
    trap '' INT TERM
    [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && _failed=1
    if [ -n "$_watchdog_pid" ]; then
        kill "$_watchdog_pid" 2>/dev/null
        wait "$_watchdog_pid" 2>/dev/null
    fi
    for ((i = ${#_cleanup[@]} - 1; i >= 0; i--)); do
        eval "${_cleanup[$i]}"
    done
    for name in "${_agents[@]}"; do
        if [ -n "${_agent_pid[$name]:-}" ]; then
            stop_agent "$name" || _failed=1
        fi
    done
    if [ "$_failed" -ne 0 ]; then
        for name in "${_agents[@]}"; do
            if [ -s "$TESTDIR/$name.log" ]; then
                echo "----- $name.log (last 60 lines) -----" >&2
                tail -n 60 "$TESTDIR/$name.log" >&2
            fi
        done
        [ "$rc" -eq 0 ] && rc=1
    fi
    cd /
    if [ -n "${DUPLEX_KEEP_TMP:-}" ]; then
        echo "$TEST_NAME: kept $TESTDIR" >&2
    else
        rm -rf "$TESTDIR"
    fi
    if [ "$rc" -eq 0 ]; then
        echo "$TEST_NAME: PASS"
    elif [ "$rc" -eq 77 ]; then
        echo "$TEST_NAME: SKIP"
    fi
    exit "$rc"
}

_on_timeout() {
    printf '%s: FAIL: test timed out after %s s\n' "$TEST_NAME" \
        "$DUPLEX_TEST_TIMEOUT" >&2
    _failed=1
    exit 124
}

# Skip the test (exit 77) unless every command exists.
requires() {
    local c
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1; then
            echo "$TEST_NAME: SKIP: $c not found (run deploy/install-deps.sh)" >&2
            exit 77
        fi
    done
}
requires_root() {
    [ "$(id -u)" -eq 0 ] || { echo "$TEST_NAME: SKIP: needs root" >&2; exit 77; }
}
requires_python_nbd() {
    [ -x "$PYTHON" ] && "$PYTHON" -c 'import nbd' 2>/dev/null || {
        echo "$TEST_NAME: SKIP: $PYTHON cannot import nbd (python3-libnbd)" >&2
        exit 77
    }
}
requires_fuse() {
    requires nbdfuse fusermount3
    [ -c /dev/fuse ] || { echo "$TEST_NAME: SKIP: no /dev/fuse" >&2; exit 77; }
}
requires_loop() {
    requires losetup
    [ -e /dev/loop-control ] || { echo "$TEST_NAME: SKIP: no loop devices" >&2; exit 77; }
}

# ---- setup: runs when this file is sourced ----

for _b in "$PRIMARY_BIN" "$SECONDARY_BIN" "$DUPLEXCTL"; do
    [ -x "$_b" ] || { echo "$TEST_NAME: FAIL: $_b not built (DUPLEX_BUILD=$DUPLEX_BUILD)" >&2; exit 1; }
done
requires jq openssl cmp timeout

# Deadlines scale for slow builds (sanitizers): DUPLEX_SLOW=N multiplies
# every wait_until deadline.
SLOW=${DUPLEX_SLOW:-1}
if [ -f "$DUPLEX_BUILD/CMakeCache.txt" ] &&
    grep -q '^DUPLEX_SANITIZE:BOOL=ON' "$DUPLEX_BUILD/CMakeCache.txt"; then
    SLOW=${DUPLEX_SLOW:-3}
fi
# The whole test's deadline stays below ctest's TIMEOUT (600 s).
if [ "$SLOW" -gt 1 ]; then
    DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-560}
else
    DUPLEX_TEST_TIMEOUT=${DUPLEX_TEST_TIMEOUT:-300}
fi
TESTDIR=$(mktemp -d "${TMPDIR:-/tmp}/duplex-$TEST_NAME.XXXXXX")
trap _on_exit EXIT
trap 'exit 130' INT
trap _on_timeout TERM
cd "$TESTDIR"

# The watchdog: after the deadline, TERM the test and whatever it is
# waiting on in the foreground (its direct children, by parent pid; not the
# agents, listed in .agents, which the cleanup stops and checks), so the TERM
# trap runs, cleans up and fails the test.
_test_pid=$$
: >"$TESTDIR/.agents"
(
    sleep "$DUPLEX_TEST_TIMEOUT" >/dev/null 2>&1 </dev/null &
    _sleep_pid=$!
    trap 'kill $_sleep_pid 2>/dev/null; exit 0' TERM
    wait $_sleep_pid || exit 0
    echo "$TEST_NAME: watchdog: deadline of $DUPLEX_TEST_TIMEOUT s reached" >&2
    kill -TERM "$_test_pid" 2>/dev/null
    for _p in $(pgrep -P "$_test_pid"); do
        [ "$_p" = "$BASHPID" ] && continue
        grep -qx "$_p" "$TESTDIR/.agents" 2>/dev/null && continue
        kill -TERM "$_p" 2>/dev/null
    done
) &
_watchdog_pid=$!


# ---- polling ----

# wait_until [-t SECONDS] [-m MESSAGE] 'shell condition'
# Polls the condition every 0.1 s until it is true; fails the test after
# the deadline (default 30 s, times $SLOW).
wait_until() {
    local secs=30 msg="" cond deadline
    while [ $# -gt 1 ]; do
        case $1 in
            -t) secs=$2; shift 2 ;;
            -m) msg=$2; shift 2 ;;
            *) break ;;
        esac
    done
    cond=$1
    deadline=$((SECONDS + secs * SLOW))
    while ! eval "$cond"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "${msg:-condition} not reached in $((secs * SLOW)) s: $cond"
        fi
        _check_agents_alive
        sleep 0.1
    done
}

# ---- certificates ----

# make_certs DIR NAME...: a CA in DIR plus NAME.pem/NAME.key per name.
make_certs() {
    "$DUPLEX_SRC/deploy/duplex-certs.sh" "$@" >/dev/null ||
        fail "duplex-certs.sh $* failed"
}

# ---- agents ----

# start_agent [--pidfile-only] NAME BINARY ARGS...
# Starts BINARY ARGS... --control NAME.ctl --pidfile NAME.pid --foreground
# (-v with DUPLEX_VERBOSE) with output in NAME.log, waits until the pidfile
# holds its pid, and registers it for cleanup.  --pidfile-only: a daemon
# that is no agent (duplex-store serve) and gets only --pidfile NAME.pid.
start_agent() {
    local pidfile_only=0 name bin pid deadline rc
    if [ "$1" = --pidfile-only ]; then
        pidfile_only=1
        shift
    fi
    name=$1 bin=$2
    shift 2
    local -a extra=(--pidfile "$TESTDIR/$name.pid")
    if [ "$pidfile_only" -eq 0 ]; then
        extra=(--control "$TESTDIR/$name.ctl" "${extra[@]}" --foreground)
        [ -z "${DUPLEX_VERBOSE:-}" ] || extra+=(-v)
    fi
    rm -f "$TESTDIR/$name.pid" "$TESTDIR/$name.pid.port"
    echo "+ $(basename "$bin") $* ${extra[*]}" >"$TESTDIR/$name.log"
    "$bin" "$@" "${extra[@]}" >>"$TESTDIR/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >>"$TESTDIR/.agents"
    _agents+=("$name")
    _agent_pid[$name]=$pid
    deadline=$((SECONDS + 30 * SLOW))
    while :; do
        if [ -s "$TESTDIR/$name.pid" ] &&
            [ "$(cat "$TESTDIR/$name.pid" 2>/dev/null)" = "$pid" ]; then
            break
        fi
        if ! _alive "$pid"; then
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            _agent_pid[$name]=
            cat "$TESTDIR/$name.log" >&2
            fail "$name exited with status $rc before writing its pidfile"
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            fail "$name (pid $pid) did not write $name.pid in $((30 * SLOW)) s"
        sleep 0.1
    done
    log "$name started (pid $pid)"
}

# _agent_port NAME VAR: an agent listening on port 0 wrote NAME.pid.port;
# sets ${NAME}_port and VAR from it (nothing when there is no such file).
_agent_port() {
    local name=$1 var=$2 port
    [ -s "$TESTDIR/$name.pid.port" ] || return 0
    port=$(cat "$TESTDIR/$name.pid.port")
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] ||
        fail "$name.pid.port holds '$port', not a port"
    printf -v "${name//[^A-Za-z0-9_]/_}_port" '%s' "$port"
    printf -v "$var" '%s' "$port"
}

# start_secondary NAME ARGS...  (sets ${NAME}_port from NAME.pid.port when
# listening on port 0; also in $SECONDARY_PORT)
start_secondary() {
    local name=$1
    shift
    start_agent "$name" "$SECONDARY_BIN" "$@"
    _agent_port "$name" SECONDARY_PORT
}

# start_primary NAME ARGS...  (with --listen on port 0: sets ${NAME}_port
# and $PRIMARY_PORT from NAME.pid.port, the port its secondary dials)
start_primary() {
    local name=$1
    shift
    start_agent "$name" "$PRIMARY_BIN" "$@"
    _agent_port "$name" PRIMARY_PORT
}

_alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie not yet reaped by this shell has exited.
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

# Fails the test if a registered agent died on its own.
_check_agents_alive() {
    local name pid rc
    for name in "${_agents[@]}"; do
        pid=${_agent_pid[$name]:-}
        [ -n "$pid" ] || continue
        if ! _alive "$pid"; then
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            _agent_pid[$name]=
            fail "$name (pid $pid) died unexpectedly with status $rc"
        fi
    done
}

agent_pid() { echo "${_agent_pid[$1]}"; }

# _terminate LABEL PID: SIGTERM one of our background processes and wait at
# most 5 s (then SIGKILL).  Non-zero, with a FAIL line naming LABEL, if it
# did not exit in time or exited with a non-zero status.
_terminate() {
    local label=$1 pid=$2 rc deadline
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(date +%s%N) / 1000000 + 5000))
    while _alive "$pid"; do
        if [ "$(($(date +%s%N) / 1000000))" -ge "$deadline" ]; then
            echo "$TEST_NAME: FAIL: $label (pid $pid) still running 5 s after SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
    wait "$pid" 2>/dev/null && rc=0 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "$TEST_NAME: FAIL: $label (pid $pid) exited with status $rc after SIGTERM" >&2
        return 1
    fi
}

# stop_agent NAME: SIGTERM, wait at most 5 s.  Returns non-zero (and marks
# the test failed) if it did not exit in time (then SIGKILL), exited with a
# non-zero status, or a sanitizer reported an error.
stop_agent() {
    local name=$1 pid ok=0
    pid=${_agent_pid[$name]:-}
    [ -n "$pid" ] || return 0
    _agent_pid[$name]=
    _terminate "$name" "$pid" || ok=1
    if grep -qE 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:' \
        "$TESTDIR/$name.log" 2>/dev/null; then
        echo "$TEST_NAME: FAIL: sanitizer report in $name.log" >&2
        ok=1
    fi
    [ "$ok" -eq 0 ] || _failed=1
    return "$ok"
}

# ---- status ----

# status_json NAME: the agent's status object.  Returns non-zero with a
# message on stderr if duplexctl fails or does not print a JSON object (use
# as x=$(status_json pri) so that set -e fails the test).
status_json() {
    local out
    if ! out=$("$DUPLEXCTL" --control "$TESTDIR/$1.ctl" status --json 2>&1); then
        echo "$TEST_NAME: duplexctl status --json on $1 failed: $out" >&2
        return 1
    fi
    if ! jq -e 'type == "object"' >/dev/null 2>&1 <<<"$out"; then
        echo "$TEST_NAME: status of $1 is not a JSON object: $out" >&2
        return 1
    fi
    printf '%s\n' "$out"
}

# status_field NAME FIELD: one field, raw (strings unquoted).
status_field() {
    local out
    out=$(status_json "$1") || return 1
    # Not jq -e: a field that is false or null is still a field.
    if ! jq -r --arg f "$2" 'if has($f) then .[$f] else error("no field \($f)") end' \
        <<<"$out" 2>/dev/null; then
        echo "$TEST_NAME: status of $1 has no field $2: $out" >&2
        return 1
    fi
}

# wait_status [-t SECONDS] NAME FIELD VALUE: poll until FIELD == VALUE.
wait_status() {
    local t=()
    if [ "$1" = -t ]; then t=(-t "$2"); shift 2; fi
    wait_until "${t[@]}" -m "$1 $2 = $3" \
        "[ \"\$(status_field $1 $2)\" = \"$3\" ]"
}

# wait_in_sync NAME...: connected and in-sync with nothing pending.
wait_in_sync() {
    local n
    for n in "$@"; do
        wait_until -t 120 -m "$n connected, in sync, no lag" \
            "status_json $n | jq -e '.connection == \"connected\" and .sync == \"in-sync\" and .out_of_sync_bytes == 0 and .replication_lag_bytes == 0' >/dev/null"
    done
}

# ---- link proxy ----
#
# tests/tools/linkproxy.py between the agents, to cut, stall, restore and
# throttle the link on command.  Usual use:
#
#   start_secondary sec ... --listen 127.0.0.1:0
#   start_proxy px "$SECONDARY_PORT"
#   start_primary pri ... --peer "127.0.0.1:$PROXY_PORT"
#   proxy_cmd px cut; ...; proxy_cmd px restore
#
# (or PAIR_PROXY=1 start_pair MODE).  Files: NAME.ctl (control socket),
# NAME.pid, NAME.port, NAME.log.  Commands: cut, stall, restore,
# throttle BYTES_PER_SEC (0: no limit), status, quit; see the proxy's
# docstring.  The proxy is stopped (SIGTERM, must exit 0 within 5 s) at exit.

LINKPROXY=$DUPLEX_SRC/tests/tools/linkproxy.py
declare -A _proxy_pid=()

# start_proxy NAME TARGET_PORT|HOST:PORT [PROXY ARGS...]
# Starts the proxy on 127.0.0.1:0, waits (with a deadline) for NAME.port,
# registers it for cleanup and sets ${NAME}_port and PROXY_PORT.
start_proxy() {
    local name=$1 target=$2 pid deadline rc port
    shift 2
    [[ "$target" == *:* ]] || target=127.0.0.1:$target
    rm -f "$TESTDIR/$name.port" "$TESTDIR/$name.pid" "$TESTDIR/$name.ctl"
    "$PYTHON" "$LINKPROXY" --listen 127.0.0.1:0 --target "$target" \
        --control "$TESTDIR/$name.ctl" --port-file "$TESTDIR/$name.port" \
        --pidfile "$TESTDIR/$name.pid" "$@" \
        >"$TESTDIR/$name.log" 2>&1 </dev/null &
    pid=$!
    # Listed with the agents: the watchdog leaves it to the cleanup.
    echo "$pid" >>"$TESTDIR/.agents"
    _proxy_pid[$name]=$pid
    cleanup_fn stop_proxy "$name"
    deadline=$((SECONDS + 30 * SLOW))
    until [ -s "$TESTDIR/$name.port" ]; do
        if ! _alive "$pid"; then
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            _proxy_pid[$name]=
            cat "$TESTDIR/$name.log" >&2
            fail "proxy $name exited with status $rc before writing $name.port"
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            fail "proxy $name (pid $pid) did not write $name.port in $((30 * SLOW)) s"
        sleep 0.05
    done
    port=$(cat "$TESTDIR/$name.port")
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] ||
        fail "$name.port holds '$port', not a port"
    PROXY_PORT=$port
    printf -v "${name//[^A-Za-z0-9_]/_}_port" '%s' "$port"
    log "proxy $name started (pid $pid): 127.0.0.1:$port -> $target"
}

proxy_pid() { echo "${_proxy_pid[$1]:-}"; }
# proxy_alive NAME: the proxy's process is running.
proxy_alive() { local p=${_proxy_pid[$1]:-}; [ -n "$p" ] && _alive "$p"; }

# stop_proxy NAME: SIGTERM (unless it already exited, e.g. after quit) and
# wait at most 5 s.  Returns non-zero and marks the test failed if it did
# not exit in time (then SIGKILL) or exited with a non-zero status.  Prints
# the tail of NAME.log when the test failed.
stop_proxy() {
    local name=$1 pid ok=0
    pid=${_proxy_pid[$name]:-}
    [ -n "$pid" ] || return 0
    _proxy_pid[$name]=
    _terminate "proxy $name" "$pid" || ok=1
    [ "$ok" -eq 0 ] || _failed=1
    if [ "$_failed" -ne 0 ] && [ -s "$TESTDIR/$name.log" ]; then
        echo "----- $name.log (last 30 lines) -----" >&2
        tail -n 30 "$TESTDIR/$name.log" >&2
    fi
    return "$ok"
}

# _proxy_send NAME LINE: one command over the control socket; prints the
# reply line.  Non-zero if the socket cannot be used.
_proxy_send() {
    "$PYTHON" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
    s.sendall(sys.argv[2].encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(65536)
        if not d:
            break
        buf += d
except OSError as e:
    sys.exit("%s: %s" % (sys.argv[1], e))
if not buf:
    sys.exit("%s: no reply" % sys.argv[1])
print(buf.decode().strip())
' "$TESTDIR/$1.ctl" "$2"
}

# proxy_cmd NAME COMMAND...: send the command, print the reply ("ok ...");
# fails the test on an "error ..." reply or a dead proxy.  (Inside $(...)
# the failure is only the subshell's: use x=$(...) so that set -e acts.)
proxy_cmd() {
    local name=$1 reply
    shift
    if ! reply=$(_proxy_send "$name" "$*" 2>&1); then
        proxy_alive "$name" || fail "proxy $name is not running ($*: $reply)"
        fail "proxy $name: $*: $reply"
    fi
    case $reply in
        ok*) printf '%s\n' "$reply" ;;
        *) fail "proxy $name: $* -> $reply" ;;
    esac
}

# proxy_status NAME [FIELD]: the status object, or one field of it.
# Returns non-zero with a message on stderr on failure (like status_field).
proxy_status() {
    local reply
    if ! reply=$(_proxy_send "$1" status 2>&1) || [[ "$reply" != "ok {"* ]]; then
        echo "$TEST_NAME: proxy $1: status failed: $reply" >&2
        return 1
    fi
    reply=${reply#ok }
    if [ $# -lt 2 ]; then
        printf '%s\n' "$reply"
        return 0
    fi
    jq -er --arg f "$2" 'if has($f) then .[$f] else error("no field \($f)") end' \
        <<<"$reply" 2>/dev/null || {
        echo "$TEST_NAME: proxy $1 status has no field $2: $reply" >&2
        return 1
    }
}

# wait_proxy [-t SECONDS] NAME FIELD VALUE: poll until FIELD == VALUE.
wait_proxy() {
    local t=()
    if [ "$1" = -t ]; then t=(-t "$2"); shift 2; fi
    wait_until "${t[@]}" -m "proxy $1 $2 = $3" \
        "[ \"\$(proxy_status $1 $2)\" = \"$3\" ]"
}

# ---- the usual pair ----

# Certificates for the usual pair, in $TESTDIR/certs.
CERTS=$TESTDIR/certs

# start_pair MODE [PRIMARY ARGS...]: certificates (if not made yet), a
# secondary $SEC (default "sec") on 127.0.0.1:0 with replica.img/replica.meta,
# then a primary $PRI (default "pri") on unix:$PRI.sock with
# primary.img/primary.meta (the caller creates primary.img).  Extra
# arguments go to the primary; the array SEC_EXTRA_ARGS to the secondary.
# Sets NBD_SOCK and NBD_URI.  With PAIR_PROXY=1 the dialling side reaches
# the other through a link proxy named "px" (start_proxy; PROXY_PORT),
# e.g. for proxy_cmd px cut.  With PAIR_DIRECTION=reverse the primary
# listens (--listen 127.0.0.1:0, started first) and the secondary dials it
# (--peer).
PRI=pri
SEC=sec
start_pair() {
    local mode=$1 port
    shift
    [ -f "$CERTS/primary.pem" ] || make_certs "$CERTS" primary secondary
    if [ "${PAIR_DIRECTION:-}" = reverse ]; then
        _pair_primary "$mode" --listen 127.0.0.1:0 "$@"
        _pair_via "$PRIMARY_PORT"
        _pair_secondary --peer "127.0.0.1:$PAIR_PORT"
    else
        _pair_secondary --listen 127.0.0.1:0
        _pair_via "$SECONDARY_PORT"
        _pair_primary "$mode" --peer "127.0.0.1:$PAIR_PORT" "$@"
    fi
    NBD_SOCK=$TESTDIR/$PRI.sock
    NBD_URI="nbd+unix:///?socket=$NBD_SOCK"
}
# _pair_via PORT: PAIR_PORT=PORT, or the port of a link proxy to it.
_pair_via() {
    PAIR_PORT=$1
    if [ "${PAIR_PROXY:-0}" = 1 ]; then
        start_proxy px "$1"
        PAIR_PORT=$PROXY_PORT
    fi
}
_pair_secondary() {
    start_secondary "$SEC" --volume "$TESTDIR/replica.img" \
        --meta "$TESTDIR/replica.meta" "$@" \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary \
        ${SEC_EXTRA_ARGS[@]+"${SEC_EXTRA_ARGS[@]}"}
}
_pair_primary() {
    local mode=$1
    shift
    start_primary "$PRI" --volume "$TESTDIR/primary.img" \
        --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/$PRI.sock" \
        --mode "$mode" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary "$@"
}

# ---- data ----

# compare_volumes A B: byte-identical (symlinks followed), else fail naming
# the first difference.
compare_volumes() {
    local a=$1 b=$2 out
    [ "$(stat -L -c %s "$a")" = "$(stat -L -c %s "$b")" ] ||
        fail "$a is $(stat -L -c %s "$a") bytes, $b is $(stat -L -c %s "$b") bytes"
    out=$(cmp "$a" "$b" 2>&1) ||
        fail "$(basename "$a") and $(basename "$b") differ: $out"
    log "$(basename "$a") and $(basename "$b") are identical ($(stat -L -c %s "$a") bytes)"
}

# make_pattern_image FILE SIZE_MIB: random data and zero regions, sparse
# where zero.  Prints the number of non-zero bytes written.
make_pattern_image() {
    local file=$1 mib=$2
    "$PYTHON" - "$file" "$mib" <<'EOF'
import os, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
MiB = 1 << 20
rng = random.Random(mib)
with open(path, "wb") as f:
    f.truncate(mib * MiB)
    off, data = 0, 0
    while off < mib * MiB:
        # alternate random runs and zero holes of 64 KiB .. 8 MiB
        n = min(rng.choice([64 << 10, 1 << 20, 3 << 20, 8 << 20]), mib * MiB - off)
        if rng.random() < 0.45:
            f.seek(off)
            f.write(os.urandom(n))
            data += n
        off += n + rng.choice([0, 4096, 1 << 20, 5 << 20])
print(data)
EOF
}

# nbd_python SCRIPT-ARGS...: run the Python script on stdin with libnbd.
nbd_python() {
    "$PYTHON" - "$@"
}

# scatter SEED COUNT [flush]: COUNT writes of 4 KiB of random data through
# $NBD_SOCK at 4 KiB-aligned offsets that SEED chooses, then a FLUSH if
# asked; fails the test if any of them fails.
scatter() {
    case ${3:-} in
        "" | flush) ;;
        *) fail "scatter: '$3' is not flush" ;;
    esac
    nbd_python "$NBD_SOCK" "$1" "$2" "${3:-}" <<'PY' || fail "writes failed"
import os, random, sys
import nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    h.pwrite(os.urandom(4096), rng.randrange(h.get_size() // 4096) * 4096)
if sys.argv[4] == "flush":
    h.flush()
h.shutdown()
PY
}

# ---- outage helpers ----
#
# For the outage and crash scenarios: a pair whose agents can be restarted
# with their original command lines, kill -9 that the harness knows about,
# a background NBD write load, and the resync figures.
#
#   start_outage_pair MODE [PRIMARY ARGS...]   start_pair, remembered
#   restart_secondary / restart_primary [EXTRA PRIMARY ARGS...]
#   kill9_agent NAME
#   start_writer NAME [--pattern random|tagged|distinct] [--max-bytes N] ...
#   stop_writer NAME / wait_writer_exit NAME; writer_sum NAME FIELD
#   pri_snapshot WRITTEN_VAR LAG_VAR: bytes_written, replication_lag_bytes
#   wait_connected LABEL; wait_resync LABEL [SINCE_MS]: connected, then in
#   sync; sets CONNECTED_MS, RESYNC_SECS
#   check_resync_ratio LABEL WRITTEN_APART SENT [EXTRA FIGURES...]

PAIR_MODE=
declare -a PAIR_PRI_ARGS=()
PAIR_LISTEN_PORT=
PAIR_PEER_PORT=
declare -A _outage_restarts=()

# start_outage_pair MODE [PRIMARY ARGS...]: start_pair (PAIR_PROXY and
# PAIR_DIRECTION as usual), remembering the mode, the extra primary
# arguments and the ports (PAIR_LISTEN_PORT: the listening agent's;
# PAIR_PEER_PORT: what the other dials, the proxy's or the same), so that
# restart_secondary and restart_primary use the same command lines.
start_outage_pair() {
    PAIR_MODE=$1
    shift
    PAIR_PRI_ARGS=("$@")
    start_pair "$PAIR_MODE" "$@"
    PAIR_PEER_PORT=$PAIR_PORT
    if [ "${PAIR_DIRECTION:-}" = reverse ]; then
        PAIR_LISTEN_PORT=$PRIMARY_PORT
    else
        PAIR_LISTEN_PORT=$SECONDARY_PORT
    fi
    cleanup_fn _outage_show_old_logs
}

# What the restarted agent is given: its old port to listen on, or the
# address it dials.
_outage_conn_args() {
    if [ "$1" = listen ]; then
        echo "--listen 127.0.0.1:$PAIR_LISTEN_PORT"
    else
        echo "--peer 127.0.0.1:$PAIR_PEER_PORT"
    fi
}

# Keep the log of an agent's earlier run as NAME.log.N (start_agent
# truncates NAME.log); printed at exit if the test failed.
_outage_rotate_log() {
    local name=$1 n
    n=$((${_outage_restarts[$name]:-0} + 1))
    _outage_restarts[$name]=$n
    [ -f "$TESTDIR/$name.log" ] && mv "$TESTDIR/$name.log" "$TESTDIR/$name.log.$n"
    return 0
}
_outage_show_old_logs() {
    local f
    [ "$_failed" -ne 0 ] || return 0
    for f in "$TESTDIR"/*.log.[0-9]*; do
        [ -s "$f" ] || continue
        echo "----- $(basename "$f") (an earlier run; last 40 lines) -----" >&2
        tail -n 40 "$f" >&2
    done
}

# _outage_forget NAME: drop NAME from the harness's list of agents (it is
# not running; start_agent lists it again), so that it is listed once.
_outage_forget() {
    local n
    local -a keep=()
    for n in "${_agents[@]}"; do
        [ "$n" = "$1" ] || keep+=("$n")
    done
    _agents=("${keep[@]}")
}

# restart_secondary: start $SEC again (it must be stopped or killed) with
# start_pair's command line, on the same port.
restart_secondary() {
    local -a conn
    [ -z "${_agent_pid[$SEC]:-}" ] || fail "restart_secondary: $SEC is still running"
    _outage_rotate_log "$SEC"
    _outage_forget "$SEC"
    if [ "${PAIR_DIRECTION:-}" = reverse ]; then
        read -r -a conn <<<"$(_outage_conn_args dial)"
    else
        read -r -a conn <<<"$(_outage_conn_args listen)"
    fi
    start_secondary "$SEC" --volume "$TESTDIR/replica.img" \
        --meta "$TESTDIR/replica.meta" "${conn[@]}" \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary \
        ${SEC_EXTRA_ARGS[@]+"${SEC_EXTRA_ARGS[@]}"}
}

# restart_primary [EXTRA ARGS...]: start $PRI again with start_pair's
# command line, mode $PAIR_MODE and the remembered extra arguments.
restart_primary() {
    local -a conn
    [ -z "${_agent_pid[$PRI]:-}" ] || fail "restart_primary: $PRI is still running"
    _outage_rotate_log "$PRI"
    _outage_forget "$PRI"
    if [ "${PAIR_DIRECTION:-}" = reverse ]; then
        read -r -a conn <<<"$(_outage_conn_args listen)"
    else
        read -r -a conn <<<"$(_outage_conn_args dial)"
    fi
    start_primary "$PRI" --volume "$TESTDIR/primary.img" \
        --meta "$TESTDIR/primary.meta" --nbd "unix:$TESTDIR/$PRI.sock" \
        "${conn[@]}" --mode "$PAIR_MODE" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary \
        "${PAIR_PRI_ARGS[@]}" "$@"
}

# agent_exit NAME [TIMEOUT_S]: the agent is expected to exit by itself
# (e.g. after demote): the harness stops watching it, waits (default
# 30 s) and sets AGENT_EXIT to its exit status; fails if it does not exit.
agent_exit() {
    local name=$1 t=${2:-30} pid deadline
    pid=${_agent_pid[$name]:-}
    [ -n "$pid" ] || fail "agent_exit: $name is not running"
    _agent_pid[$name]=
    deadline=$((SECONDS + t * SLOW))
    while _alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] ||
            fail "$name (pid $pid) did not exit within $((t * SLOW)) s"
        sleep 0.05
    done
    wait "$pid" 2>/dev/null && AGENT_EXIT=0 || AGENT_EXIT=$?
    log "$name (pid $pid) exited with status $AGENT_EXIT"
}

# kill9_agent NAME: SIGKILL the agent, wait until it is gone and make the
# harness forget it (no SIGTERM check at exit; restart it with start_agent
# or restart_primary/restart_secondary).
kill9_agent() {
    local name=$1 pid
    pid=${_agent_pid[$name]:-}
    [ -n "$pid" ] || fail "kill9_agent: $name is not running"
    _alive "$pid" || fail "kill9_agent: $name (pid $pid) died before the kill"
    _agent_pid[$name]=
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    ! _alive "$pid" || fail "kill9_agent: $name (pid $pid) survived SIGKILL"
    log "$name (pid $pid) killed with SIGKILL"
}

# pri_snapshot WRITTEN_VAR LAG_VAR: sets the two variables to the
# primary's bytes_written and replication_lag_bytes, from one status call;
# fails the test if status fails.
pri_snapshot() {
    local _s _w _l
    _s=$(status_json "$PRI") || fail "pri_snapshot: no status from $PRI"
    read -r _w _l < <(jq -r '"\(.bytes_written) \(.replication_lag_bytes)"' <<<"$_s")
    [[ "$_w" =~ ^[0-9]+$ && "$_l" =~ ^[0-9]+$ ]] ||
        fail "pri_snapshot: bad status from $PRI: $_s"
    printf -v "$1" '%s' "$_w"
    printf -v "$2" '%s' "$_l"
}

# now_ms: wall clock in milliseconds.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# built_commit: the commit the binaries in $DUPLEX_BUILD were built from,
# as their --version says ("-dirty": from a tree with uncommitted
# changes), or "unknown".  Reports name this, not the source tree's HEAD,
# which may have moved on since the build.
built_commit() {
    local c
    c=$("$DUPLEX_BUILD/duplex-primary" --version 2>/dev/null |
        sed -n 's/.*(git \(.*\))$/\1/p')
    echo "${c:-unknown}"
}

# code_changes COMMIT: the uncommitted changes to the code in the source
# tree (file names), when COMMIT (built_commit's answer) is this tree's
# HEAD with changes; empty otherwise.
code_changes() {
    local c=$1
    [ "$c" = "$(git -C "$DUPLEX_SRC" describe --always --dirty 2>/dev/null)" ] &&
        [ "${c%-dirty}" != "$c" ] || return 0
    git -C "$DUPLEX_SRC" status --porcelain -- common primary secondary store ctl proto CMakeLists.txt 2>/dev/null |
        awk '{ print $2 }' | paste -sd' '
}

# ---- write load ----
#
# start_writer NAME [OPTIONS]: a serial libnbd client on $NBD_SOCK in the
# background, writing 4 KiB blocks until NAME.stop exists (stop_writer),
# --max-bytes is reached or (with --tolerate-errors) the server goes away.
# Options (see _outage_writer_py): --pattern random (random data at random
# aligned offsets, the default), tagged (random offsets, each block holds
# its sequence number and offset), distinct (each block written once, in a
# shuffled order, holding its sequence number and offset); --seed N;
# --max-bytes N; --tolerate-errors.  Files: NAME.acked ("SEQ OFFSET" per
# answered write, tagged and distinct), NAME.sum (JSON at exit: issued,
# acked, bytes_issued, bytes_acked, max_latency_s, error), NAME.err.
declare -A _writer_pid=()
_outage_writer_py() {
    cat <<'PY'
import argparse, json, os, random, struct, sys, time
import nbd

TAG = b"DUPLEXWR"
BS = 4096

def tag_block(seq, off):
    hdr = struct.pack("<8sQQ", TAG, seq, off)
    return (hdr * (BS // len(hdr) + 1))[:BS]

ap = argparse.ArgumentParser()
ap.add_argument("socket")
ap.add_argument("name")
ap.add_argument("--pattern", choices=["random", "tagged", "distinct"],
                default="random")
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--max-bytes", type=int, default=0)
ap.add_argument("--tolerate-errors", action="store_true")
a = ap.parse_args()

stop = a.name + ".stop"
rng = random.Random(a.seed)
h = nbd.NBD()
h.connect_unix(a.socket)
nblocks = h.get_size() // BS
if a.pattern == "distinct":
    order = list(range(nblocks))
    rng.shuffle(order)
acked_log = open(a.name + ".acked", "w") if a.pattern != "random" else None
st = {"issued": 0, "acked": 0, "bytes_issued": 0, "bytes_acked": 0,
      "max_latency_s": 0.0, "error": None, "last_issued": None}
rc = 0
try:
    while not os.path.exists(stop):
        if a.max_bytes and st["bytes_issued"] >= a.max_bytes:
            break
        seq = st["issued"] + 1
        if a.pattern == "distinct":
            if seq > nblocks:
                break
            off = order[seq - 1] * BS
        else:
            off = rng.randrange(nblocks) * BS
        buf = os.urandom(BS) if a.pattern == "random" else tag_block(seq, off)
        st["issued"] = seq
        st["bytes_issued"] += BS
        st["last_issued"] = [seq, off]
        t0 = time.monotonic()
        h.pwrite(buf, off)
        st["max_latency_s"] = max(st["max_latency_s"],
                                  round(time.monotonic() - t0, 3))
        st["acked"] += 1
        st["bytes_acked"] += BS
        if acked_log:
            acked_log.write("%d %d\n" % (seq, off))
            if seq % 64 == 0:
                acked_log.flush()
    h.shutdown()
except nbd.Error as e:
    st["error"] = str(e)
    if not a.tolerate_errors:
        rc = 1
if acked_log:
    acked_log.close()
with open(a.name + ".sum.tmp", "w") as f:
    json.dump(st, f)
os.rename(a.name + ".sum.tmp", a.name + ".sum")
sys.exit(rc)
PY
}

start_writer() {
    local name=$1
    shift
    [ -f "$TESTDIR/writer.py" ] || _outage_writer_py >"$TESTDIR/writer.py"
    rm -f "$TESTDIR/$name.stop" "$TESTDIR/$name.sum" "$TESTDIR/$name.acked"
    "$PYTHON" "$TESTDIR/writer.py" "$NBD_SOCK" "$TESTDIR/$name" "$@" \
        >"$TESTDIR/$name.err" 2>&1 </dev/null &
    _writer_pid[$name]=$!
    cleanup_fn _outage_kill_writer "$name"
    log "writer $name started (pid ${_writer_pid[$name]}): $*"
}
_outage_kill_writer() {
    local pid=${_writer_pid[$1]:-}
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# wait_writer_exit NAME: wait (with a deadline) for the writer to exit;
# fails the test if it failed or wrote no NAME.sum.
wait_writer_exit() {
    local name=$1 pid rc
    pid=${_writer_pid[$name]:-}
    [ -n "$pid" ] || fail "writer $name is not running"
    wait_until -t 60 -m "writer $name exits" "! _alive $pid"
    wait "$pid" 2>/dev/null && rc=0 || rc=$?
    _writer_pid[$name]=
    if [ "$rc" -ne 0 ] || [ ! -s "$TESTDIR/$name.sum" ]; then
        cat "$TESTDIR/$name.err" >&2
        fail "writer $name exited with status $rc ($(cat "$TESTDIR/$name.sum" 2>/dev/null))"
    fi
    log "writer $name: $(cat "$TESTDIR/$name.sum")"
}

# stop_writer NAME: ask the writer to stop after its current write; wait.
stop_writer() {
    touch "$TESTDIR/$1.stop"
    wait_writer_exit "$1"
}

# writer_running NAME: the writer has not exited.
writer_running() { local p=${_writer_pid[$1]:-}; [ -n "$p" ] && _alive "$p"; }

# writer_sum NAME FIELD: one field of NAME.sum.
writer_sum() { jq -r --arg f "$2" '.[$f]' "$TESTDIR/$1.sum"; }

# wait_written BYTES [SECONDS]: until the primary's bytes_written reaches
# BYTES (the writer must be running).
wait_written() {
    wait_until -t "${2:-60}" -m "primary bytes_written reaches $1" \
        "[ \"\$(status_field $PRI bytes_written)\" -ge $1 ]"
}

# ---- resync figures ----

# _outage_not_flapping LABEL: fails the test once $PRI has connected 5 more
# times since wait_connected or wait_resync began (a link that drops at
# every attempt would otherwise only time out), naming the last error.
_resync_connects0=0
_outage_not_flapping() {
    local s n
    s=$(status_json "$PRI") || return 1
    n=$(jq -r .connects <<<"$s")
    [ "$n" -lt $((_resync_connects0 + 5)) ] ||
        fail "$1: the link dropped $((n - _resync_connects0)) times during the resync; last_error: $(jq -r .last_error <<<"$s")"
}

# wait_connected LABEL: wait until $PRI is connected; sets CONNECTED_MS
# (when it was first seen connected).
CONNECTED_MS=
wait_connected() {
    _resync_connects0=$(status_field "$PRI" connects)
    wait_until -t 60 -m "$1: $PRI reconnects" \
        "_outage_not_flapping '$1' && [ \"\$(status_field $PRI connection)\" = connected ]"
    CONNECTED_MS=$(now_ms)
}

# wait_resync LABEL [SINCE_MS]: wait until $PRI is connected (unless
# SINCE_MS, the moment it was seen connected, is given), then until it is
# in sync with nothing pending; sets RESYNC_SECS (connected to in sync,
# 0.1 s resolution, as seen by polling).
RESYNC_SECS=
wait_resync() {
    local t1=${2:-} t2
    if [ -z "$t1" ]; then
        wait_connected "$1"
        t1=$CONNECTED_MS
    fi
    _resync_connects0=$(status_field "$PRI" connects)
    wait_until -t 120 -m "$1: $PRI connected, in sync, no lag" \
        "_outage_not_flapping '$1' && status_json $PRI | jq -e '.connection == \"connected\" and .sync == \"in-sync\" and .out_of_sync_bytes == 0 and .replication_lag_bytes == 0' >/dev/null"
    t2=$(now_ms)
    RESYNC_SECS=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
}

# check_resync_ratio LABEL WRITTEN_APART SENT [EXTRA FIGURES...]: prints
# the FIGURES line and fails unless 0 < WRITTEN_APART and SENT <= 2 x
# WRITTEN_APART.
check_resync_ratio() {
    local label=$1 apart=$2 sent=$3 ratio secs rate
    shift 3
    ratio=$(awk -v s="$sent" -v a="$apart" 'BEGIN { printf "%.3f", a ? s / a : 0 }')
    # The agent's own figures of its last resync run: duration, bytes sent
    # and bytes covered (sent + found equal by checksum) per second.
    read -r secs rate <<<"$(status_json "$PRI" 2>/dev/null | jq -r '
        (.resync_seconds // 0) as $t |
        if $t > 0 then "\($t) \(.resync_bytes_sent / $t / 1048576 * 10 | round / 10)/\(.resync_bytes_total / $t / 1048576 * 10 | round / 10)"
        else "\($t) ?" end')" || true
    echo "FIGURES: $TEST_NAME $label: written_apart_bytes=$apart resync_bytes_sent=$sent ratio=$ratio resync_seconds=${secs:-?} resync_mib_per_sec_sent/covered=${rate:-?} polled_resync_secs=${RESYNC_SECS:-?} $*"
    [ "$apart" -gt 0 ] || fail "$label: nothing was written while apart"
    [ "$sent" -le $((2 * apart)) ] ||
        fail "$label: resync sent $sent bytes > 2 x $apart bytes written while apart (ratio $ratio)"
}
