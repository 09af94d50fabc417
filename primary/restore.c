/* Restoring this volume from a snapshot of the replica, or from the
 * replica itself (`duplexctl restore`): the way back after a disaster or a
 * bad change.  Only regions that differ travel, and the replica moves
 * along (it ends equal to the restored volume, under a new generation).
 *
 * Phases (enum rst_phase), driven by a poll timer and by the secondary's
 * answers:
 *   WAIT_SYNC  the replica must hold everything first, so that the safety
 *              snapshot holds this volume as it is: connected, no resync,
 *              nothing unacknowledged, the secondary in this generation.
 *   SNAPSHOT   the safety snapshot ("before-restore") is being taken on the
 *              secondary at this point of the stream (snapshot source only:
 *              the replica source restores what the replica holds, and the
 *              blocks that differ never reached it).
 *   PLAN       the record exists (restore-state.c; todo = everything) and
 *              the volume may change from here on.  The plan narrows todo:
 *              for a snapshot, the regions where it differs from the safety
 *              snapshot (RESTORE_PLAN: the store's lineage); for the
 *              replica, a comparison of block hashes over the whole volume
 *              (VERIFY, as --resync-checksums does).
 *   COPY       each region still to do is fetched (FETCH: the secondary
 *              writes the snapshot's blocks to the replica at that point of
 *              the stream and sends them), written here under its range
 *              lock, and its bit cleared; cleared bits reach the record
 *              once a second, after the volume is synced.
 *   FINISH     nothing left: the volume is synced, then an in-sync
 *              SYNC_STATE gives the secondary this side's generation; its
 *              acknowledgement ends the restore (the record is removed).
 *   DONE       status keeps the figures of the last restore.
 * A lost link fails what is in flight (the bits stay set) and the phase
 * goes on once it is back; a crash or stop resumes from the record at the
 * next start (restore_resume).  Until DONE the secondary says `restoring`
 * and counts its replica inconsistent; NBD refuses clients. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "hash.h"
#include "internal.h"
#include "json.h"
#include "log.h"

#define RST_POLL_MS 50
#define RST_FLUSH_MS 1000             /* cleared bits to the record */
#define RST_REPORT_MS 500             /* progress to the secondary */
#define RST_CHUNK (1024u * 1024)      /* bytes per FETCH */
#define RST_WINDOW (16u * 1024 * 1024) /* bytes fetched, not yet written */
#define RST_CMP_CHUNK (4u * 1024 * 1024) /* bytes per hash comparison */
#define RST_CMP_INFLIGHT 4
#define RST_RETRY_MS 1000             /* after a failed fetch */
#define RST_START_TIMEOUT_MS 60000    /* the command's answer at the latest */
#define RST_USAGE "restore --snapshot ID | --replica [--instant] " \
                  "[--restore-rate BYTES_PER_S]"


enum rst_phase { RST_WAIT_SYNC, RST_SNAPSHOT, RST_PLAN, RST_COPY,
                 RST_FINISH, RST_DONE };

/* A client write-like request held under its range lock (--instant):
 * until the safety snapshot is taken, or until the restore grains it
 * covers only partly are fetched (read-modify-write of the grain). */
struct rst_hold {
  struct req *r;
  void (*cont)(struct req *r);
  unsigned pending;             /* its fetches in flight */
  TAILQ_ENTRY(rst_hold) q;
};
TAILQ_HEAD(rst_holdq, rst_hold);

struct rst_fetch {
  struct repl_op op;            /* first: the ring's pointer */
  struct restore *rs;
  uint64_t off, len;
  struct range_lock *lock;      /* NULL: under a held write's lock */
  struct rst_hold *hold;        /* that write */
  bool demand;                  /* for a client (not the background copy) */
  char *buf;
  struct aio_op aio;
  TAILQ_ENTRY(rst_fetch) q;
};
TAILQ_HEAD(rst_fetchq, rst_fetch);

struct restore {
  struct primary *p;
  enum rst_phase phase;
  struct restore_hdr hdr;
  char path[4200];
  int fd;
  struct bitmap *todo;          /* regions not restored yet */
  struct event *poll;
  struct control_pending *reply; /* the command, until it has started */
  uint64_t reply_deadline_ms;
  struct repl_op *op;           /* SNAPSHOT, RESTORE_PLAN or the final
                                   SYNC_STATE in flight, or NULL */
  uint8_t *plan_img;            /* RESTORE_PLAN answer being received */
  size_t plan_len, plan_got;
  char plan_error[512];
  uint64_t cursor;              /* COPY: next offset to look at */
  uint64_t window;              /* COPY: bytes fetched and not written */
  unsigned inflight;            /* COPY: fetches not finished */
  uint64_t cmp_cursor;          /* PLAN from the replica */
  unsigned cmp_inflight;
  uint64_t retry_ms;            /* no new fetch before this */
  uint64_t total_bytes;         /* planned (0 until then) */
  uint64_t done_bytes;          /* restored this run */
  uint64_t fetched_bytes;       /* payload received this run */
  uint64_t same_bytes;          /* replica plan: equal, not moved */
  uint64_t started_ms, planned_ms, finished_ms, last_flush_ms,
           last_report_ms;
  bool resumed;
  struct rst_fetchq fetches;    /* in flight */
  TAILQ_HEAD(, req) reads;      /* client reads waiting for fetches */
  struct rst_holdq holds;       /* client writes held (not fetching) */
  uint64_t demand_bytes;        /* fetched for clients */
  uint64_t demand_fetches;
  int64_t budget;               /* --restore-rate: bytes the copy may fetch */
  uint64_t budget_ms;
  char error[9000];             /* the last failure, "" if none */
};

