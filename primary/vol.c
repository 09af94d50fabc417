/* The primary's request engine: every client request goes through here.
 *
 * A write-like request (WRITE, TRIM, WRITE_ZEROES) first takes a range lock
 * on its 4 KiB-aligned extent, so overlapping requests reach the local volume
 * and the replication stream in the same order.  Unaligned writes are
 * widened to whole blocks by reading the edges (read-modify-write under the
 * lock), so the volume is always written with O_DIRECT-sized I/O and the
 * secondary only ever receives aligned writes.  The write is submitted
 * locally and sent to the secondary at the same time; it is answered when the
 * local write is done and, in sync mode, the secondary has it too.  The lock
 * is held until the answer, and answering closes the replication epoch.
 *
 * Before the first change the secondary will not get (the link is down),
 * vol_generation records a new data generation on disk; only then is the
 * change started locally, and if it cannot be recorded the request fails
 * with EIO without touching the volume. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "log.h"

/* A replication op on behalf of a request.  In async mode it outlives the
 * request (the client is answered before the secondary acknowledges). */
struct vol_rop {
  struct repl_op op;
  struct primary *p;
  struct req *r;                /* NULL once detached */
  uint64_t off, len;
  bool al_held;                 /* holds activity-log references */
};

/* Requests spanning more extents than this bypass the activity log. */
#define VOL_AL_MAX_EXTENTS 64

/* The largest replication WRITE frame this side sends.  Secondaries of
 * this protocol version refuse payloads over FRAME_MAX_PAYLOAD (33 MiB),
 * while clients may write up to NBD_BLOCK_MAX (64 MiB): a larger write
 * goes out as several frames, one op each, in the same epoch as long as
 * it is not full (the pieces do not overlap). */
#define VOL_REPL_MAX_WRITE (32u * 1024 * 1024)
_Static_assert(VOL_REPL_MAX_WRITE <= FRAME_MAX_PAYLOAD,
               "replication write pieces must fit in a frame");

static void req_finish(struct req *r);
static void req_put(struct req *r);
static void write_locked(struct range_lock *l, void *opaque);

static uint64_t
align_down(uint64_t x)
{
  return x & ~(uint64_t)(BDEV_ALIGN - 1);
}

static uint64_t
align_up(uint64_t x)
{
  return (x + BDEV_ALIGN - 1) & ~(uint64_t)(BDEV_ALIGN - 1);
}

static bool
is_aligned(uint64_t off, uint64_t len)
{
  return (off % BDEV_ALIGN) == 0 && (len % BDEV_ALIGN) == 0;
}

struct req *
vol_req_new(struct primary *p)
{
  struct req *r = calloc(1, sizeof *r);
  if (!r)
    abort();
  r->p = p;
  return r;
}

void
vol_req_free(struct req *r)
{
  if (!r)
    return;
  if (r->out_refs > 0) {
    /* Its data is still in the link's output: req_ref_done frees it. */
    r->freed = true;
    return;
  }
  if (r->defer)
    event_free(r->defer);
  free(r->buf);
  free(r->bounce);
  free(r);
}

static void
req_set_err(struct req *r, int err)
{
  if (err && !r->err)
    r->err = err;
}

/* Bytes the async buffer must have room for before this request starts. */
static uint64_t
req_buffer_bytes(const struct req *r)
{
  if (r->type != REQ_WRITE)
    return 0;
  return align_up(r->offset + r->length) - align_down(r->offset);
}

/* ---- completion ---- */

static void
req_deferred_done(evutil_socket_t fd, short what, void *opaque)
{
  struct req *r = opaque;
  (void)fd;
  (void)what;
  r->p->reqs_active--;
  r->done(r, r->err);
}

/* All parts of the request are complete: release the lock, close the epoch
 * and answer the client (from the loop, never inside vol_submit). */
