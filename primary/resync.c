/* Initial sync and resync: the primary's shell around the block sender
 * (common/sender.h).  It hosts the sender with the volume as its source
 * (common/sender-bdev.h), its link to the secondary as the transport, the
 * range locks it shares with client writes, and tells the secondary that it
 * holds this side's generation once everything was sent. */
#include <stdlib.h>

#include "internal.h"
#include "sender-bdev.h"
#include "sender.h"

struct resync {
  struct resync_env env;
  struct sender_bdev src;
  struct sender *s;
  bool in_sync_confirmed;       /* the secondary adopted our generation */
  bool crash_recovery;          /* this run follows an unclean stop */
};

/* A sender frame on the link. */
struct resync_frame {
  struct repl_op op;
  struct sender_op *sop;
};

static void
frame_acked(struct repl_op *op, bool ok)
{
  struct resync_frame *f = (struct resync_frame *)op;
  struct sender_op *sop = f->sop;
  const Duplex__VerifyResult *res = op->verify_result;

  if (res && !res->error) {
    sop->hashes = res->hashes;
    sop->n_hashes = res->n_hashes;
  } else {
    sop->hashes = NULL;
    sop->n_hashes = 0;
  }
  free(f);
  sop->acked(sop, ok);
}

static struct resync_frame *
frame_new(struct sender_op *sop)
{
  struct resync_frame *f = calloc(1, sizeof *f);
  if (!f)
    abort();
  f->sop = sop;
  f->op.acked = frame_acked;
  return f;
}

/* Each send: 0, or -1 (not connected) with the frame freed. */
static int
frame_sent(struct resync_frame *f, int rc)
{
  if (rc == -1)
    free(f);
  return rc;
}

static bool
tp_connected(void *arg)
{
  struct resync *rs = arg;
  return repl_connected(rs->env.repl);
}

static int
tp_send_data(void *arg, struct sender_op *op, uint64_t off, uint32_t len,
             const void *data, sender_ref_done_fn ref_done, void *ref_arg)
{
  struct resync *rs = arg;
  struct resync_frame *f = frame_new(op);
  return frame_sent(f, repl_send_write_ref(rs->env.repl, &f->op, off, len,
                                           data,
                                           DUPLEX__OP_FLAG__OP_FLAG_RESYNC,
                                           ref_done, ref_arg));
}

static int
tp_send_zero(void *arg, struct sender_op *op, uint64_t off, uint64_t len)
{
  struct resync *rs = arg;
  struct resync_frame *f = frame_new(op);
  return frame_sent(f, repl_send_zero(rs->env.repl, &f->op, off, len,
                                      DUPLEX__OP_FLAG__OP_FLAG_RESYNC |
                                          DUPLEX__OP_FLAG__OP_FLAG_PUNCH));
}

static int
tp_ask_hashes(void *arg, struct sender_op *op, uint64_t off, uint32_t len)
{
  struct resync *rs = arg;
  struct resync_frame *f = frame_new(op);
  return frame_sent(f, repl_send_verify(rs->env.repl, &f->op, off, len));
}

static void
tp_progress(void *arg, uint64_t total, uint64_t done, uint64_t remaining)
{
  struct resync *rs = arg;
  repl_send_sync_state(rs->env.repl, false, total, done, remaining);
}

/* The secondary adopted our generation: it is in sync, our bitmap no
 * longer tracks a divergence. */
void
resync_in_sync_acked(struct resync *rs)
{
  rs->env.in_sync(rs->env.arg);
  rs->in_sync_confirmed = true;
}

void
resync_unconfirm(struct resync *rs)
{
  rs->in_sync_confirmed = false;
}

static void
sync_done_acked(struct repl_op *op, bool ok)
{
  struct resync *rs = op->opaque;

  free(op);
  if (ok)
    resync_in_sync_acked(rs);
}

static bool
resync_compare_range(void *arg, uint64_t off, uint64_t len)
{
  struct resync *rs = arg;
  return rs->env.compare_range(rs->env.arg, off, len);
}

/* Asked by sender_begin, right after resync_begin asked the agent. */
static bool
resync_compare(void *arg)
{
  struct resync *rs = arg;
  return rs->env.checksums || rs->crash_recovery;
}

int
resync_send_in_sync(struct resync *rs)
{
  struct repl_op *op = calloc(1, sizeof *op);

  if (!op)
    abort();
  op->acked = sync_done_acked;
  op->opaque = rs;
  if (repl_send_sync_done(rs->env.repl, op, false) == -1) {
    free(op);
    return -1;
  }
  return 0;
}

/* Everything marked was sent and acknowledged: tell the secondary it holds
 * our generation (an acknowledged op). */
static void
resync_complete(void *arg)
{
  struct resync *rs = arg;

  /* During a restore the replica is in sync only once the restore is
   * done: restore.c says so then; in tail mode only points say so. */
  if (rs->env.hold_in_sync(rs->env.arg))
    return;
  (void)resync_send_in_sync(rs);
}

struct resync *
resync_new(const struct resync_env *env)
{
  struct resync *rs = calloc(1, sizeof *rs);
  struct sender_env se = {
    .todo = env->oos,
    .locks = env->locks,
    .tp = {
      .connected = tp_connected,
      .send_data = tp_send_data,
      .send_zero = tp_send_zero,
      .ask_hashes = tp_ask_hashes,
      .progress = tp_progress,
    },
    .chunk = RESYNC_CHUNK,
    .window = env->window,
    .compare = resync_compare,
    .compare_range = env->compare_range ? resync_compare_range : NULL,
    .complete = resync_complete,
    .who = "primary",
    .quiet = env->quiet,
    .peer = "the secondary",
  };

  if (!rs)
    abort();
  rs->env = *env;
  rs->src.aio = env->aio;
  rs->src.vol = env->vol;
  se.src = sender_bdev_source(&rs->src);
  se.tp.arg = rs;
  se.arg = rs;
  rs->s = sender_new(&se);
  return rs;
}

void
resync_free(struct resync *rs)
{
  if (!rs)
    return;
  sender_free(rs->s);
  free(rs);
}

void
resync_begin(struct resync *rs, bool full)
{
  rs->in_sync_confirmed = false;
  rs->crash_recovery = rs->env.crash_recovery(rs->env.arg);
  sender_begin(rs->s, full);
}

void
resync_abort(struct resync *rs)
{
  sender_abort(rs->s);
}

void
resync_kick(struct resync *rs)
{
  sender_kick(rs->s);
}

void
resync_ensure(struct resync *rs)
{
  if (sender_active(rs->s))
    sender_kick(rs->s);
  else if (bitmap_dirty_bytes(rs->env.oos))
    resync_begin(rs, false);
}

bool
resync_active(const struct resync *rs)
{
  return sender_active(rs->s);
}

void
resync_get_counters(const struct resync *rs, struct resync_counters *c)
{
  struct sender_counters sc;

  sender_get_counters(rs->s, &sc);
  c->total_bytes = sc.total_bytes;
  c->done_bytes = sc.done_bytes;
  c->data_bytes_sent = sc.data_bytes_sent;
  c->zero_bytes_sent = sc.zero_bytes_sent;
  c->started_ms = sc.started_ms;
  c->finished_ms = sc.finished_ms;
  c->full = sc.full;
  c->ever_completed = sc.ever_completed;
  c->crash_recovery = rs->crash_recovery;
  c->checksum_same_bytes = sc.same_bytes;
  c->compared_sent_bytes = sc.compared_sent_bytes;
  c->in_sync_confirmed = rs->in_sync_confirmed;
}
