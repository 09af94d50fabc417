/* The snapshot list as `duplex-store list [--json]` and the secondary's
 * `duplexctl snapshot list [--json]` print it: a JSON array with one
 * object a snapshot, or a text table.  Pure formatting, no I/O: the
 * caller lists its snapshots and adds them one by one. */
#ifndef DUPLEX_STORE_SNAPLIST_H
#define DUPLEX_STORE_SNAPLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

/* Whose list it is.  The store's (duplex-store list): every snapshot is
 * complete; JSON adds parent and full, the table shows sizes in units and
 * the epoch.  A running secondary's (snapshot list): snapshots still being
 * copied come last; JSON adds copied_blocks and total_blocks to those, the
 * table shows the state and sizes in bytes. */
enum snaplist_view { SNAPLIST_STORE, SNAPLIST_AGENT };

struct snaplist_entry {
  uint64_t id;
  const char *name;
  uint64_t created_ns;
  uint64_t epoch;
  unsigned reason;                      /* enum snap_reason */
  uint64_t size_bytes, stored_bytes;
  bool complete;                        /* else "copying" */
  uint64_t copied_blocks, total_blocks; /* SNAPLIST_AGENT, while copying */
  uint64_t parent;                      /* SNAPLIST_STORE; 0: full */
};

struct snaplist {
  struct evbuffer *out;
  enum snaplist_view view;
  bool json;
  size_t n;                             /* entries added */
};

/* "[" or the table's header line. */
void snaplist_begin(struct snaplist *l, struct evbuffer *out,
                    enum snaplist_view view, bool json);
void snaplist_add(struct snaplist *l, const struct snaplist_entry *e);
/* "]\n" (after a newline when the array is not empty); nothing for a
 * table. */
void snaplist_end(struct snaplist *l);

/* ns since the epoch as RFC 3339 UTC, whole seconds
 * ("2024-05-01T12:00:00Z"). */
void snaplist_rfc3339(uint64_t ns, char *out, size_t outlen);

#endif
