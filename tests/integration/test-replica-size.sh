#!/bin/bash
# An existing replica smaller than the primary's volume is refused with a
# logged error; it is neither written nor grown, and the secondary keeps
# running.  A missing replica is created at the primary's size.
source "$(dirname "$0")/functions.sh"

truncate -s 64M primary.img
head -c 4M /dev/urandom | dd of=primary.img bs=1M seek=10 conv=notrunc status=none
truncate -s 32M replica.img
head -c 1M /dev/urandom | dd of=replica.img bs=1M seek=3 conv=notrunc status=none
sum=$(sha256sum <replica.img)

start_pair sync
# Log lines with paths removed (the test directory's name has "size" in it).
sec_says() { grep -v '^+ ' "$TESTDIR/sec.log" | sed 's#/[^ ]*#PATH#g' | grep -iE "$1"; }
wait_until -t 30 -m "secondary logs the size refusal" "sec_says 'small|size' >/dev/null"
log "secondary logged: $(sec_says 'small|size' | head -n 1)"
end=$((SECONDS + 3))
while [ "$SECONDS" -lt "$end" ]; do
    [ "$(status_field pri connection)" != connected ] ||
        fail "the primary connected to a replica smaller than its volume"
    sleep 0.1
done
[ "$(stat -c %s replica.img)" = $((32 * 1024 * 1024)) ] ||
    fail "the small replica was resized to $(stat -c %s replica.img)"
[ "$(sha256sum <replica.img)" = "$sum" ] || fail "the small replica was written"
stop_agent pri || fail "primary did not stop cleanly"
stop_agent sec || fail "secondary did not stop cleanly"

# A missing replica: created at the primary's size; the allocation is
# printed for information (zero ranges may or may not allocate).
rm -f replica.img replica.meta primary.meta
PRI=pri2 SEC=sec2
start_pair sync
wait_in_sync pri2 sec2
[ "$(stat -c %s replica.img)" = $((64 * 1024 * 1024)) ] ||
    fail "the new replica is $(stat -c %s replica.img) bytes, not 64 MiB"
compare_volumes primary.img replica.img
log "new replica: $(($(stat -c %b replica.img) * $(stat -c %B replica.img) / 1024)) KiB allocated of 65536 KiB"
