/* Range locks serialising overlapping operations on one volume: on the
 * primary, client writes against the block sender's reads (a write and a
 * resync read of the same blocks must reach the stream in the order they
 * reach the volume).  No I/O; either agent can host a lock set. */
#ifndef DUPLEX_LOCK_H
#define DUPLEX_LOCK_H

#include <stdbool.h>
#include <stdint.h>

struct lockset;
struct range_lock;
typedef void (*lock_granted_fn)(struct range_lock *l, void *opaque);

struct lockset *lock_set_new(void);
void lock_set_free(struct lockset *ls);
/* Grants in arrival order among overlapping requests.  Returns the lock;
 * *granted tells whether it is held already (then fn is not called),
 * otherwise fn runs when it is granted. */
struct range_lock *lock_acquire(struct lockset *ls, uint64_t start,
                                uint64_t end, lock_granted_fn fn, void *opaque,
                                bool *granted);
void lock_release(struct lockset *ls, struct range_lock *l);
unsigned lock_held_count(const struct lockset *ls);

#endif
