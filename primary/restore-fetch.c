/* Restore, COPY (restore.c has the phases): fetching the regions still to
 * do, for the background copy (capped by --restore-rate) and for clients
 * of an instant restore (a read waits for its regions, a write takes the
 * grains it covers whole and has the ones it covers partly fetched first). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "restore-internal.h"

/* ---- COPY: fetching regions (the background copy and clients) ---- */

/* Every bit of [off, off+len) still set (nobody wrote the range since). */
static bool
rst_all_set(const struct restore *rs, uint64_t off, uint64_t len)
{
  uint64_t o, l;

  return bitmap_next_run(rs->todo, off, len, &o, &l) && o == off &&
         (l >= len || o + l >= rs->p->vol.size);
}

static void
rst_fetch_free(struct rst_fetch *f)
{
  struct restore *rs = f->rs;

  if (f->lock != NULL)
    lock_release(rs->p->locks, f->lock);
  if (!f->demand)
    rs->window -= f->len;
  rs->inflight--;
  TAILQ_REMOVE(&rs->fetches, f, q);
  if (f->hold != NULL && --f->hold->pending == 0) {
    /* The held write looks at its grains again: on to the write, or
     * waits for the link. */
    TAILQ_INSERT_TAIL(&rs->holds, f->hold, q);
  }
  free(f->buf);
  free(f);
}

static void
rst_fetch_written(struct aio_op *aop, long res)
{
  struct rst_fetch *f = aop->opaque;
  struct restore *rs = f->rs;

  if (res < 0) {
    snprintf(rs->error, sizeof rs->error, "writing %s at %" PRIu64 ": %s "
             "(tried again)", rs->p->vol.path, f->off, strerror((int)-res));
    log_error("primary: restore: %s", rs->error);
    rs->retry_ms = util_now_ms() + RST_RETRY_MS;
  } else {
    bitmap_clear_range(rs->todo, f->off, f->len);
    rs->done_bytes += f->len;
    if (f->demand) {
      rs->demand_bytes += f->len;
      rs->demand_fetches++;
    }
  }
  rst_fetch_free(f);
  rst_wake(rs);
}

static void
rst_fetch_acked(struct repl_op *op, bool ok)
{
  struct rst_fetch *f = (struct rst_fetch *)op;
  struct restore *rs = f->rs;
  const Duplex__FetchData *d = op->fetch_data;

  if (!ok) {                    /* the link dropped: fetched again later */
    rst_fetch_free(f);
    return;
  }
  if (d->error != 0 || d->length != f->len || d->offset != f->off) {
    snprintf(rs->error, sizeof rs->error, "the secondary could not send %"
             PRIu64 "+%" PRIu64 ": %s (tried again)", f->off, f->len,
             d->error ? (d->message && d->message[0] ? d->message
                                                     : strerror((int)d->error))
                      : "wrong range in the answer");
    log_warn("primary: restore: %s", rs->error);
    rs->retry_ms = util_now_ms() + RST_RETRY_MS;
    rst_fetch_free(f);
    rst_wake(rs);
    return;
  }
  rs->fetched_bytes += f->len;
  f->buf = util_alloc_aligned(f->len);
  memcpy(f->buf, op->fetch_payload, f->len);
  aio_pwrite(rs->p->aio, &f->aio, rs->p->vol.fd, f->buf, f->len, f->off,
             rst_fetch_written, f);
}

static void
rst_fetch_send(struct rst_fetch *f)
{
  struct restore *rs = f->rs;

  /* A client wrote part of it while the lock was awaited: its data wins;
   * what is still to do is looked at again. */
  if (!rst_all_set(rs, f->off, f->len)) {
    if (rs->cursor > f->off)
      rs->cursor = f->off;
    rst_fetch_free(f);
    rst_wake(rs);
    return;
  }
  f->op.acked = rst_fetch_acked;
  f->op.opaque = f;
  if (repl_send_fetch(rs->p->repl, &f->op, f->off, (uint32_t)f->len,
                      rs->hdr.source) == -1)
    rst_fetch_free(f);          /* not connected: the bits stay */
}

static void
rst_fetch_locked(struct range_lock *l, void *opaque)
{
  (void)l;
  rst_fetch_send(opaque);
}

/* Fetch [off, off+len): under its own range lock, or under the lock of
 * the held write `hold`. */
static void
rst_fetch_start(struct restore *rs, uint64_t off, uint64_t len, bool demand,
                struct rst_hold *hold)
{
  struct rst_fetch *f = calloc(1, sizeof *f);
  bool granted;

