/* Block sender: the blocks marked in a bitmap, read from a source (a
 * volume, a snapshot) and sent over a transport while the source may keep
 * changing under range locks.  Role-neutral (DESIGN.md "Roles, direction
 * and the way back"): the primary hosts it for its initial sync and resync
 * (primary/resync.c wires it to its link and volume); a fake transport and
 * an in-memory source host it in tests/unit/test-sender.c.
 *
 * The sender owns no I/O and no socket.  The source reads, the transport
 * puts frames on the wire and calls each op's acked exactly once.  The
 * receiver applies data and zero ranges in stream order; what the sender
 * needs from it is an acknowledgement per frame and, to compare before
 * sending (--resync-checksums, crash recovery), hashes of its blocks. */
#ifndef DUPLEX_SENDER_H
#define DUPLEX_SENDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bitmap;
struct lockset;
struct sender;

/* One frame on the transport. */
struct sender_op {
  /* Called by the transport exactly once when the frame was acknowledged
   * (ok) or lost with the link (!ok); never when the send returned -1. */
  void (*acked)(struct sender_op *op, bool ok);
  /* Answers to ask_hashes, valid only during acked: the receiver's
   * hash_block of each 4 KiB block, or NULL when it had no usable answer
   * (then the whole range is sent). */
  const uint64_t *hashes;
  size_t n_hashes;
};

/* data was written out or dropped with the link: the sender may free it. */
typedef void (*sender_ref_done_fn)(const void *data, size_t len, void *arg);

struct sender_transport {
  bool (*connected)(void *arg);
  /* Each send returns 0, or -1 if not connected (then op->acked never
   * runs).  Frames go out in call order. */
  /* [off, off+len) as data; data is not copied: ref_done runs once it was
   * written out or dropped (it may run before send_data returns). */
  int (*send_data)(void *arg, struct sender_op *op, uint64_t off,
                   uint32_t len, const void *data,
                   sender_ref_done_fn ref_done, void *ref_arg);
  /* [off, off+len) reads as zeroes (the receiver may punch it). */
  int (*send_zero)(void *arg, struct sender_op *op, uint64_t off,
                   uint64_t len);
  /* Ask the receiver for hashes of its blocks of [off, off+len); the
   * answer arrives in op->hashes.  It is a barrier in the stream: it sees
   * everything sent before it. */
  int (*ask_hashes)(void *arg, struct sender_op *op, uint64_t off,
                    uint32_t len);
  /* Progress, for the receiver's status (not acknowledged). */
  void (*progress)(void *arg, uint64_t total, uint64_t done,
                   uint64_t remaining);
  void *arg;
};

typedef void (*sender_read_done_fn)(void *cookie, long res);

struct sender_source {
  const char *name;             /* for messages (a path) */
  /* Read [off, off+len) into buf (BDEV_ALIGN aligned, len a multiple of
   * it) and call done(cookie, bytes read or -errno) once, possibly before
   * read returns. */
  void (*read)(void *arg, uint64_t off, uint64_t len, void *buf,
               sender_read_done_fn done, void *cookie);
  /* Like SEEK_DATA / SEEK_HOLE (the source's size when there is none);
   * NULL when the source knows no holes. */
  uint64_t (*next_data)(void *arg, uint64_t off);
  uint64_t (*next_hole)(void *arg, uint64_t off);
  void *arg;
};

struct sender_env {
  struct bitmap *todo;          /* what to send, cleared as it goes; a bit
                                   set again while running is sent too */
  struct lockset *locks;        /* against writes to the source; NULL if
                                   nothing else writes it */
  struct sender_source src;
  struct sender_transport tp;
  uint64_t chunk;               /* largest read, a multiple of the grain */
  uint64_t window;              /* bytes read or unacknowledged at most
                                   (0: 16 MiB) */
  /* Compare hashes with the receiver first and send only differing
   * blocks (asked at each start; NULL: never). */
  bool (*compare)(void *arg);
  /* Or per chunk, as it starts: compare [off, off+len) first?  (Tail
   * capture compares only what its trace could not account for.) */
  bool (*compare_range)(void *arg, uint64_t off, uint64_t len);
  /* Everything marked was sent and acknowledged. */
  void (*complete)(void *arg);
  const char *who;              /* log prefix: "primary" */
  bool quiet;                   /* runs come and go all the time (tail
                                   capture): log them at debug level */
  const char *peer;             /* "the secondary" */
  void *arg;
};

struct sender_counters {
  uint64_t total_bytes, done_bytes;
  uint64_t data_bytes_sent, zero_bytes_sent;
  uint64_t started_ms, finished_ms;
  bool full;
  bool ever_completed;
  bool compared;                /* this run compares hashes first */
  uint64_t same_bytes;          /* compared equal, not sent */
  uint64_t compared_sent_bytes; /* sent after a comparison: found
                                   different */
  uint64_t read_errors;         /* runs stopped by a failed read */
};

struct sender *sender_new(const struct sender_env *env);
void sender_free(struct sender *s);
/* The transport is up: send everything marked (full: mark all first). */
void sender_begin(struct sender *s, bool full);
/* The transport dropped: forget chunks in flight (their bits are set
 * again as their frames fail). */
void sender_abort(struct sender *s);
/* Room on the transport, a lock released, bits added: go on. */
void sender_kick(struct sender *s);
bool sender_active(const struct sender *s);
/* Chunks not yet freed (0 once everything sent was acknowledged). */
unsigned sender_chunks(const struct sender *s);
void sender_get_counters(const struct sender *s, struct sender_counters *c);

#endif
