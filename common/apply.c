/* Ordered application of replicated operations to a volume (the replica,
 * or whatever volume the hosting agent applies received blocks to).
 *
 * The primary sends WRITE/ZERO/FLUSH in stream order, tagged with an epoch.
 * Write-order fidelity (DESIGN.md guarantee 3) needs:
 *   - ops of one epoch may run in parallel;
 *   - no op of a later epoch starts before every op of earlier epochs has
 *     completed;
 *   - a FLUSH starts its sync only once every earlier op has completed, and
 *     is acknowledged once the sync is done; a FUA op syncs after its write.
 * On top of that, two ops that overlap are never in flight together (the
 * primary's range locks should make this impossible inside one epoch; if it
 * happens anyway, stream order still decides who lands last), and at most
 * max_inflight ops are between start and retirement.
 *
 * Ops start strictly in stream order (head-of-line): if the next op may not
 * start, nothing behind it does.  Completions are retired from the head of
 * the queue, so `done` events (and therefore ACKs) leave in stream order.
 *
 * No I/O here: the backend does it, which keeps this file unit-testable and
 * leaves room for a journal in front of the replica later. */
#include <errno.h>
#include <stdlib.h>

#include "apply.h"

#include "duplex.pb-c.h"

TAILQ_HEAD(apply_queue, apply_op);

struct apply {
  struct apply_backend be;
  struct apply_events ev;
  unsigned max_inflight;
  struct apply_queue q;         /* stream order: retired from the head */
  struct apply_op *next;        /* first op not started, NULL if none */
  unsigned window;              /* started, not yet retired */
  unsigned inflight;            /* started, not yet complete */
  unsigned queued;              /* not yet retired */
  uint64_t epoch;               /* epoch of the last op started */
  bool started_any;
  bool aborting;                /* dropped by apply_abort, I/O draining */
  bool failed;
  bool pumping;
  struct apply_stats st;
};

struct apply *
apply_new(const struct apply_backend *be, const struct apply_events *ev,
          unsigned max_inflight)
{
  struct apply *a = calloc(1, sizeof *a);

  if (a == NULL)
    return NULL;
  a->be = *be;
  a->ev = *ev;
  a->max_inflight = max_inflight > 0 ? max_inflight : 1;
  TAILQ_INIT(&a->q);
  return a;
}

void
apply_free(struct apply *a)
{
  struct apply_op *op;

  if (a == NULL)
    return;
  while ((op = TAILQ_FIRST(&a->q)) != NULL) {
    TAILQ_REMOVE(&a->q, op, q);
    apply_op_free(op);
  }
  free(a);
}

struct apply_op *
apply_op_new(enum apply_type type)
{
  struct apply_op *op = calloc(1, sizeof *op);

  if (op == NULL)
    return NULL;
  op->type = type;
  op->state = APPLY_OP_QUEUED;
  return op;
}

void
apply_op_free(struct apply_op *op)
{
  if (op == NULL)
    return;
  free(op->mem);
  free(op);
}

static bool
apply_is_barrier(const struct apply_op *op)
{
  return op->type == APPLY_FLUSH || op->type == APPLY_MARK ||
         op->type == APPLY_VERIFY;
}

static bool
apply_overlaps(const struct apply_op *x, const struct apply_op *y)
{
  if (apply_is_barrier(x) || apply_is_barrier(y))
    return false;
  return x->offset < y->offset + y->length && y->offset < x->offset + x->length;
}

/* May the op at a->next start now?  Every op before it has started. */
static bool
apply_may_start(const struct apply *a, const struct apply_op *op)
{
  const struct apply_op *o;

  if (a->window >= a->max_inflight)
    return false;
  if (apply_is_barrier(op))
    return a->inflight == 0;
  /* Epoch barrier: a new epoch waits until every earlier op completed. */
  if (a->inflight > 0 && a->started_any && op->epoch != a->epoch)
    return false;
  for (o = TAILQ_FIRST(&a->q); o != NULL && o != op; o = TAILQ_NEXT(o, q))
    if (o->state != APPLY_OP_DONE &&
        (o->type == APPLY_VERIFY || apply_overlaps(o, op)))
      return false; /* a VERIFY reads a state nothing later may touch */
  return true;
}

static void
apply_start_io(struct apply *a, struct apply_op *op, enum apply_io io)
{
  op->io = io;
  op->state = io == APPLY_IO_SYNC ? APPLY_OP_SYNCING : APPLY_OP_RUNNING;
  a->be.start(a->be.opaque, a, op);
}

/* Unlink and free op.  retired: it completed in order, count it and (unless
 * the stream was dropped) report it. */
static void
apply_release(struct apply *a, struct apply_op *op, bool retired)
{
  TAILQ_REMOVE(&a->q, op, q);
  a->queued--;
  if (op->state != APPLY_OP_QUEUED)
    a->window--;
  if (op->type == APPLY_WRITE)
    a->st.queued_bytes -= op->length;
  a->st.held_bytes -= op->held;
  if (retired) {
    if (op->type == APPLY_WRITE)
      a->st.applied_bytes += op->length;
    else if (op->type == APPLY_ZERO)
      a->st.zeroed_bytes += op->length;
    a->st.ops_done++;
    /* op is unlinked, so the handler may even call apply_abort. */
    if (!a->aborting && !a->failed)
      a->ev.done(a->ev.opaque, op);
  }
  apply_op_free(op);
}

