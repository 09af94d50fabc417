# Helpers for tests that put a filesystem on an agent's NBD export
# (nbdfuse + a loop device), sourced after functions.sh: what is set up is
# undone in reverse order at exit; manifests of files and their hashes.
# The caller sets VOLUME_SIZE (bytes) before attach.

# ---- what is set up, undone in reverse order ----
#
# Each entry is "KIND KEY [PID]": thaw DIR (a frozen filesystem), mount
# DIR, loop DEV, fuse DIR PID (nbdfuse), proc NAME PID (a background job).
# release undoes one entry now; at exit whatever is left is undone in
# reverse order, so a loop device number reused by another test is never
# touched.
declare -a held=()
hold() { held+=("$*"); }

# _undo KIND KEY [PID]: undo one entry.  0: undone; 1: not undone (still
# set up); 2: undone, but its process exited with an error.
_undo() {
    local kind=$1 key=$2 pid=${3:-}
    case $kind in
        thaw) fsfreeze -u "$key" || return 1 ;;
        mount) umount "$key" || return 1 ;;
        loop) losetup -d "$key" || return 1 ;;
        fuse)
            fusermount3 -u "$key" || return 1
            wait_until -m "nbdfuse on $key exits" "! _alive $pid"
            wait "$pid" || return 2 ;;
        proc)
            # A process group of its own (setsid): all of it, stopped or not.
            kill -CONT -- "-$pid" 2>/dev/null
            kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null ;;
    esac
    return 0
}

# forget KIND KEY: drop the entry (undone otherwise).
forget() {
    local i f
    for ((i = ${#held[@]} - 1; i >= 0; i--)); do
        read -r -a f <<<"${held[$i]}"
        [ "${f[0]}" = "$1" ] && [ "${f[1]}" = "$2" ] || continue
        unset "held[$i]"
        held=(${held[@]+"${held[@]}"})
        return 0
    done
    fail "$1 $2: not set up"
}

# release KIND KEY: undo the entry now and forget it; fails the test if
# that fails (what is still set up is then left to the exit).
release() {
    local i f rc=0
    for ((i = ${#held[@]} - 1; i >= 0; i--)); do
        read -r -a f <<<"${held[$i]}"
        [ "${f[0]}" = "$1" ] && [ "${f[1]}" = "$2" ] && break
    done
    [ "$i" -ge 0 ] || fail "release $1 $2: not set up"
    _undo "${f[@]}" || rc=$?
    [ "$rc" -eq 1 ] || forget "$1" "$2"
    [ "$rc" -eq 0 ] || fail "undoing '${f[*]}' failed"
}

# At exit: undo everything left, newest first, forcing what resists.
undo_all() {
    local i f
    for ((i = ${#held[@]} - 1; i >= 0; i--)); do
        read -r -a f <<<"${held[$i]}"
        case ${f[0]} in
            mount) umount "${f[1]}" 2>/dev/null || umount -l "${f[1]}" ;;
            fuse)
                fusermount3 -u "${f[1]}" 2>/dev/null || umount -l "${f[1]}"
                kill "${f[2]}" 2>/dev/null
                wait "${f[2]}" 2>/dev/null ;;
            *) _undo "${f[@]}" || true ;;
        esac
    done
    held=()
    return 0
}
cleanup_fn undo_all

# attach NAME SOCKET [ro]: nbdfuse NAME.fuse on the NBD server at SOCKET,
# then a loop device on it; sets LOOP.
LOOP=
attach() {
    local name=$1 sock=$2 ro=${3:-} pid
    local -a r=()
    [ "$ro" = ro ] && r=(-r)
    mkdir -p "$name.fuse"
    rm -f "$name.nbdfuse.pid"
    nbdfuse "${r[@]}" -P "$name.nbdfuse.pid" "$name.fuse" --unix "$sock" \
        >"$name.nbdfuse.log" 2>&1 </dev/null &
    pid=$!
    # Listed with the agents: the watchdog leaves it to the cleanup.
    echo "$pid" >>.agents
    hold fuse "$TESTDIR/$name.fuse" "$pid"
    wait_until -m "nbdfuse $name ready" \
        "[ -s $name.nbdfuse.pid ] && [ -e $name.fuse/nbd ] || ! _alive $pid"
    _alive "$pid" || fail "nbdfuse $name exited: $(cat "$name.nbdfuse.log")"
    [ "$(stat -c %s "$name.fuse/nbd")" = "$VOLUME_SIZE" ] ||
        fail "$name.fuse/nbd is $(stat -c %s "$name.fuse/nbd") bytes, not $VOLUME_SIZE"
    r=()
    [ "$ro" = ro ] && r=(--read-only)
    LOOP=$(losetup --find --show "${r[@]}" "$name.fuse/nbd") ||
        fail "losetup on $name.fuse/nbd failed"
    hold loop "$LOOP"
}

# manifest DIR OUT: "HASH  ./PATH" of every file under DIR, sorted by name.
manifest() {
    (cd "$1" && find . -type f ! -path './lost+found/*' -print0 | sort -z |
        xargs -0 -r sha256sum) >"$2" || fail "hashing the files under $1 failed"
}