static void
req_finish(struct req *r)
{
  struct primary *p = r->p;

  /* --instant restore: the grains this write took over must not be
   * restored over after a crash (the record says so) before it is
   * answered. */
  if (r->restore_persist && !r->err && restore_persist(p) < 0)
    req_set_err(r, EIO);

  if (r->type == REQ_WRITE || r->type == REQ_TRIM || r->type == REQ_ZERO) {
    if (!r->err) {
      p->stats.writes_acked++;
      if (r->type == REQ_WRITE)
        p->stats.bytes_written += r->length;
    }
  }
  if (r->sent)
    repl_close_epoch(p->repl, r->epoch);
  if (r->al_held) {
    r->al_held = false;
    al_end(p->al, r->lock_start, r->lock_end - r->lock_start);
  }
  if (r->lock) {
    struct range_lock *l = r->lock;
    r->lock = NULL;
    lock_release(p->locks, l);
  }
  if (!r->defer) {
    r->defer = event_new(p->base, -1, 0, req_deferred_done, r);
    if (!r->defer)
      abort();
  }
  event_active(r->defer, 0, 0);
}

/* Drop one pending completion; the last one finishes the request. */
static void
req_put(struct req *r)
{
  if (--r->pending == 0)
    req_finish(r);
}

static int
aio_res_to_errno(long res)
{
  if (res >= 0)
    return 0;
  return (int)-res;
}

/* ---- replication of a request ---- */

static void
rop_acked(struct repl_op *op, bool ok)
{
  struct vol_rop *vr = (struct vol_rop *)op;
  struct req *r = vr->r;

  /* The secondary does not have it: remember to resync it. */
  if (!ok && vr->len)
    bitmap_set_range(vr->p->oos, vr->off, vr->len);
  if (vr->al_held)
    al_end(vr->p->al, vr->off, vr->len);
  struct primary *p = vr->p;
  free(vr);
  if (r) {
    r->rop = NULL;
    req_put(r);
  }
  vol_kick(p);
}

/* The link encrypted (or dropped) the data it referenced. */
static void
req_ref_done(const void *data, size_t len, void *arg)
{
  struct req *r = arg;

  (void)data;
  (void)len;
  if (--r->out_refs == 0 && r->freed)
    vol_req_free(r);
}

/* Hand a request to the link.  In sync mode the request waits for the
 * secondary's ack; in async mode the op is detached from it.  When the link
 * is down the range is recorded as out of sync instead. */
static void
req_replicate(struct req *r, uint64_t off, uint64_t len, const void *data)
{
  struct primary *p = r->p;
  struct vol_rop *vr;
  uint32_t flags = r->fua ? DUPLEX__OP_FLAG__OP_FLAG_FUA : 0;
  uint64_t n;
  int rc;

  if (r->type == REQ_WRITE && len > VOL_REPL_MAX_WRITE) {
    /* One piece per frame; the request waits for all of them and closes
     * the epoch of the last. */
    for (uint64_t done = 0; done < len; done += n) {
      n = len - done < VOL_REPL_MAX_WRITE ? len - done : VOL_REPL_MAX_WRITE;
      req_replicate(r, off + done, n, (const char *)data + done);
    }
    return;
  }
  if (!repl_connected(p->repl) || p->ahead) {
    /* A lost peer's new generation is on disk already (vol_generation);
     * pulling ahead of a connected peer stays in this generation and
     * sends the blocks by resync. */
    if (len)
      bitmap_set_range(p->oos, off, len);
    return;
  }
  vr = calloc(1, sizeof *vr);
  if (!vr)
    abort();
  vr->p = p;
  vr->off = off;
  vr->len = len;
  vr->op.acked = rop_acked;
  vr->op.bytes = r->type == REQ_WRITE ? len : 0;
  switch (r->type) {
  case REQ_WRITE:
    /* The link references a large request's buffer rather than copying
     * it: the request outlives its reply until the bytes are encrypted. */
    r->out_refs++;
    rc = repl_send_write_ref(p->repl, &vr->op, off, (uint32_t)len, data,
                             flags, req_ref_done, r);
    if (rc != 0)
      r->out_refs--;
    break;
  case REQ_TRIM:
  case REQ_ZERO:
    if (r->type == REQ_TRIM || !r->no_hole)
      flags |= DUPLEX__OP_FLAG__OP_FLAG_PUNCH;
    rc = repl_send_zero(p->repl, &vr->op, off, len, flags);
    break;
  case REQ_FLUSH:
    rc = repl_send_flush(p->repl, &vr->op);
    break;
  default:
    abort();
  }
  if (rc == -1) {
    free(vr);
    if (len)
      bitmap_set_range(p->oos, off, len);
    return;
  }
  /* Until the secondary acknowledges it, the region stays in the activity
   * log (the request's own reference covers the local write). */
  if (len && r->al_held) {
    if (al_begin(p->al, off, len) == 0) {
      vr->al_held = true;
    } else {
      /* Cannot stay in the activity log until acknowledged: keep it in the
       * persistent bitmap instead (resent by the next resync). */
      bitmap_set_range(p->oos, off, len);
      al_flush_bitmap(p->al);
    }
  }
  r->sent = true;
  r->epoch = vr->op.epoch;
  if (p->cfg.mode == REPL_SYNC) {
    vr->r = r;
    r->rop = vr;
    r->pending++;
  }
}