  if (f == NULL)
    abort();
  f->rs = rs;
  f->off = off;
  f->len = len;
  f->demand = demand;
  f->hold = hold;
  if (hold != NULL)
    hold->pending++;
  if (!demand)
    rs->window += len;
  rs->inflight++;
  TAILQ_INSERT_TAIL(&rs->fetches, f, q);
  if (hold != NULL) {
    rst_fetch_send(f);
    return;
  }
  f->lock = lock_acquire(rs->p->locks, off, off + len, rst_fetch_locked, f,
                         &granted);
  if (granted)
    rst_fetch_send(f);
}

/* A fetch in flight covers offset off. */
static bool
rst_covered(const struct restore *rs, uint64_t off)
{
  const struct rst_fetch *f;

  TAILQ_FOREACH(f, &rs->fetches, q)
    if (off >= f->off && off < f->off + f->len)
      return true;
  return false;
}

/* Fetch every region of [off, end) still to do that no fetch in flight
 * covers (for a client's read). */
static void
rst_fetch_range(struct restore *rs, uint64_t off, uint64_t end)
{
  uint32_t grain = bitmap_grain(rs->todo);
  uint64_t size = rs->p->vol.size, a, b;

  a = off - off % grain;
  end = MIN(end + (grain - end % grain) % grain, size);
  while (a < end) {
    if (!bitmap_test(rs->todo, a) || rst_covered(rs, a)) {
      a += grain;
      continue;
    }
    b = a;
    while (b < end && b - a < RST_CHUNK && bitmap_test(rs->todo, b) &&
           !rst_covered(rs, b))
      b += grain;
    rst_fetch_start(rs, a, MIN(b, size) - a, true, NULL);
    a = b;
  }
}

/* Background copy budget (--restore-rate). */
static bool
rst_budget(struct restore *rs)
{
  uint64_t now = util_now_ms();

  if (rs->hdr.rate == 0)
    return true;
  if (now > rs->budget_ms) {
    rs->budget += (int64_t)(rs->hdr.rate * (now - rs->budget_ms) / 1000);
    if (rs->budget > (int64_t)MAX(rs->hdr.rate / 4, RST_CHUNK))
      rs->budget = (int64_t)MAX(rs->hdr.rate / 4, RST_CHUNK);
    rs->budget_ms = now;
  }
  return rs->budget > 0;
}

void
rst_copy(struct restore *rs)
{
  struct primary *p = rs->p;

  while (repl_connected(p->repl) && rs->window < RST_WINDOW &&
         util_now_ms() >= rs->retry_ms && rst_budget(rs)) {
    uint64_t off, len;

    if (!bitmap_next_run(rs->todo, rs->cursor, RST_CHUNK, &off, &len)) {
      /* Past the end: what failed is looked at again once nothing is in
       * flight. */
      if (rs->inflight > 0 || bitmap_dirty_bytes(rs->todo) == 0 ||
          rs->cursor == 0)
        break;
      rs->cursor = 0;
      continue;
    }
    /* Clients' fetches have this one: go on after it. */
    if (rst_covered(rs, off)) {
      rs->cursor = off + bitmap_grain(rs->todo);
      continue;
    }
    rs->cursor = off + len;
    rs->budget -= (int64_t)len;
    rst_fetch_start(rs, off, len, false, NULL);
  }
  if (bitmap_dirty_bytes(rs->todo) == 0 && rs->inflight == 0 &&
      TAILQ_EMPTY(&rs->holds) && TAILQ_EMPTY(&rs->reads)) {
    rs->phase = RST_FINISH;
    log_info("primary: restore: every differing region is written; "
             "syncing the volume and handing the replica the new "
             "generation");
  }
}

/* ---- clients during an instant restore ---- */

bool
restore_instant(const struct primary *p)
{
  return restore_running(p) && rst_instant(p->restore);
}

void
restore_lock_range(const struct primary *p, uint64_t *start, uint64_t *end)
{
  uint32_t grain;

  if (!restore_instant(p))
    return;
  grain = bitmap_grain(p->oos);
  *start -= *start % grain;
  *end = MIN(*end + (grain - *end % grain) % grain, p->vol.size);
}

/* Is any region of [off, end) still to do?  (Before the plan: all.) */
static bool
rst_todo_in(const struct restore *rs, uint64_t off, uint64_t end)
{
  uint64_t o, l;

  if (rs->phase < RST_PLAN || rs->phase > RST_FINISH || rs->todo == NULL)
    return false;
  /* (A run found starts at a grain boundary at or after its start.) */
  off -= off % bitmap_grain(rs->todo);
  return bitmap_next_run(rs->todo, off, end - off, &o, &l) && o < end;
}

