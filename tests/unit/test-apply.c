/* Unit tests for common/apply.c: the epoch bookkeeping of the apply
 * queue, with a fake backend that records what was started and completes
 * it when the test says so. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apply.h"

#include "duplex.pb-c.h"

#define MAXREC 256

struct fake {
  struct apply *a;
  /* started I/Os, in start order */
  struct apply_op *started[MAXREC];
  enum apply_io io[MAXREC];
  unsigned n_started;
  /* done events, in order */
  uint64_t done_seq[MAXREC];
  enum apply_type done_type[MAXREC];
  unsigned n_done;
  unsigned n_failed;
  int failed_err;
  uint64_t failed_off;
  unsigned n_idle;
  bool in_start;
  bool abort_on_done;
};

static void
fake_start(void *opaque, struct apply *a, struct apply_op *op)
{
  struct fake *f = opaque;

  assert_ptr_equal(a, f->a);
  assert_false(f->in_start);
  assert_true(f->n_started < MAXREC);
  f->started[f->n_started] = op;
  f->io[f->n_started] = op->io;
  f->n_started++;
}

static void
fake_done(void *opaque, const struct apply_op *op)
{
  struct fake *f = opaque;

  f->done_seq[f->n_done] = op->seq;
  f->done_type[f->n_done] = op->type;
  f->n_done++;
  if (f->abort_on_done)
    apply_abort(f->a);
}

static void
fake_failed(void *opaque, const struct apply_op *op, int err)
{
  struct fake *f = opaque;

  f->n_failed++;
  f->failed_err = err;
  f->failed_off = op->offset;
}

static void
fake_idle(void *opaque)
{
  struct fake *f = opaque;

  f->n_idle++;
}

static struct fake *
fake_new(unsigned max_inflight)
{
  struct fake *f = calloc(1, sizeof *f);
  struct apply_backend be = { fake_start, f };
  struct apply_events ev = { fake_done, fake_failed, fake_idle, f };

  assert_non_null(f);
  f->a = apply_new(&be, &ev, max_inflight);
  assert_non_null(f->a);
  return f;
}

static void
fake_free(struct fake *f)
{
  apply_free(f->a);
  free(f);
}

static struct apply_op *
q_op(struct fake *f, enum apply_type type, uint64_t seq, uint64_t epoch,
     uint64_t off, uint64_t len, uint32_t flags)
{
  struct apply_op *op = apply_op_new(type);

  assert_non_null(op);
  op->seq = seq;
  op->epoch = epoch;
  op->offset = off;
  op->length = len;
  op->flags = flags;
  op->held = len + 100;         /* what the link would say its buffer takes */
  assert_int_equal(apply_queue(f->a, op), 0);
  return op;
}

static struct apply_op *
q_write(struct fake *f, uint64_t seq, uint64_t epoch, uint64_t off)
{
  return q_op(f, APPLY_WRITE, seq, epoch, off, 4096, 0);
}

/* Complete the i-th started I/O. */
static void
complete(struct fake *f, unsigned i, int res)
{
  assert_true(i < f->n_started);
  apply_io_done(f->a, f->started[i], res);
}

static uint64_t
queued_bytes(struct fake *f)
{
  struct apply_stats st;

  apply_get_stats(f->a, &st);
  return st.queued_bytes;
}

static uint64_t
held_bytes(struct fake *f)
{
  struct apply_stats st;

  apply_get_stats(f->a, &st);
  return st.held_bytes;
}

/* Ops of one epoch start together; done events leave in stream order even
 * when the I/O completes out of order. */
static void
test_same_epoch_parallel(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 1, 0);
  q_write(f, 2, 1, 8192);
  q_write(f, 3, 1, 16384);
  assert_int_equal(f->n_started, 3);
  assert_int_equal(queued_bytes(f), 3 * 4096);
  assert_int_equal(held_bytes(f), 3 * (4096 + 100));  /* for backpressure */
  complete(f, 2, 0);
  complete(f, 1, 0);
  assert_int_equal(f->n_done, 0);       /* seq 1 still in flight */
  complete(f, 0, 0);
  assert_int_equal(f->n_done, 3);
  assert_int_equal(f->done_seq[0], 1);
  assert_int_equal(f->done_seq[1], 2);
  assert_int_equal(f->done_seq[2], 3);
  assert_int_equal(queued_bytes(f), 0);
  assert_int_equal(held_bytes(f), 0);
  assert_false(apply_busy(f->a));
  fake_free(f);
}

