/* Ordered application of a stream of block operations to a volume: the
 * secondary applies the primary's replication stream with it, and either
 * agent can host it wherever received blocks must land in stream order
 * (DESIGN.md "Roles, direction and the way back").  apply.c decides when
 * each op may start and reports completion in stream order; a backend does
 * the I/O (apply-bdev.c for a block device or file, a fake in
 * tests/unit/test-apply.c). */
#ifndef DUPLEX_APPLY_H
#define DUPLEX_APPLY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "aio.h"
#include "blockdev.h"

/* ---- apply.c ----
 *
 * Operations are queued in stream order.  The module decides when each may
 * start (epoch barrier, flush, overlap and in-flight limits) and reports
 * completion in stream order; the I/O itself is done by a backend (replica.c,
 * or a fake in tests/unit/test-apply.c), so the ordering logic is testable
 * without a disk. */
enum apply_type { APPLY_WRITE, APPLY_ZERO, APPLY_FLUSH,
                  APPLY_MARK, /* like FLUSH but internal: the caller decides
                                 what its completion means (seq may be 0) */
                  APPLY_VERIFY /* a barrier like FLUSH whose I/O reads
                                  [offset, offset+length) into mem, to be
                                  hashed; answered by VERIFY_RESULT */
};
enum apply_io { APPLY_IO_WRITE, APPLY_IO_ZERO, APPLY_IO_SYNC, APPLY_IO_READ };
enum apply_op_state { APPLY_OP_QUEUED, APPLY_OP_RUNNING, APPLY_OP_SYNCING,
                      APPLY_OP_DONE };

struct apply;

struct apply_op {
  /* filled by the caller */
  enum apply_type type;
  uint64_t seq;
  uint64_t epoch;
  uint64_t offset;
  uint64_t length;              /* WRITE: payload bytes; ZERO: range */
  uint32_t flags;               /* OP_FLAG_* from the wire */
  char *mem;                    /* owned, freed with the op (may be NULL) */
  uint64_t held;                /* memory mem takes, for backpressure */
  const char *data;             /* WRITE payload, BDEV_ALIGN aligned */
  uint64_t tag;                 /* MARK: the caller's */
  /* owned by apply.c */
  enum apply_op_state state;
  enum apply_io io;             /* what the backend is asked to do */
  TAILQ_ENTRY(apply_op) q;
  /* scratch for the backend */
  struct aio_op aio;
  TAILQ_ENTRY(apply_op) bq;
  int bres;
};

struct apply_backend {
  /* Start op->io on the replica (WRITE op->data to op->offset, ZERO the
   * range, punching if OP_FLAG_PUNCH, or SYNC the whole replica) and later
   * call apply_io_done exactly once, never from inside start. */
  void (*start)(void *opaque, struct apply *a, struct apply_op *op);
  void *opaque;
};

struct apply_events {
  /* op is complete (FLUSH, MARK and FUA ops: durable).  Called in stream
   * order, never for ops dropped by apply_abort or after a failure. */
  void (*done)(void *opaque, const struct apply_op *op);
  /* The first I/O error: nothing more is started.  err is a positive
   * errno. */
  void (*failed)(void *opaque, const struct apply_op *op, int err);
  /* Nothing is in flight any more after apply_abort or a failure. */
  void (*idle)(void *opaque);
  void *opaque;
};

struct apply_stats {
  uint64_t queued_bytes;        /* WRITE payload received, not yet done */
  uint64_t held_bytes;          /* memory those ops hold (op->held) */
  uint64_t applied_bytes;       /* WRITE payload done */
  uint64_t zeroed_bytes;
  uint64_t ops_done;
  uint64_t epoch;               /* epoch of the ops being applied */
  unsigned queued, inflight;
};

struct apply *apply_new(const struct apply_backend *be,
                        const struct apply_events *ev, unsigned max_inflight);
/* Frees queued ops; the caller made sure nothing is in flight. */
void apply_free(struct apply *a);
struct apply_op *apply_op_new(enum apply_type type);
void apply_op_free(struct apply_op *op);
/* Takes ownership of op and starts whatever may start.  -1 (op freed) once
 * the module has failed. */
int apply_queue(struct apply *a, struct apply_op *op);
/* Backend completion: res 0 or -errno. */
void apply_io_done(struct apply *a, struct apply_op *op, int res);
/* The link went away: drop ops not started; ops in flight complete without
 * events, then idle is called (unless nothing was in flight). */
void apply_abort(struct apply *a);
bool apply_busy(const struct apply *a);    /* I/O in flight */
bool apply_failed(const struct apply *a);
/* The operator fixed the replica after a failure: accept ops again, as a
 * new stream.  0, or -1 while I/O of the failed stream is in flight. */
int apply_resume(struct apply *a);
void apply_get_stats(const struct apply *a, struct apply_stats *st);

/* ---- apply-bdev.c: the backend on a block device or regular file ----
 *
 * Writes, reads and syncs through the libaio engine; zero ranges through
 * bdev_zero (synchronous, but completed from the loop like any other op).
 * OP_FLAG_PUNCH (the wire's) deallocates. */
struct apply_bdev {
  struct aio_ctx *aio;
  struct bdev *dev;
  struct event *zero_ev;        /* delivers zero completions */
  TAILQ_HEAD(, apply_op) zeroed;
  struct apply *apply;          /* of the zeroed ops */
};
/* 0, or -1 (out of memory). */
int apply_bdev_init(struct apply_bdev *b, struct event_base *base,
                    struct aio_ctx *aio, struct bdev *dev);
void apply_bdev_fini(struct apply_bdev *b);
/* The backend's start (opaque = the struct apply_bdev). */
void apply_bdev_start(void *opaque, struct apply *a, struct apply_op *op);

#endif