/* The first change a lost peer does not get starts a new data generation,
 * on disk before the change is started: called right before a write-like
 * request's local change is submitted, in the same callback as its
 * req_replicate, so the link cannot come or go in between.  If the
 * generation cannot be recorded the request fails with EIO (nothing was
 * changed) and need_new_gen stays set for the next one. */
static int
vol_generation(struct req *r)
{
  struct primary *p = r->p;

  if (repl_connected(p->repl) || !p->need_new_gen)
    return 0;
  if (primary_new_generation(p) == 0)
    return 0;
  req_set_err(r, EIO);
  return -1;
}

/* Record the write intent of a locked request in the activity log. */
static int
vol_intent(struct req *r)
{
  struct primary *p = r->p;
  uint64_t len = r->lock_end - r->lock_start;
  int rc;

  if ((len >> AL_EXTENT_SHIFT) > VOL_AL_MAX_EXTENTS) {
    /* A huge trim or zero range: record it in the bitmap itself, on disk
     * before the change; it is resent (as a zero range) by the next resync
     * whether or not the secondary gets it now. */
    bitmap_set_range(p->oos, r->lock_start, len);
    rc = al_flush_bitmap(p->al);
  } else {
    rc = al_begin(p->al, r->lock_start, len);
    r->al_held = rc == 0;
    if (rc == -EBUSY) {
      /* Activity log full of busy regions: record this one directly. */
      bitmap_set_range(p->oos, r->lock_start, len);
      rc = al_flush_bitmap(p->al);
    }
  }
  if (rc < 0) {
    req_set_err(r, EIO);
    return -1;
  }
  return 0;
}

/* ---- READ ---- */

static void
read_done(struct aio_op *op, long res)
{
  struct req *r = op->opaque;
  req_set_err(r, aio_res_to_errno(res));
  if (!r->err) {
    if (r->bounce)
      memcpy(r->buf, r->bounce + (r->offset - align_down(r->offset)),
             r->length);
    r->p->stats.bytes_read += r->length;
  }
  req_put(r);
}

static void
read_start(struct req *r)
{
  struct primary *p = r->p;

  r->pending = 1;
  if (is_aligned(r->offset, r->length)) {
    aio_pread(p->aio, &r->aio, p->vol.fd, r->buf, r->length, r->offset,
              read_done, r);
  } else {
    uint64_t a0 = align_down(r->offset);
    uint64_t a1 = align_up(r->offset + r->length);
    r->bounce = util_alloc_aligned(a1 - a0);
    aio_pread(p->aio, &r->aio, p->vol.fd, r->bounce, a1 - a0, a0, read_done,
              r);
  }
}

/* ---- WRITE ---- */

static void
write_local_synced(struct aio_op *op, long res)
{
  struct req *r = op->opaque;
  req_set_err(r, aio_res_to_errno(res));
  req_put(r);
}