/* Nothing of epoch n+1 starts before every op of epoch n completed. */
static void
test_epoch_barrier(void **state)
{
  struct fake *f = fake_new(64);
  struct apply_stats st;

  (void)state;
  q_write(f, 1, 1, 0);
  q_write(f, 2, 1, 4096);
  q_write(f, 3, 2, 8192);
  q_write(f, 4, 2, 12288);
  q_write(f, 5, 3, 16384);
  assert_int_equal(f->n_started, 2);
  complete(f, 1, 0);
  assert_int_equal(f->n_started, 2);    /* seq 1 of epoch 1 in flight */
  complete(f, 0, 0);
  assert_int_equal(f->n_started, 4);    /* both of epoch 2 */
  assert_int_equal(f->started[2]->seq, 3);
  assert_int_equal(f->started[3]->seq, 4);
  apply_get_stats(f->a, &st);
  assert_int_equal(st.epoch, 2);
  complete(f, 2, 0);
  assert_int_equal(f->n_started, 4);
  complete(f, 3, 0);
  assert_int_equal(f->n_started, 5);
  complete(f, 4, 0);
  assert_int_equal(f->n_done, 5);
  fake_free(f);
}

/* Epochs may skip numbers (the primary closes an epoch per answered
 * write); a later epoch never overtakes an earlier one. */
static void
test_epoch_gap(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 10, 7, 0);
  q_write(f, 11, 42, 4096);
  assert_int_equal(f->n_started, 1);
  complete(f, 0, 0);
  assert_int_equal(f->n_started, 2);
  complete(f, 1, 0);
  assert_int_equal(f->n_done, 2);
  fake_free(f);
}

/* FLUSH: its sync starts only when every earlier op completed; it is done
 * only after the sync; later ops of the same epoch may run meanwhile, a
 * later epoch waits for it. */
static void
test_flush_waits(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 1, 0);
  q_write(f, 2, 1, 4096);
  q_op(f, APPLY_FLUSH, 3, 1, 0, 0, 0);
  q_write(f, 4, 1, 8192);
  q_write(f, 5, 2, 12288);
  assert_int_equal(f->n_started, 2);    /* flush waits for 1 and 2 */
  complete(f, 0, 0);
  assert_int_equal(f->n_started, 2);
  complete(f, 1, 0);
  assert_int_equal(f->n_done, 2);
  assert_int_equal(f->n_started, 4);    /* flush sync + seq 4 */
  assert_int_equal(f->started[2]->seq, 3);
  assert_int_equal(f->io[2], APPLY_IO_SYNC);
  assert_int_equal(f->started[3]->seq, 4);
  complete(f, 3, 0);                    /* seq 4 before the sync */
  assert_int_equal(f->n_done, 2);       /* acks stay in order */
  assert_int_equal(f->n_started, 4);    /* epoch 2 waits for the flush */
  complete(f, 2, 0);
  assert_int_equal(f->n_done, 4);
  assert_int_equal(f->done_seq[2], 3);
  assert_int_equal(f->done_type[2], APPLY_FLUSH);
  assert_int_equal(f->done_seq[3], 4);
  assert_int_equal(f->n_started, 5);
  complete(f, 4, 0);
  assert_int_equal(f->n_done, 5);
  fake_free(f);
}

/* A flush on an idle queue syncs at once. */
static void
test_flush_idle(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_op(f, APPLY_FLUSH, 1, 1, 0, 0, 0);
  assert_int_equal(f->n_started, 1);
  assert_int_equal(f->io[0], APPLY_IO_SYNC);
  complete(f, 0, 0);
  assert_int_equal(f->n_done, 1);
  fake_free(f);
}