struct rst_cmp {
  struct repl_op op;
  struct restore *rs;
  uint64_t off, len;
  char *buf;
  uint64_t *remote;             /* the replica's hashes */
  struct aio_op aio;
  int pending;                  /* the local read and the VERIFY */
  bool failed;
};

static void rst_pump(struct restore *rs);

static bool
rst_instant(const struct restore *rs)
{
  return (rs->hdr.flags & RESTORE_F_INSTANT) != 0;
}

static const char *
rst_phase_name(enum rst_phase ph)
{
  switch (ph) {
  case RST_WAIT_SYNC: return "waiting-for-sync";
  case RST_SNAPSHOT: return "safety-snapshot";
  case RST_PLAN: return "planning";
  case RST_COPY: return "copying";
  case RST_FINISH: return "finishing";
  case RST_DONE: return "done";
  }
  return "?";
}

static void
rst_source_text(const struct restore *rs, char *out, size_t len)
{
  if (rs->hdr.flags & RESTORE_F_REPLICA)
    snprintf(out, len, "the replica");
  else
    snprintf(out, len, "snapshot %" PRIu64, rs->hdr.source);
}

static void
rst_answer(struct restore *rs, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
rst_answer(struct restore *rs, bool ok, const char *fmt, ...)
{
  struct evbuffer *body;
  va_list ap;

  if (rs->reply == NULL)
    return;
  body = evbuffer_new();
  if (body == NULL)
    abort();
  va_start(ap, fmt);
  evbuffer_add_vprintf(body, fmt, ap);
  va_end(ap);
  evbuffer_add(body, "\n", 1);
  control_finish(rs->reply, ok, body);
  rs->reply = NULL;
  evbuffer_free(body);
}

bool
restore_running(const struct primary *p)
{
  return p->restore != NULL && p->restore->phase != RST_DONE;
}

bool
restore_blocks_clients(const struct primary *p)
{
  return restore_running(p) && !rst_instant(p->restore) &&
         p->restore->phase != RST_WAIT_SYNC &&
         p->restore->phase != RST_SNAPSHOT;
}

/* Before the volume may change: the record, todo = everything. */
static int
rst_create_record(struct restore *rs)
{
  int rc;

  bitmap_set_all(rs->todo);
  rc = restore_file_create(rs->path, &rs->hdr, bitmap_words(rs->todo),
                           bitmap_word_count(rs->todo), &rs->fd);
  if (rc < 0) {
    snprintf(rs->error, sizeof rs->error, "cannot write the restore record "
             "%s: %s", rs->path, strerror(-rc));
    return -1;
  }
  /* Pages are written from here on only as bits are cleared. */
  while (bitmap_dirty_page_count(rs->todo) > 0) {
    uint64_t first, n;
    bitmap_take_dirty_pages(rs->todo, &first, &n);
  }
  return 0;
}

/* Cleared bits to the record, after what they stand for is durable. */
static int
rst_flush_record(struct restore *rs)
{
  struct primary *p = rs->p;
  uint64_t first, n;
  int rc = 0;

  if (rs->fd < 0 || bitmap_dirty_page_count(rs->todo) == 0)
    return 0;
  if (fdatasync(p->vol.fd) == -1) {
    rc = -errno;
    snprintf(rs->error, sizeof rs->error, "syncing %s: %s", p->vol.path,
             strerror(-rc));
    return rc;
  }
  while (bitmap_take_dirty_pages(rs->todo, &first, &n)) {
    rc = restore_file_write_pages(rs->fd, bitmap_words(rs->todo),
                                  bitmap_word_count(rs->todo), first, n);
    if (rc < 0) {
      bitmap_mark_pages_dirty(rs->todo, first, n);
      break;
    }
  }
  if (rc == 0 && fdatasync(rs->fd) == -1)
    rc = -errno;
  if (rc < 0)
    snprintf(rs->error, sizeof rs->error, "writing the restore record %s: "
             "%s (tried again)", rs->path, strerror(-rc));
  rs->last_flush_ms = util_now_ms();
  return rc;
}

/* The plan is known: todo holds exactly what is left; persist it whole. */
static void
rst_planned(struct restore *rs)
{
  struct primary *p = rs->p;
  char src[64];
  int rc;

  bitmap_recount(rs->todo);
  bitmap_mark_pages_dirty(rs->todo, 0, bitmap_page_count(rs->todo));
  rs->hdr.flags |= RESTORE_F_PLANNED;
  rs->total_bytes = bitmap_dirty_bytes(rs->todo);
  rs->planned_ms = util_now_ms();
  rst_flush_record(rs);
  if ((rc = restore_file_write_header(rs->fd, &rs->hdr)) < 0)
    snprintf(rs->error, sizeof rs->error, "writing the restore record %s: "
             "%s", rs->path, strerror(-rc));
  rst_source_text(rs, src, sizeof src);
  log_info("primary: restore from %s: %" PRIu64 " bytes differ (of %"
           PRIu64 "), copying them", src, rs->total_bytes, p->vol.size);
  rs->phase = RST_COPY;
  rs->cursor = 0;
  rst_pump(rs);
}

/* ---- PLAN from a snapshot: the store's lineage ---- */

static void
rst_plan_part(struct repl_op *op, const Duplex__RestorePlanPart *m,
              const uint8_t *payload)
{
  struct restore *rs = op->opaque;
  size_t want = bitmap_word_count(rs->todo) * sizeof(uint64_t);

  if (m->error != NULL && m->error[0] != '\0') {
    snprintf(rs->plan_error, sizeof rs->plan_error, "%s", m->error);
    return;
  }
  if (rs->plan_img == NULL) {
    rs->plan_img = calloc(1, want ? want : 8);
    if (rs->plan_img == NULL)
      abort();
    rs->plan_len = want;
  }
  if (m->offset > want || m->length > want - m->offset) {
    snprintf(rs->plan_error, sizeof rs->plan_error, "the plan's piece at %"
             PRIu64 " (%u bytes) is past its %zu bytes", m->offset,
             m->length, want);
    return;
  }
  if (m->length > 0)
    memcpy(rs->plan_img + m->offset, payload, m->length);
  rs->plan_got += m->length;
}

static void
rst_plan_acked(struct repl_op *op, bool ok)
{
  struct restore *rs = op->opaque;
  uint64_t *words = bitmap_words(rs->todo);
  const uint64_t *img = (const uint64_t *)rs->plan_img;
  size_t n = bitmap_word_count(rs->todo);

  rs->op = NULL;
  free(op);
  if (ok && rs->plan_error[0] == '\0' &&
      rs->plan_got != n * sizeof(uint64_t))
    snprintf(rs->plan_error, sizeof rs->plan_error, "the plan has %zu "
             "bytes, expected %zu", rs->plan_got, n * sizeof(uint64_t));
  rs->plan_got = 0;
  if (!ok || rs->plan_error[0] != '\0') {
    if (rs->plan_error[0] != '\0') {
      snprintf(rs->error, sizeof rs->error, "no plan from the secondary: "
               "%s (asked again)", rs->plan_error);
      log_warn("primary: restore: %s", rs->error);
      rs->retry_ms = util_now_ms() + 5 * RST_RETRY_MS;
    }
    rs->plan_error[0] = '\0';
    free(rs->plan_img);
    rs->plan_img = NULL;
    return;
  }
  /* A region is still to do if the snapshot differs there and no client
   * wrote it meanwhile (--instant: those bits are clear already). */
  for (size_t i = 0; i < n; i++)
    words[i] &= img[i];
  free(rs->plan_img);
  rs->plan_img = NULL;
  rst_planned(rs);
}

static void
rst_plan_snapshot(struct restore *rs)
{
  struct repl_op *op;

  if (rs->op != NULL || util_now_ms() < rs->retry_ms)
    return;
  op = calloc(1, sizeof *op);
  if (op == NULL)
    abort();
  op->acked = rst_plan_acked;
  op->opaque = rs;
  op->plan_part = rst_plan_part;
  if (repl_send_restore_plan(rs->p->repl, op, rs->hdr.source,
                             rs->hdr.safety) == -1) {
    free(op);
    return;
  }
  rs->op = op;
}

/* ---- PLAN from the replica: block hashes ---- */

static void
rst_cmp_finish(struct rst_cmp *c)
{
  struct restore *rs = c->rs;
  uint32_t grain = bitmap_grain(rs->todo);

  if (--c->pending > 0)
    return;
  if (!c->failed) {
    /* A region is equal when every block in it is. */
    for (uint64_t g = 0; g < c->len; g += grain) {
      uint64_t glen = MIN((uint64_t)grain, c->len - g);
      bool same = true;
      for (uint64_t b = 0; b < glen && same; b += BDEV_ALIGN)
        same = hash_block(c->buf + g + b, BDEV_ALIGN) ==
               c->remote[(g + b) / BDEV_ALIGN];
      if (same) {
        bitmap_clear_range(rs->todo, c->off + g, glen);
        rs->same_bytes += glen;
      }
    }
  } else if (rs->cmp_cursor > c->off) {
    rs->cmp_cursor = c->off;    /* compared again */
  }
  rs->cmp_inflight--;
  free(c->buf);
  free(c->remote);
  free(c);
  rst_pump(rs);
}

static void
rst_cmp_read_done(struct aio_op *aop, long res)
{
  struct rst_cmp *c = aop->opaque;

  if (res < 0) {
    snprintf(c->rs->error, sizeof c->rs->error, "reading %s at %" PRIu64
             ": %s", c->rs->p->vol.path, c->off, strerror((int)-res));
    c->failed = true;
  }
  rst_cmp_finish(c);
}

static void
rst_cmp_acked(struct repl_op *op, bool ok)
{
  struct rst_cmp *c = (struct rst_cmp *)op;
  const Duplex__VerifyResult *vr = op->verify_result;

  if (!ok || vr == NULL || vr->error != 0 ||
      vr->n_hashes != c->len / BDEV_ALIGN) {
    if (ok)
      snprintf(c->rs->error, sizeof c->rs->error, "the secondary could not "
               "hash the replica at %" PRIu64 ": %s", c->off,
               vr && vr->error ? strerror((int)vr->error) : "bad answer");
    c->failed = true;
  } else {
    memcpy(c->remote, vr->hashes, vr->n_hashes * sizeof *c->remote);
  }
  rst_cmp_finish(c);
}

static void
rst_plan_replica(struct restore *rs)
{
  struct primary *p = rs->p;

  while (rs->cmp_inflight < RST_CMP_INFLIGHT && rs->cmp_cursor < p->vol.size &&
         repl_connected(p->repl)) {
    uint64_t len = MIN((uint64_t)RST_CMP_CHUNK, p->vol.size - rs->cmp_cursor);
    struct rst_cmp *c = calloc(1, sizeof *c);

    if (c == NULL)
      abort();
    c->rs = rs;
    c->off = rs->cmp_cursor;
    c->len = len;
    c->buf = util_alloc_aligned(len);
    c->remote = calloc(len / BDEV_ALIGN, sizeof *c->remote);
    if (c->remote == NULL)
      abort();
    c->op.acked = rst_cmp_acked;
    c->op.opaque = c;
    if (repl_send_verify(p->repl, &c->op, c->off, (uint32_t)len) == -1) {
      free(c->buf);
      free(c->remote);
      free(c);
      return;
    }
    c->pending = 2;
    rs->cmp_inflight++;
    rs->cmp_cursor += len;
    aio_pread(p->aio, &c->aio, p->vol.fd, c->buf, len, c->off,
              rst_cmp_read_done, c);
  }
  if (rs->cmp_cursor >= p->vol.size && rs->cmp_inflight == 0)
    rst_planned(rs);
}

/* ---- COPY: fetching regions (the background copy and clients) ---- */

static void rst_wake(struct restore *rs);

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

static void
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
restore_hold_read(struct primary *p, struct req *r)
{
  struct restore *rs = p->restore;
  uint64_t a0 = r->offset & ~(uint64_t)(BDEV_ALIGN - 1);
  uint64_t a1 = r->offset + r->length;

  if (!restore_instant(p) || !rst_todo_in(rs, a0, a1))
    return false;
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

  if (!restore_instant(p) || rs->phase == RST_WAIT_SYNC)
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
static void
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
      if (rs->phase == RST_WAIT_SYNC || rs->phase == RST_DONE ||
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
      vol_resume(r);
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

/* ---- FINISH ---- */

static void
rst_done_acked(struct repl_op *op, bool ok)
{
  struct restore *rs = op->opaque;
  struct primary *p = rs->p;
  char src[64];
  int rc;

  rs->op = NULL;
  free(op);
  if (!ok)
    return;                     /* sent again once connected */
  resync_in_sync_acked(p->resync);
  rc = restore_file_remove(rs->path, rs->fd);
  rs->fd = -1;
  if (rc < 0)
    log_error("primary: restore: cannot remove the restore record %s: %s; "
              "remove it by hand before the next start, or that start "
              "restores again", rs->path, strerror(-rc));
  rs->phase = RST_DONE;
  rs->finished_ms = util_now_ms();
  rst_source_text(rs, src, sizeof src);
  log_info("primary: restore from %s complete: %" PRIu64 " bytes restored "
           "(%" PRIu64 " fetched) in %.1f s; the replica equals the volume; "
           "NBD clients are accepted again", src, rs->done_bytes,
           rs->fetched_bytes, (rs->finished_ms - rs->started_ms) / 1000.0);
  bitmap_free(rs->todo);
  rs->todo = NULL;
}

static void
rst_finish(struct restore *rs)
{
  struct primary *p = rs->p;
  struct repl_op *op;
  struct resync_counters rc;

  if (rs->op != NULL)
    return;
  resync_get_counters(p->resync, &rc);
  if (!repl_connected(p->repl) || resync_active(p->resync) ||
      bitmap_dirty_bytes(p->oos) > 0)
    return;
  if (fdatasync(p->vol.fd) == -1) {
    snprintf(rs->error, sizeof rs->error, "syncing %s: %s (tried again)",
             p->vol.path, strerror(errno));
    return;
  }
  op = calloc(1, sizeof *op);
  if (op == NULL)
    abort();
  op->acked = rst_done_acked;
  op->opaque = rs;
  if (repl_send_sync_done(p->repl, op, false) == -1) {
    free(op);
    return;
  }
  rs->op = op;
}

/* ---- the state machine ---- */

static bool
rst_in_sync(struct restore *rs, char *why, size_t len)
{
  struct primary *p = rs->p;
  struct resync_counters rc;

  resync_get_counters(p->resync, &rc);
  if (!repl_connected(p->repl))
    snprintf(why, len, "the secondary to connect (link %s)",
             repl_link_state(p->repl));
  else if (resync_active(p->resync) || bitmap_dirty_bytes(p->oos) > 0)
    snprintf(why, len, "the resync to finish (%" PRIu64 " bytes out of "
             "sync)", bitmap_dirty_bytes(p->oos));
  else if (repl_inflight_bytes(p->repl) > 0)
    snprintf(why, len, "the secondary to acknowledge %" PRIu64 " bytes",
             repl_inflight_bytes(p->repl));
  else if (!rc.in_sync_confirmed)
    snprintf(why, len, "the secondary to adopt this side's generation");
  else
    return true;
  return false;
}

/* The volume may change from now on. */
static void
rst_begin(struct restore *rs)
{
  struct primary *p = rs->p;
  const char *nbd_note = rst_instant(rs)
      ? "NBD keeps serving: blocks not restored yet are fetched when read, "
        "client writes win; `status` shows the progress"
      : "NBD clients are refused until `status` shows sync: in-sync";
  char src[64];

  rst_source_text(rs, src, sizeof src);
  if (rst_create_record(rs) == -1 || primary_new_generation(p) == -1) {
    if (rs->error[0] == '\0')
      snprintf(rs->error, sizeof rs->error, "%s", p->meta_error);
    log_error("primary: restore from %s not started: %s", src, rs->error);
    rst_answer(rs, false, "restore from %s not started: %s; nothing was "
               "changed", src, rs->error);
    if (rs->fd >= 0)
      restore_file_remove(rs->path, rs->fd);
    rs->fd = -1;
    rs->phase = RST_DONE;
    rst_wake(rs);
    return;
  }
  resync_unconfirm(p->resync);
  repl_send_restore_state(p->repl, rs->hdr.source, p->vol.size, 0);
  rs->phase = RST_PLAN;
  rst_wake(rs);                 /* held writes: the client's from now on */
  if (rs->hdr.flags & RESTORE_F_REPLICA) {
    log_info("primary: restore from the replica started: comparing block "
             "hashes of the whole volume; %s", nbd_note);
    rst_answer(rs, true, "restore from the replica started: block hashes "
               "of the whole volume are compared and only the blocks that "
               "differ are copied; %s", nbd_note);
  } else {
    log_info("primary: restore from %s started (safety snapshot %" PRIu64
             " holds the volume as it was); %s", src, rs->hdr.safety,
             nbd_note);
    rst_answer(rs, true, "restore from %s started; snapshot %" PRIu64
               " holds the volume as it was (restore --snapshot %" PRIu64
               " undoes it). %s", src, rs->hdr.safety, rs->hdr.safety,
               nbd_note);
  }
}

static void
rst_snapshot_acked(struct repl_op *op, bool ok)
{
  struct restore *rs = op->opaque;
  const Duplex__SnapshotDone *sd = op->snapshot_done;
  char src[64];

  rs->op = NULL;
  if (!ok) {
    free(op);
    rs->phase = RST_WAIT_SYNC;  /* the link dropped: again once in sync */
    rst_wake(rs);               /* held writes go on */
    return;
  }
  rst_source_text(rs, src, sizeof src);
  if (sd == NULL || sd->id == 0) {
    snprintf(rs->error, sizeof rs->error, "the secondary took no safety "
             "snapshot: %s", sd && sd->error ? sd->error : "no answer");
    log_error("primary: restore from %s not started: %s", src, rs->error);
    rst_answer(rs, false, "restore from %s not started: %s; nothing was "
               "changed", src, rs->error);
    rs->phase = RST_DONE;
    free(op);
    rst_wake(rs);               /* held writes go on */
    return;
  }
  rs->hdr.safety = sd->id;
  free(op);
  rst_begin(rs);
}

static void
rst_step(struct restore *rs)
{
  struct primary *p = rs->p;
  char why[256];
  uint64_t now = util_now_ms();

  if (p->stopping)
    return;
  switch (rs->phase) {
  case RST_WAIT_SYNC:
    if (!rst_in_sync(rs, why, sizeof why)) {
      if (rs->reply != NULL && now >= rs->reply_deadline_ms)
        rst_answer(rs, false, "restore not started after %.0f s: waiting "
                   "for %s; it starts once the pair is in sync (`status` "
                   "shows it), nothing was changed",
                   (now - rs->started_ms) / 1000.0, why);
      return;
    }
    if (rs->hdr.flags & RESTORE_F_REPLICA) {
      rst_begin(rs);
      return;
    }
    rs->op = calloc(1, sizeof *rs->op);
    if (rs->op == NULL)
      abort();
    rs->op->acked = rst_snapshot_acked;
    rs->op->opaque = rs;
    if (repl_send_snapshot(p->repl, rs->op, "before-restore",
                           4 /* SNAP_BEFORE_RESTORE */) == -1) {
      free(rs->op);
      rs->op = NULL;
      return;
    }
    rs->phase = RST_SNAPSHOT;
    return;
  case RST_SNAPSHOT:
    return;
  case RST_PLAN:
    if (rs->hdr.flags & RESTORE_F_REPLICA)
      rst_plan_replica(rs);
    else
      rst_plan_snapshot(rs);
    break;
  case RST_COPY:
    rst_copy(rs);
    break;
  case RST_FINISH:
    rst_finish(rs);
    return;
  case RST_DONE:
    return;
  }
  if (rs->phase == RST_DONE)
    return;
  if (repl_connected(p->repl) &&
      (!TAILQ_EMPTY(&rs->holds) || !TAILQ_EMPTY(&rs->reads)))
    rst_wake(rs);
  if (now - rs->last_flush_ms >= RST_FLUSH_MS)
    rst_flush_record(rs);
  if (now - rs->last_report_ms >= RST_REPORT_MS) {
    rs->last_report_ms = now;
    repl_send_restore_state(p->repl, rs->hdr.source,
                            rs->total_bytes ? rs->total_bytes : p->vol.size,
                            rs->done_bytes);
  }
}

static void
rst_pump(struct restore *rs)
{
  if (rs->phase == RST_COPY)
    rst_copy(rs);
  else if (rs->phase == RST_PLAN && (rs->hdr.flags & RESTORE_F_REPLICA))
    rst_plan_replica(rs);
  if (rs->phase == RST_FINISH)
    rst_finish(rs);
}

static void
rst_poll_cb(evutil_socket_t fd, short what, void *arg)
{
  (void)fd;
  (void)what;
  rst_step(arg);
}

static struct restore *
rst_new(struct primary *p)
{
  struct timeval tv = { 0, RST_POLL_MS * 1000 };
  struct restore *rs = calloc(1, sizeof *rs);

  if (rs == NULL)
    abort();
  rs->p = p;
  rs->fd = -1;
  snprintf(rs->path, sizeof rs->path, "%s.restore", p->cfg.meta);
  rs->todo = bitmap_new(p->vol.size, bitmap_grain(p->oos));
  if (rs->todo == NULL)
    abort();
  rs->hdr.size = p->vol.size;
  rs->hdr.grain = bitmap_grain(p->oos);
  rs->started_ms = util_now_ms();
  TAILQ_INIT(&rs->fetches);
  TAILQ_INIT(&rs->reads);
  TAILQ_INIT(&rs->holds);
  rs->poll = event_new(p->base, -1, EV_PERSIST, rst_poll_cb, rs);
  if (rs->poll == NULL || event_add(rs->poll, &tv) == -1)
    abort();
  return rs;
}

static void
rst_free(struct restore *rs)
{
  if (rs == NULL)
    return;
  if (rs->reply != NULL)
    rst_answer(rs, false, "the agent stopped before the restore started; "
               "nothing was changed");
  event_free(rs->poll);
  if (rs->fd >= 0) {
    rst_flush_record(rs);
    close(rs->fd);
  }
  bitmap_free(rs->todo);
  free(rs->plan_img);
  free(rs);
}

/* `restore --snapshot ID | --replica`. */
int
restore_command(struct primary *p, int argc, char **argv,
                struct evbuffer *out)
{
  struct restore *rs;
  uint64_t source = 0, rate = 0;
  bool replica = false, have = false, instant = false;
  char sub[128];
  unsigned clients = 0;
  char *end;
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--snapshot") == 0 && i + 1 < argc && !have) {
      errno = 0;
      source = strtoull(argv[++i], &end, 10);
      if (errno || *end || source == 0) {
        evbuffer_add_printf(out, "restore --snapshot %s: not a snapshot id "
                            "(see snapshot list)\n", argv[i]);
        return -1;
      }
      have = true;
    } else if (strcmp(argv[i], "--replica") == 0 && !have) {
      replica = have = true;
    } else if (strcmp(argv[i], "--instant") == 0) {
      instant = true;
    } else if (strcmp(argv[i], "--restore-rate") == 0 && i + 1 < argc) {
      if (util_parse_size(argv[++i], &rate, sub, sizeof sub) == -1 ||
          rate < 4096) {
        evbuffer_add_printf(out, "restore --restore-rate %s: %s\n", argv[i],
                            rate < 4096 ? "at least 4096 bytes/s" : sub);
        return -1;
      }
    } else {
      evbuffer_add_printf(out, "restore: unexpected argument %s (usage: "
                          "%s)\n", argv[i], RST_USAGE);
      return -1;
    }
  }
  if (!have) {
    evbuffer_add_printf(out, "usage: %s\n", RST_USAGE);
    return -1;
  }
  if (restore_running(p)) {
    char src[64];
    rst_source_text(p->restore, src, sizeof src);
    evbuffer_add_printf(out, "restore: a restore from %s is in progress "
                        "(%s); nothing was changed\n", src,
                        rst_phase_name(p->restore->phase));
    return -1;
  }
  if (p->demote != NULL) {
    evbuffer_add_printf(out, "restore: this primary is being demoted\n");
    return -1;
  }
  if (verify_state(p->verify) == VERIFY_RUNNING) {
    evbuffer_add_printf(out, "restore: a verify is running; restore once "
                        "it is done (status shows it)\n");
    return -1;
  }
  if (!repl_connected(p->repl)) {
    evbuffer_add_printf(out, "restore: the secondary is not connected "
                        "(link %s); a restore reads from it. Wait for "
                        "`connection: connected`; nothing was changed\n",
                        repl_link_state(p->repl));
    return -1;
  }
  for (i = 0; i < p->n_nbd; i++)
    clients += nbd_server_clients(p->nbd[i]);
  if (clients > 0 && !instant) {
    evbuffer_add_printf(out, "restore: %u NBD client%s connected; the "
                        "volume changes under them. Unmount and disconnect "
                        "them first, or restore --instant (they keep "
                        "working and see the restored volume); nothing was "
                        "changed\n", clients,
                        clients == 1 ? " is" : "s are");
    return -1;
  }
  rst_free(p->restore);
  p->restore = rs = rst_new(p);
  rs->hdr.source = source;
  rs->hdr.flags = (replica ? RESTORE_F_REPLICA : 0) |
                  (instant ? RESTORE_F_INSTANT : 0);
  rs->hdr.rate = rate;
  rs->hdr.started_wall_ms = util_wall_ns() / 1000000;
  rs->reply = control_defer_for(p->control, RST_START_TIMEOUT_MS / 1000 + 5);
  rs->reply_deadline_ms = rs->started_ms + RST_START_TIMEOUT_MS;
  rst_step(rs);
  return CONTROL_LATER;
}

int
restore_resume(struct primary *p, char *err, size_t errlen)
{
  struct restore_hdr h;
  struct restore *rs;
  char sub[256], src[64];
  int fd, rc;

  snprintf(sub, sizeof sub, "%s.restore", p->cfg.meta);
  rc = restore_file_open(sub, &h, &fd, err, errlen);
  if (rc != 0)
    return rc == 1 ? 0 : -1;
  if (h.size != p->vol.size || h.grain != bitmap_grain(p->oos)) {
    snprintf(err, errlen, "restore record %s is for %llu bytes at grain %u, "
             "the volume is %llu bytes at grain %u", sub,
             (unsigned long long)h.size, h.grain,
             (unsigned long long)p->vol.size, bitmap_grain(p->oos));
    close(fd);
    return -1;
  }
  p->restore = rs = rst_new(p);
  rs->hdr = h;
  rs->fd = fd;
  rs->resumed = true;
  rc = restore_file_read_words(fd, bitmap_words(rs->todo),
                               bitmap_word_count(rs->todo));
  if (rc < 0) {
    snprintf(err, errlen, "restore record %s: %s", sub, strerror(-rc));
    return -1;
  }
  bitmap_recount(rs->todo);
  rst_source_text(rs, src, sizeof src);
  if (h.flags & RESTORE_F_PLANNED) {
    rs->phase = RST_COPY;
    rs->total_bytes = bitmap_dirty_bytes(rs->todo);
    log_info("primary: resuming the %srestore from %s: %" PRIu64 " bytes "
             "still to restore", rst_instant(rs) ? "instant " : "", src,
             rs->total_bytes);
  } else {
    rs->phase = RST_PLAN;
    log_info("primary: resuming the %srestore from %s: planning again",
             rst_instant(rs) ? "instant " : "", src);
  }
  return 0;
}

void
restore_free(struct primary *p)
{
  rst_free(p->restore);
  p->restore = NULL;
}

void
restore_status(const struct primary *p, uint64_t *remaining,
               double *percent)
{
  const struct restore *rs = p->restore;
  uint64_t left = rs->todo ? bitmap_dirty_bytes(rs->todo) : 0;

  if (rs->phase < RST_COPY) {
    *remaining = p->vol.size;
    *percent = 0.0;
    return;
  }
  *remaining = left;
  *percent = rs->total_bytes ? 100.0 * (double)(rs->total_bytes - MIN(left,
                               rs->total_bytes)) / (double)rs->total_bytes
                             : 100.0;
}

static double
rst_rate(const struct restore *rs, uint64_t now)
{
  uint64_t since = rs->planned_ms ? rs->planned_ms : rs->started_ms;
  uint64_t until = rs->phase == RST_DONE ? rs->finished_ms : now;

  return until > since ? rs->done_bytes * 1000.0 / (double)(until - since)
                       : 0.0;
}

void
restore_status_json(const struct primary *p, struct json *j)
{
  const struct restore *rs = p->restore;
  uint64_t now = util_now_ms(), left = 0;
  double pct = 0, rate;

  if (rs == NULL) {
    json_null(j, "restore");
    return;
  }
  if (rs->phase != RST_DONE)
    restore_status(p, &left, &pct);
  rate = rst_rate(rs, now);
  json_obj_begin(j, "restore");
  json_str(j, "state", rst_phase_name(rs->phase));
  json_str(j, "source", rs->hdr.flags & RESTORE_F_REPLICA ? "replica"
                                                          : "snapshot");
  json_u64(j, "snapshot", rs->hdr.source);
  json_u64(j, "safety_snapshot", rs->hdr.safety);
  json_u64(j, "total_bytes", rs->total_bytes);
  json_u64(j, "done_bytes", rs->done_bytes);
  json_u64(j, "remaining_bytes", left);
  json_u64(j, "fetched_bytes", rs->fetched_bytes);
  json_u64(j, "same_bytes", rs->same_bytes);
  json_bool(j, "instant", rst_instant(rs));
  json_u64(j, "on_demand_bytes", rs->demand_bytes);
  json_u64(j, "on_demand_fetches", rs->demand_fetches);
  json_u64(j, "rate_limit_bytes_per_sec", rs->hdr.rate);
  json_double(j, "done_percent", rs->phase == RST_DONE ? 100.0 : pct);
  json_double(j, "rate_bytes_per_sec", rate);
  if (rs->phase == RST_DONE)
    json_double(j, "eta_seconds", 0.0);
  else if (rs->phase == RST_COPY && rate > 0)
    json_double(j, "eta_seconds", (double)left / rate);
  else
    json_null(j, "eta_seconds");
  json_double(j, "seconds", ((rs->phase == RST_DONE ? rs->finished_ms : now) -
                             rs->started_ms) / 1000.0);
  json_bool(j, "resumed", rs->resumed);
  if (rs->error[0])
    json_str(j, "error", rs->error);
  else
    json_null(j, "error");
  json_obj_end(j);
}

void
restore_status_text(const struct primary *p, struct evbuffer *out)
{
  const struct restore *rs = p->restore;
  uint64_t now = util_now_ms(), left = 0;
  double pct = 0, rate;
  char src[64], done[32], total[32];

  if (rs == NULL)
    return;
  rst_source_text(rs, src, sizeof src);
  rate = rst_rate(rs, now);
  util_format_bytes(rs->done_bytes, done, sizeof done);
  util_format_bytes(rs->total_bytes, total, sizeof total);
  if (rs->phase == RST_DONE) {
    evbuffer_add_printf(out, "restore:      from %s done: %s in %.1f s\n",
                        src, done,
                        (rs->finished_ms - rs->started_ms) / 1000.0);
    return;
  }
  restore_status(p, &left, &pct);
  evbuffer_add_printf(out, "restore:      from %s, %s: %s of %s (%.1f%%)",
                      src, rst_phase_name(rs->phase), done, total, pct);
  if (rs->phase == RST_COPY && rate > 0)
    evbuffer_add_printf(out, ", ETA %.0f s", (double)left / rate);
  if (rst_instant(rs))
    evbuffer_add_printf(out, "; instant: NBD serves, %" PRIu64 " bytes "
                        "fetched on demand\n", rs->demand_bytes);
  else
    evbuffer_add_printf(out, "; NBD clients refused\n");
  if (rs->error[0])
    evbuffer_add_printf(out, "restore error: %s\n", rs->error);
}
