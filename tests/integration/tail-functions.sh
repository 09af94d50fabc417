# Helpers for the tail capture tests (issue 11), sourced after functions.sh
# and fs-functions.sh: a loop device with ext4 that a workload writes
# directly, a secondary with a snapshot store, and duplex-primary tailing
# the loop device.

# requires_tail: root, loop devices and the block tracepoints, or skip.
requires_tail() {
    requires_root
    requires_loop
    requires mkfs.ext4 e2fsck dumpe2fs fio sha256sum nbdcopy mount umount
    local tr=/sys/kernel/tracing
    # A fresh machine may not have tracefs mounted: the agent mounts it
    # (libtracefs), and so does the test before it looks for the event.
    if [ -d "$tr" ] && [ ! -d "$tr/events" ] && ! mountpoint -q "$tr"; then
        mount -t tracefs nodev "$tr" ||
            echo "$TEST_NAME: mounting tracefs on $tr failed" >&2
    fi
    [ -d "$tr/events/block" ] || tr=/sys/kernel/debug/tracing
    [ -r "$tr/events/block/block_rq_complete/format" ] || {
        echo "$TEST_NAME: SKIP: no tracefs with block:block_rq_complete" \
            "(mount -t tracefs nodev /sys/kernel/tracing)" >&2
        exit 77
    }
}

# _device_file MiB: device.img, the file behind the loop device.
_device_file() {
    truncate -s "${1}M" "$TESTDIR/device.img"
}

# make_device MiB: a loop device over device.img with ext4 on it, mounted
# (noatime: reading the files to hash them writes nothing) on $MNT.  Sets
# DEV and MNT.
make_device() {
    _device_file "$1"
    DEV=$(losetup -f --show "$TESTDIR/device.img") || fail "losetup failed"
    hold loop "$DEV"
    mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$DEV" ||
        fail "mkfs.ext4 $DEV failed"
    MNT=$TESTDIR/mnt
    mkdir -p "$MNT"
    mount -o noatime "$DEV" "$MNT" || fail "mount $DEV failed"
    hold mount "$MNT"
}

# make_raw_device MiB: a loop device over device.img, no file system.
make_raw_device() {
    _device_file "$1"
    DEV=$(losetup -f --show "$TESTDIR/device.img") || fail "losetup failed"
    hold loop "$DEV"
}

# sectors_written: what the loop device has written since it was set up.
sectors_written() {
    awk '{print $7}' "/sys/block/$(basename "$DEV")/stat"
}

# start_tail_secondary: the secondary (listening on port 0, snapshot store
# S), certificates made if needed.
start_tail_secondary() {
    [ -f "$CERTS/primary.pem" ] || make_certs "$CERTS" primary secondary
    start_secondary sec --volume "$TESTDIR/replica.img" \
        --meta "$TESTDIR/replica.meta" --listen 127.0.0.1:0 \
        --snapshot-store "$TESTDIR/S" \
        --tls-cert "$CERTS/secondary.pem" --tls-key "$CERTS/secondary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name primary
}

# start_tail_primary [ARGS...]: duplex-primary tailing $DEV.
start_tail_primary() {
    start_primary pri --capture tail --volume "$DEV" \
        --meta "$TESTDIR/primary.meta" --peer "127.0.0.1:$sec_port" \
        --tls-cert "$CERTS/primary.pem" --tls-key "$CERTS/primary.key" \
        --tls-ca "$CERTS/ca.pem" --peer-name secondary "$@"
}

capture_state() { status_json pri | jq -r '.capture.state'; }

# wait_tracing: the comparison of the whole device is over.
wait_tracing() {
    wait_until -t 60 -m "the scan of $DEV ends" '[ "$(capture_state)" = tracing ]'
}

# drain_point NAME: a consistency point named NAME (no freeze): the agent
# drains the trace rings, so every write completed before it is captured,
# and waits until the secondary has all of it.  Then wait_drained.
drain_point() {
    take_point "$1" >/dev/null
    wait_drained
}