/* Retire completed ops from the head, in stream order. */
static void
apply_retire(struct apply *a)
{
  struct apply_op *op;

  while ((op = TAILQ_FIRST(&a->q)) != NULL && op->state == APPLY_OP_DONE)
    apply_release(a, op, true);
}

/* Start everything that may start.  The backend never completes inside
 * start, so this does not recurse; the guard is belt and braces. */
static void
apply_pump(struct apply *a)
{
  struct apply_op *op;

  if (a->pumping)
    return;
  a->pumping = true;
  while (!a->failed && !a->aborting && (op = a->next) != NULL &&
         apply_may_start(a, op)) {
    a->next = TAILQ_NEXT(op, q);
    a->window++;
    a->inflight++;
    if (op->type != APPLY_MARK)
      a->epoch = op->epoch;
    a->started_any = true;
    switch (op->type) {
    case APPLY_WRITE:
      apply_start_io(a, op, APPLY_IO_WRITE);
      break;
    case APPLY_ZERO:
      apply_start_io(a, op, APPLY_IO_ZERO);
      break;
    case APPLY_FLUSH:
    case APPLY_MARK:
      apply_start_io(a, op, APPLY_IO_SYNC);
      break;
    case APPLY_VERIFY:
      apply_start_io(a, op, APPLY_IO_READ);
      break;
    }
  }
  a->pumping = false;
}

/* Drop everything not started (after abort or failure). */
static void
apply_drop_unstarted(struct apply *a)
{
  struct apply_op *op, *nx;

  for (op = a->next; op != NULL; op = nx) {
    nx = TAILQ_NEXT(op, q);
    apply_release(a, op, false);
  }
  a->next = NULL;
}

/* Nothing in flight after abort/failure: free what is left, report idle. */
static void
apply_settle(struct apply *a)
{
  struct apply_op *op;

  while ((op = TAILQ_FIRST(&a->q)) != NULL)
    apply_release(a, op, false);
  a->next = NULL;
  a->aborting = false;
  a->started_any = false;
  a->ev.idle(a->ev.opaque);
}

int
apply_queue(struct apply *a, struct apply_op *op)
{
  if (a->failed) {
    apply_op_free(op);
    return -1;
  }
  op->state = APPLY_OP_QUEUED;
  TAILQ_INSERT_TAIL(&a->q, op, q);
  a->queued++;
  if (op->type == APPLY_WRITE)
    a->st.queued_bytes += op->length;
  a->st.held_bytes += op->held;
  if (a->next == NULL)
    a->next = op;
  apply_pump(a);
  return 0;
}

void
apply_io_done(struct apply *a, struct apply_op *op, int res)
{
  bool fail_now = false;

  if (res == 0 && op->state == APPLY_OP_RUNNING &&
      (op->flags & DUPLEX__OP_FLAG__OP_FLAG_FUA) &&
      (op->type == APPLY_WRITE || op->type == APPLY_ZERO) &&
      !a->aborting && !a->failed) {
    /* FUA: durable before it is acknowledged. */
    apply_start_io(a, op, APPLY_IO_SYNC);
    return;
  }
  op->state = APPLY_OP_DONE;
  a->inflight--;
  if (res < 0 && !a->failed) {
    a->failed = true;
    fail_now = true;
    apply_drop_unstarted(a);
  }
  if (fail_now)
    a->ev.failed(a->ev.opaque, op, -res);
  if (a->failed || a->aborting) {
    if (a->inflight == 0)
      apply_settle(a);
    return;
  }
  apply_retire(a);
  apply_pump(a);
}

void
apply_abort(struct apply *a)
{
  struct apply_op *op;

  apply_drop_unstarted(a);
  if (a->inflight > 0) {
    a->aborting = true;
    return;
  }
  /* Nothing in flight; completed ops may still be queued if we are called
   * from a done event in the middle of retiring them. */
  while ((op = TAILQ_FIRST(&a->q)) != NULL)
    apply_release(a, op, false);
  a->started_any = false;
}

bool
apply_busy(const struct apply *a)
{
  return a->inflight > 0;
}

bool
apply_failed(const struct apply *a)
{
  return a->failed;
}

/* After a failure apply_settle emptied the queue once the last I/O came
 * back; what follows is a new stream (the primary resyncs what it missed),
 * so the epoch bookkeeping starts afresh too. */
int
apply_resume(struct apply *a)
{
  if (a->inflight > 0)
    return -1;
  a->failed = false;
  a->started_any = false;
  return 0;
}

void
apply_get_stats(const struct apply *a, struct apply_stats *st)
{
  *st = a->st;
  st->epoch = a->epoch;
  st->queued = a->queued;
  st->inflight = a->inflight;
}