static void
write_local_done(struct aio_op *op, long res)
{
  struct req *r = op->opaque;
  struct primary *p = r->p;
  int err = aio_res_to_errno(res);

  if (err) {
    uint64_t a0 = align_down(r->offset);
    log_error("primary: volume %s: write at %" PRIu64 ": %s", p->vol.path,
              a0, strerror(err));
    /* The secondary may have it while we do not: resync that range. */
    bitmap_set_range(p->oos, a0, align_up(r->offset + r->length) - a0);
    req_set_err(r, err);
    req_put(r);
    return;
  }
  if (r->fua) {
    aio_fdsync(p->aio, &r->aio, p->vol.fd, write_local_synced, r);
    return;
  }
  req_put(r);
}

/* The whole aligned extent is in `data`: send it and write it.  Both start
 * once the current callback returns, in the order asked here: in sync mode
 * the longer path (the secondary's) first, in async mode the local write
 * the client waits for.  A new generation, if one is due, is on disk before
 * either is asked for. */
static void
write_submit(struct req *r, const char *data, uint64_t off, uint64_t len)
{
  struct primary *p = r->p;
  bool local_first = p->cfg.mode == REPL_ASYNC;

  if (vol_generation(r) == -1)
    return;
  if (!local_first)
    req_replicate(r, off, len, data);
  r->pending++;
  aio_pwrite(p->aio, &r->aio, p->vol.fd, data, len, off, write_local_done, r);
  if (local_first)
    req_replicate(r, off, len, data);
}

static void
write_edge_read(struct aio_op *op, long res)
{
  struct req *r = op->opaque;
  uint64_t a0 = align_down(r->offset);
  uint64_t a1 = align_up(r->offset + r->length);

  req_set_err(r, aio_res_to_errno(res));
  if (--r->edges > 0)
    return;
  if (!r->err) {
    memcpy(r->bounce + (r->offset - a0), r->buf, r->length);
    write_submit(r, r->bounce, a0, a1 - a0);
  }
  req_put(r); /* the guard taken in write_locked */
}

static void
write_go(struct req *r)
{
  struct primary *p = r->p;
  uint64_t a0 = align_down(r->offset);
  uint64_t a1 = align_up(r->offset + r->length);
  bool head = r->offset != a0;
  bool tail = r->offset + r->length != a1;

  r->pending = 1; /* guard */
  if (vol_intent(r) == -1) {
    req_put(r);
    return;
  }
  if (!head && !tail) {
    write_submit(r, r->buf, a0, a1 - a0);
    req_put(r);
    return;
  }
  /* Read-modify-write: fetch the partial head and tail blocks (one read
   * when both are the same block), then patch the client's bytes in. */
  r->bounce = util_alloc_aligned(a1 - a0);
  if (head && tail && a1 - a0 == BDEV_ALIGN)
    tail = false;
  r->edges = (head ? 1 : 0) + (tail ? 1 : 0);
  if (head)
    aio_pread(p->aio, &r->aio, p->vol.fd, r->bounce, BDEV_ALIGN, a0,
              write_edge_read, r);
  if (tail)
    aio_pread(p->aio, &r->aio2, p->vol.fd, r->bounce + (a1 - a0 - BDEV_ALIGN),
              BDEV_ALIGN, a1 - BDEV_ALIGN, write_edge_read, r);
}

static void
write_locked(struct range_lock *l, void *opaque)
{
  struct req *r = opaque;

  (void)l;
  if (!restore_hold_write(r->p, r, write_go))
    write_go(r);
}

/* ---- TRIM / WRITE_ZEROES ---- */

static void
zero_go(struct req *r)
{
  struct primary *p = r->p;
  bool punch = r->type == REQ_TRIM || !r->no_hole;
  int rc;

  r->pending = 1;
  if (vol_intent(r) == -1 || vol_generation(r) == -1) {
    req_put(r);
    return;
  }
  rc = bdev_zero(&p->vol, r->offset, r->length, punch);
  if (rc < 0) {
    log_error("primary: volume %s: %s at %" PRIu64 " length %u: %s",
              p->vol.path, punch ? "punch" : "zero", r->offset, r->length,
              strerror(-rc));
    req_set_err(r, -rc);
    req_put(r);
    return;
  }
  req_replicate(r, r->offset, r->length, NULL);
  if (r->fua) {
    r->pending++;
    aio_fdsync(p->aio, &r->aio, p->vol.fd, write_local_synced, r);
  }
  req_put(r);
}