/* FUA: the write, then a sync of the same op, then done. */
static void
test_fua(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_op(f, APPLY_WRITE, 1, 1, 0, 4096, DUPLEX__OP_FLAG__OP_FLAG_FUA);
  q_write(f, 2, 2, 4096);
  assert_int_equal(f->n_started, 1);
  assert_int_equal(f->io[0], APPLY_IO_WRITE);
  complete(f, 0, 0);
  assert_int_equal(f->n_done, 0);
  assert_int_equal(f->n_started, 2);
  assert_ptr_equal(f->started[1], f->started[0]);
  assert_int_equal(f->io[1], APPLY_IO_SYNC);
  complete(f, 1, 0);
  assert_int_equal(f->n_done, 1);
  assert_int_equal(f->n_started, 3);    /* epoch 2 only now */
  complete(f, 2, 0);
  assert_int_equal(f->n_done, 2);
  fake_free(f);
}

/* ZERO goes to the backend as a zero I/O, keeps its flags (PUNCH), and
 * with FUA syncs too. */
static void
test_zero(void **state)
{
  struct fake *f = fake_new(64);
  struct apply_stats st;

  (void)state;
  q_op(f, APPLY_ZERO, 1, 1, 0, 1 << 20,
       DUPLEX__OP_FLAG__OP_FLAG_PUNCH | DUPLEX__OP_FLAG__OP_FLAG_FUA);
  assert_int_equal(f->n_started, 1);
  assert_int_equal(f->io[0], APPLY_IO_ZERO);
  assert_true(f->started[0]->flags & DUPLEX__OP_FLAG__OP_FLAG_PUNCH);
  assert_int_equal(queued_bytes(f), 0); /* no payload */
  complete(f, 0, 0);
  assert_int_equal(f->io[1], APPLY_IO_SYNC);
  complete(f, 1, 0);
  assert_int_equal(f->n_done, 1);
  apply_get_stats(f->a, &st);
  assert_int_equal(st.zeroed_bytes, 1 << 20);
  assert_int_equal(st.applied_bytes, 0);
  fake_free(f);
}

/* Overlapping ops of one epoch do not run together. */
static void
test_overlap(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_op(f, APPLY_WRITE, 1, 1, 0, 8192, 0);
  q_write(f, 2, 1, 4096);              /* overlaps seq 1 */
  q_write(f, 3, 1, 65536);             /* head-of-line: waits too */
  assert_int_equal(f->n_started, 1);
  complete(f, 0, 0);
  assert_int_equal(f->n_started, 3);
  complete(f, 1, 0);
  complete(f, 2, 0);
  assert_int_equal(f->n_done, 3);
  fake_free(f);
}

/* At most max_inflight ops between start and retirement. */
static void
test_inflight_limit(void **state)
{
  struct fake *f = fake_new(4);
  unsigned i;

  (void)state;
  for (i = 0; i < 10; i++)
    q_write(f, i + 1, 1, (uint64_t)i * 4096);
  assert_int_equal(f->n_started, 4);
  complete(f, 3, 0);                   /* not the head: no room yet */
  assert_int_equal(f->n_started, 4);
  complete(f, 0, 0);                   /* head retires, one more starts */
  assert_int_equal(f->n_started, 5);
  for (i = 1; i < 10; i++)
    if (i != 3)
      complete(f, i, 0);
  assert_int_equal(f->n_started, 10);
  assert_int_equal(f->n_done, 10);
  for (i = 0; i < 10; i++)
    assert_int_equal(f->done_seq[i], i + 1);
  fake_free(f);
}

/* An I/O error stops everything: failed once, nothing more starts, no done
 * event after it, queued ops dropped, idle once the rest is back. */