# take_point NAME [ARGS...]: snapshot create --name NAME --json ARGS,
# again while a periodic point is being taken; prints its answer.
take_point() {
    local name=$1 out deadline=$((SECONDS + 30 * SLOW))
    shift
    until out=$("$DUPLEXCTL" --control "$TESTDIR/pri.ctl" snapshot create \
        --name "$name" --json "$@" 2>&1); do
        case $out in
            *"being taken"*) ;;
            *) fail "consistency point $name failed: $out" ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || fail "consistency point $name: $out"
        sleep 0.1
    done
    printf '%s\n' "$out"
}

# wait_drained: every captured change is on the secondary (nothing is
# writing any more; drain_point first, or a write completed in the last
# milliseconds may not have been read from the trace yet).
wait_drained() {
    wait_until -t 60 -m "every captured change applied" \
        '[ "$(status_field pri sync)" = in-sync ]'
}

# make_tree DIR: random files (4 KiB .. 256 KiB) in a few directories.
make_tree() {
    local d=$1 i
    mkdir -p "$d"
    for i in $(seq 1 60); do
        mkdir -p "$d/d$((i % 6))"
        head -c $(((RANDOM % 64 + 1) * 4096)) /dev/urandom >"$d/d$((i % 6))/f$i"
    done
}

# start_load: fio writing files in $MNT (random 4 KiB writes with fsync
# every 16, in runs of 2 s) and a loop copying a tree of files into it,
# until stop_load (or 300 s, a safety net), in a process group of their own
# (LOAD_PGID, also in load.pgid, written before the load writes anything)
# so hooks can pause them (kill -STOP; fio runs its jobs as threads: job
# processes would setsid out of the group).  A pre-hook creates
# load.pgid.hold first and its post-hook removes it: a load starting in
# between waits.  The test decides when the load has done enough (a count
# of points, a kill in the middle), not a duration that a slow machine
# would use up before the test gets there.
start_load() {
    [ -d "$TESTDIR/tree" ] || make_tree "$TESTDIR/tree"
    rm -f "$TESTDIR/load.stop"
    setsid bash -c '
        echo $$ >"$4.tmp" && mv "$4.tmp" "$4" # before any write
        # A point whose pre-hook ran before that file existed: wait for
        # its post-hook.
        while [ -e "$4.hold" ]; do sleep 0.01; done
        end=$((SECONDS + 300))
        (while [ ! -e "$2" ] && [ $SECONDS -lt $end ]; do
            fio --name=load --thread --directory="$1" --rw=randwrite --bs=4k \
                --size=8M --numjobs=2 --ioengine=psync --fsync=16 \
                --time_based --runtime=2 --output=/dev/null || exit 1
        done) &
        f=$!
        n=0
        while [ ! -e "$2" ] && [ $SECONDS -lt $end ]; do
            n=$((n + 1))
            rm -rf "$1/copy$((n % 3))"
            cp -a "$3" "$1/copy$((n % 3))" || exit 1
        done
        wait $f' load "$MNT" "$TESTDIR/load.stop" "$TESTDIR/tree" \
        "$TESTDIR/load.pgid" >"$TESTDIR/load.log" 2>&1 </dev/null &
    LOAD_PID=$!
    echo "$LOAD_PID" >>"$TESTDIR/.agents"
    LOAD_PGID=$LOAD_PID
    hold proc load "$LOAD_PID"
}

# stop_load: end the load (its current fio run finishes) and wait for it;
# fails the test if it failed or had already ended.
stop_load() {
    _alive "$LOAD_PID" || fail "the load ended before the test stopped it"
    touch "$TESTDIR/load.stop"
    wait "$LOAD_PID" || { cat "$TESTDIR/load.log" >&2; fail "the load failed"; }
    forget proc load
}