static void
zero_locked(struct range_lock *l, void *opaque)
{
  struct req *r = opaque;

  (void)l;
  if (!restore_hold_write(r->p, r, zero_go))
    zero_go(r);
}

/* ---- FLUSH ---- */

static void
flush_start(struct req *r)
{
  struct primary *p = r->p;

  r->pending = 1;
  /* The flush goes to the secondary in both modes, so the replica gets the
   * same durability points as the volume; only sync mode waits for it. */
  req_replicate(r, 0, 0, NULL);
  r->pending++;
  aio_fdsync(p->aio, &r->aio, p->vol.fd, write_local_synced, r);
  req_put(r);
}

/* ---- admission ---- */

static bool
vol_has_room(struct primary *p, uint64_t bytes)
{
  uint64_t inflight;
  if (p->cfg.mode != REPL_ASYNC || !repl_connected(p->repl))
    return true;
  inflight = repl_inflight_bytes(p->repl);
  return inflight == 0 || inflight + bytes <= p->cfg.async_buffer;
}

static void
vol_start(struct req *r)
{
  struct primary *p = r->p;
  bool granted;

  switch (r->type) {
  case REQ_READ:
    if (!restore_hold_read(p, r, read_start))
      read_start(r);
    return;
  case REQ_FLUSH:
    flush_start(r);
    return;
  case REQ_WRITE:
  case REQ_TRIM:
  case REQ_ZERO:
    r->lock_start = align_down(r->offset);
    r->lock_end = align_up(r->offset + r->length);
    restore_lock_range(p, &r->lock_start, &r->lock_end);
    r->lock = lock_acquire(p->locks, r->lock_start, r->lock_end,
                           r->type == REQ_WRITE ? write_locked : zero_locked,
                           r, &granted);
    if (granted)
      (r->type == REQ_WRITE ? write_locked : zero_locked)(r->lock, r);
    return;
  }
  abort();
}

/* Async mode with --on-congestion pull-ahead: the send buffer is full, so
 * stop sending writes (record them in the bitmap instead) rather than
 * making clients wait (DRBD's ahead/behind). */
static void
vol_pull_ahead(struct primary *p)
{
  char buf[32];
  if (p->ahead)
    return;
  p->ahead = true;
  p->stats.pull_ahead_events++;
  util_format_bytes(repl_inflight_bytes(p->repl), buf, sizeof buf);
  log_info("primary: send buffer full (%s unacknowledged); pulling ahead: "
           "writes are recorded in the bitmap and resynced once the "
           "secondary catches up", buf);
}

/* The link drained: leave the ahead state and resync what was skipped. */
static void
vol_catch_up(struct primary *p)
{
  if (!p->ahead)
    return;
  if (repl_connected(p->repl) &&
      repl_inflight_bytes(p->repl) > p->cfg.async_buffer / 4)
    return;
  p->ahead = false;
  log_info("primary: secondary caught up; resyncing the blocks written "
           "while ahead");
  if (repl_connected(p->repl))
    resync_ensure(p->resync);
}

void
vol_submit(struct req *r)
{
  struct primary *p = r->p;

  p->stats.requests++;
  p->reqs_active++;
  if (r->type == REQ_WRITE &&
      (!TAILQ_EMPTY(&p->waiting) || !vol_has_room(p, req_buffer_bytes(r)))) {
    if (p->cfg.pull_ahead && TAILQ_EMPTY(&p->waiting)) {
      vol_pull_ahead(p);
    } else {
      TAILQ_INSERT_TAIL(&p->waiting, r, wq);
      return;
    }
  }
  vol_start(r);
}

void
vol_kick(struct primary *p)
{
  struct req *r;

  vol_catch_up(p);
  while ((r = TAILQ_FIRST(&p->waiting)) &&
         vol_has_room(p, req_buffer_bytes(r))) {
    TAILQ_REMOVE(&p->waiting, r, wq);
    vol_start(r);
  }
}