static void
test_error_stops(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 1, 0);
  q_write(f, 2, 1, 4096);
  q_write(f, 3, 1, 8192);
  q_write(f, 4, 2, 12288);             /* epoch 2: waits */
  assert_int_equal(f->n_started, 3);
  complete(f, 1, -ENOSPC);
  assert_int_equal(f->n_failed, 1);
  assert_int_equal(f->failed_err, ENOSPC);
  assert_int_equal(f->failed_off, 4096);
  assert_true(apply_failed(f->a));
  assert_true(apply_busy(f->a));
  assert_int_equal(f->n_idle, 0);
  complete(f, 0, 0);
  complete(f, 2, -EIO);                /* a second error: not reported */
  assert_int_equal(f->n_failed, 1);
  assert_int_equal(f->n_done, 0);
  assert_int_equal(f->n_started, 3);   /* seq 4 never started */
  assert_false(apply_busy(f->a));
  assert_int_equal(f->n_idle, 1);
  assert_int_equal(queued_bytes(f), 0);
  /* Failed for good: new ops are refused. */
  struct apply_op *op = apply_op_new(APPLY_WRITE);
  assert_int_equal(apply_queue(f->a, op), -1);
  assert_int_equal(f->n_started, 3);
  fake_free(f);
}

/* An error in a FLUSH's sync fails too, and reports it. */
static void
test_flush_error(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 1, 0);
  q_op(f, APPLY_FLUSH, 2, 1, 0, 0, 0);
  complete(f, 0, 0);
  assert_int_equal(f->n_done, 1);
  complete(f, 1, -EIO);
  assert_int_equal(f->n_done, 1);
  assert_int_equal(f->n_failed, 1);
  assert_int_equal(f->n_idle, 1);
  fake_free(f);
}

/* The link went away: queued ops are dropped, in-flight ones finish
 * silently, then idle; a new stream starts afresh (any epoch). */
static void
test_abort(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 5, 0);
  q_write(f, 2, 5, 4096);
  q_write(f, 3, 6, 8192);
  apply_abort(f->a);
  assert_true(apply_busy(f->a));
  complete(f, 1, 0);
  complete(f, 0, 0);
  assert_int_equal(f->n_done, 0);
  assert_int_equal(f->n_started, 2);
  assert_int_equal(f->n_idle, 1);
  assert_false(apply_busy(f->a));
  assert_false(apply_failed(f->a));
  assert_int_equal(queued_bytes(f), 0);
  /* New link: epoch 1 after epoch 5 starts at once. */
  q_write(f, 1, 1, 0);
  assert_int_equal(f->n_started, 3);
  complete(f, 2, 0);
  assert_int_equal(f->n_done, 1);
  fake_free(f);
}

/* Abort with nothing in flight: no idle event needed, queue empty. */
static void
test_abort_idle(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 1, 0);
  complete(f, 0, 0);
  apply_abort(f->a);
  assert_false(apply_busy(f->a));
  assert_int_equal(f->n_idle, 0);
  q_write(f, 1, 1, 0);
  assert_int_equal(f->n_started, 2);
  complete(f, 1, 0);
  fake_free(f);
}

/* apply_abort from inside a done event (the link closed while acking):
 * no further done events, nothing more starts. */
static void
test_abort_from_done(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 1, 0);
  q_write(f, 2, 1, 4096);
  q_write(f, 3, 2, 8192);
  complete(f, 1, 0);
  f->abort_on_done = true;
  complete(f, 0, 0);
  assert_int_equal(f->n_done, 1);      /* seq 2 was done, not reported */
  assert_int_equal(f->n_started, 2);   /* seq 3 dropped */
  assert_false(apply_busy(f->a));
  assert_int_equal(queued_bytes(f), 0);
  fake_free(f);
}

/* MARK: like a flush (waits for everything before it, syncs), reported as
 * a done event of type MARK. */
static void
test_mark(void **state)
{
  struct fake *f = fake_new(64);

  (void)state;
  q_write(f, 1, 3, 0);
  q_op(f, APPLY_MARK, 0, 0, 0, 0, 0);
  q_write(f, 2, 3, 4096);
  assert_int_equal(f->n_started, 1);
  complete(f, 0, 0);
  assert_int_equal(f->n_started, 3);   /* mark sync + seq 2 (same epoch) */
  assert_int_equal(f->io[1], APPLY_IO_SYNC);
  complete(f, 1, 0);
  assert_int_equal(f->done_type[1], APPLY_MARK);
  complete(f, 2, 0);
  assert_int_equal(f->n_done, 3);
  fake_free(f);
}