bool
restore_hold_read(struct primary *p, struct req *r,
                  void (*cont)(struct req *r))
{
  struct restore *rs = p->restore;
  uint64_t a0 = r->offset & ~(uint64_t)(BDEV_ALIGN - 1);
  uint64_t a1 = r->offset + r->length;

  if (!restore_instant(p) || !rst_todo_in(rs, a0, a1))
    return false;
  rs->read_cont = cont;
  TAILQ_INSERT_TAIL(&rs->reads, r, wq);
  rst_fetch_range(rs, a0, a1);
  return true;
}

/* Under r's lock (restore_lock_range: whole grains): the grains the
 * request covers whole are the client's from now on (their bits are
 * cleared, and on disk before the answer: restore_persist), the ones it
 * covers partly are fetched first.  True: held, r continues with
 * cont(r) once that is done. */
static bool
rst_hold_write(struct restore *rs, struct rst_hold *h)
{
  struct req *r = h->r;
  uint32_t grain = bitmap_grain(rs->todo);
  uint64_t end = r->offset + r->length;
  uint64_t g0 = r->lock_start, g1 = r->lock_end;
  bool partial = false;

  for (uint64_t g = g0; g < g1; g += grain) {
    uint64_t ge = MIN(g + grain, rs->p->vol.size);
    if (!bitmap_test(rs->todo, g)) {
      /* Restored, but the record may not say so yet: after a crash it
       * would be restored again, over this write.  Saved before the
       * answer. */
      if (bitmap_page_dirty(rs->todo, bitmap_page_of(rs->todo, g)))
        r->restore_persist = true;
      continue;
    }
    if (r->offset <= g && end >= ge) {
      bitmap_clear_range(rs->todo, g, ge - g);
      r->restore_persist = true;
    } else {
      partial = true;
    }
  }
  if (!partial)
    return false;
  if (!repl_connected(rs->p->repl))
    return true;                /* waits in rs->holds for the link */
  for (uint64_t g = g0; g < g1; g += grain) {
    uint64_t ge = MIN(g + grain, rs->p->vol.size);
    if (bitmap_test(rs->todo, g))
      rst_fetch_start(rs, g, ge - g, true, h);
  }
  return true;
}

bool
restore_hold_write(struct primary *p, struct req *r,
                   void (*cont)(struct req *r))
{
  struct restore *rs = p->restore;
  struct rst_hold *h;

  if (!restore_instant(p) || rs->phase <= RST_WAIT_SYNC)
    return false;
  h = calloc(1, sizeof *h);
  if (h == NULL)
    abort();
  h->r = r;
  h->cont = cont;
  /* Until the safety snapshot is taken, a write would be in neither it
   * nor the restore's care: it waits (a few milliseconds). */
  if (rs->phase == RST_SNAPSHOT || rst_hold_write(rs, h)) {
    if (h->pending == 0)
      TAILQ_INSERT_TAIL(&rs->holds, h, q);
    return true;
  }
  free(h);
  return false;
}

/* Fetches completed, or the phase or the link changed: clients waiting
 * go on where they can. */
void
rst_wake(struct restore *rs)
{
  struct rst_holdq holds = TAILQ_HEAD_INITIALIZER(holds);
  TAILQ_HEAD(, req) reads = TAILQ_HEAD_INITIALIZER(reads);
  struct rst_hold *h;
  struct req *r;

  if (rs->phase != RST_SNAPSHOT) {
    TAILQ_CONCAT(&holds, &rs->holds, q);
    while ((h = TAILQ_FIRST(&holds)) != NULL) {
      TAILQ_REMOVE(&holds, h, q);
      if (rs->phase <= RST_WAIT_SYNC || rs->phase >= RST_DONE ||
          !rst_hold_write(rs, h)) {
        struct req *hr = h->r;
        void (*cont)(struct req *) = h->cont;
        free(h);
        cont(hr);
      } else if (h->pending == 0) {
        TAILQ_INSERT_TAIL(&rs->holds, h, q);
      }
    }
  }
  TAILQ_CONCAT(&reads, &rs->reads, wq);
  while ((r = TAILQ_FIRST(&reads)) != NULL) {
    uint64_t a0 = r->offset & ~(uint64_t)(BDEV_ALIGN - 1);
    TAILQ_REMOVE(&reads, r, wq);
    if (!rst_todo_in(rs, a0, r->offset + r->length)) {
      rs->read_cont(r);
    } else {
      TAILQ_INSERT_TAIL(&rs->reads, r, wq);
      if (repl_connected(rs->p->repl))
        rst_fetch_range(rs, a0, r->offset + r->length);
    }
  }
  rst_pump(rs);
}

int
restore_persist(struct primary *p)
{
  return p->restore != NULL ? rst_flush_record(p->restore) : 0;
}