/* resume after a failure: refused while the failed stream's I/O is in
 * flight, then a new stream is accepted and starts afresh (any epoch). */
static void
test_resume(void **state)
{
  struct fake *f = fake_new(64);
  struct apply_op *op;

  (void)state;
  assert_int_equal(apply_resume(f->a), 0);      /* not failed: harmless */
  q_write(f, 1, 9, 0);
  q_write(f, 2, 9, 4096);
  q_write(f, 3, 10, 8192);
  complete(f, 0, -EIO);
  assert_true(apply_failed(f->a));
  assert_int_equal(apply_resume(f->a), -1);     /* seq 2 still in flight */
  assert_true(apply_failed(f->a));
  complete(f, 1, 0);
  assert_int_equal(f->n_idle, 1);
  assert_int_equal(apply_resume(f->a), 0);
  assert_false(apply_failed(f->a));
  assert_int_equal(queued_bytes(f), 0);
  /* A new stream: epoch 1 after epoch 9, starts at once, done reported. */
  q_write(f, 1, 1, 0);
  q_op(f, APPLY_FLUSH, 2, 1, 0, 0, 0);
  assert_int_equal(f->n_started, 3);
  complete(f, 2, 0);
  assert_int_equal(f->n_started, 4);
  assert_int_equal(f->io[3], APPLY_IO_SYNC);
  complete(f, 3, 0);
  assert_int_equal(f->n_done, 2);
  assert_int_equal(f->done_seq[0], 1);
  assert_int_equal(f->done_seq[1], 2);
  /* And a second failure is reported again. */
  op = q_write(f, 3, 2, 0);
  (void)op;
  complete(f, 4, -ENOSPC);
  assert_int_equal(f->n_failed, 2);
  assert_int_equal(f->failed_err, ENOSPC);
  fake_free(f);
}

/* MARK carries the caller's seq (the in_sync ack) and is reported in
 * stream order after the ops before it, never before a later op's FUA
 * sync. */
static void
test_mark_seq(void **state)
{
  struct fake *f = fake_new(64);
  struct apply_op *op;

  (void)state;
  q_write(f, 1, 1, 0);
  op = apply_op_new(APPLY_MARK);
  assert_non_null(op);
  op->seq = 2;
  op->mem = malloc(16);                         /* freed with the op */
  assert_int_equal(apply_queue(f->a, op), 0);
  q_write(f, 3, 2, 4096);
  assert_int_equal(f->n_started, 1);
  complete(f, 0, 0);
  assert_int_equal(f->n_started, 2);            /* the MARK's sync */
  assert_int_equal(f->io[1], APPLY_IO_SYNC);
  complete(f, 1, 0);
  assert_int_equal(f->n_done, 2);
  assert_int_equal(f->done_type[1], APPLY_MARK);
  assert_int_equal(f->done_seq[1], 2);
  assert_int_equal(f->n_started, 3);
  complete(f, 2, 0);
  assert_int_equal(f->done_seq[2], 3);
  fake_free(f);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_same_epoch_parallel),
    cmocka_unit_test(test_epoch_barrier),
    cmocka_unit_test(test_epoch_gap),
    cmocka_unit_test(test_flush_waits),
    cmocka_unit_test(test_flush_idle),
    cmocka_unit_test(test_fua),
    cmocka_unit_test(test_zero),
    cmocka_unit_test(test_overlap),
    cmocka_unit_test(test_inflight_limit),
    cmocka_unit_test(test_error_stops),
    cmocka_unit_test(test_flush_error),
    cmocka_unit_test(test_abort),
    cmocka_unit_test(test_abort_idle),
    cmocka_unit_test(test_abort_from_done),
    cmocka_unit_test(test_mark),
    cmocka_unit_test(test_mark_seq),
    cmocka_unit_test(test_resume),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
