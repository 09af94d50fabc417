/* Initial sync and resync: send every block marked in the out-of-sync
 * bitmap to the secondary while clients keep writing.
 *
 * The volume is walked in chunks of up to RESYNC_CHUNK bytes.  Each chunk
 * takes the range lock first, so no client write to it is in flight while it
 * is read, and is put on the stream before the lock is released: any later
 * client write to the range therefore follows it on the stream and wins on
 * the replica, as it did locally.  Inside the lock a large chunk is split
 * into holes (SEEK_DATA/SEEK_HOLE, sent as zero ranges without reading) and
 * data; a small one is read whole, since reading a hole returns zeroes and
 * two lseek calls cost more than reading 64 KiB.  Data that reads as all
 * zeroes is sent as zero ranges, in 4 KiB granules.  A chunk's bits are
 * cleared when it is sent and set again if the link drops before the
 * secondary acknowledges it.
 *
 * Scattered 4 KiB changes make thousands of tiny chunks, so their per-chunk
 * cost is what a resync after an outage is made of: at most
 * RESYNC_MAX_LOCKED chunks hold (or wait for) their range lock, which keeps
 * the lock list short and lets the first reads go out while later chunks
 * are still being started (the TLS stream then packs their small frames
 * into full records). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "internal.h"
#include "log.h"

#define RESYNC_WINDOW (16u * 1024 * 1024) /* bytes read or unacknowledged */
/* Chunks in flight, a bound on their bookkeeping for scattered 4 KiB runs
 * (128 measured slower: the window is limited by acknowledgement latency). */
#define RESYNC_MAX_CHUNKS 4096
#define RESYNC_PROGRESS_MS 500
/* Chunks started and not yet read (they hold their range lock): the lock
 * set is a list, so this bounds the cost of every lock_acquire. */
#define RESYNC_MAX_LOCKED 128
/* Chunks up to this size are read whole, without SEEK_DATA/SEEK_HOLE. */
#define RESYNC_NO_PROBE (64u * 1024)
struct resync {
  struct resync_env env;
  bool active;
  uint64_t gen;                 /* bumped by resync_abort */
  uint64_t cursor;
  uint64_t window_bytes;
  unsigned chunks;              /* chunks started and not yet freed */
  unsigned locked;              /* chunks holding or waiting for the lock */
  bool kicking;                 /* inside resync_kick */
  struct resync_counters ctr;
  struct event *progress;
  uint64_t last_progress_ms;
};

struct chunk {
  struct resync *rs;
  uint64_t gen;
  uint64_t off, len;
  char *buf;
  struct range_lock *lock;
  struct aio_op aio;
  uint64_t rd_off, rd_len;      /* the data extent being read */
  unsigned lock_holds;          /* steps that still need the range lock */
  unsigned out_refs;            /* pieces of buf still in the output buffer */
  unsigned pending;             /* piece ops unacknowledged, +1 until the
                                   chunk is read and all of it sent */
};

/* One frame of a chunk on the link. */
struct piece {
  struct repl_op op;
  struct chunk *c;
  uint64_t off, len;
};

static void resync_check_done(struct resync *rs);

/* The secondary adopted our generation: it is in sync, our bitmap no
 * longer tracks a divergence. */
void
resync_in_sync_acked(struct resync *rs)
{
  rs->env.in_sync(rs->env.arg);
  rs->ctr.in_sync_confirmed = true;
}

void
resync_unconfirm(struct resync *rs)
{
  rs->ctr.in_sync_confirmed = false;
}

static void
resync_done_acked(struct repl_op *op, bool ok)
{
  struct resync *rs = op->opaque;

  free(op);
  if (ok)
    resync_in_sync_acked(rs);
}

struct resync *
resync_new(const struct resync_env *env)
{
  struct resync *rs = calloc(1, sizeof *rs);
  if (!rs)
    abort();
  rs->env = *env;
  return rs;
}

void
resync_free(struct resync *rs)
{
  free(rs);
}

bool
resync_active(const struct resync *rs)
{
  return rs->active;
}

void
resync_get_counters(const struct resync *rs, struct resync_counters *c)
{
  *c = rs->ctr;
}

static void
resync_report(struct resync *rs, bool force)
{
  uint64_t now = util_now_ms();
  /* Progress only: completion goes out as an acknowledged op. */
  if (!rs->active || (!force && now - rs->last_progress_ms < RESYNC_PROGRESS_MS))
    return;
  rs->last_progress_ms = now;
  repl_send_sync_state(rs->env.repl, false, rs->ctr.total_bytes,
                       rs->ctr.done_bytes, bitmap_dirty_bytes(rs->env.oos));
}

static void
chunk_put(struct chunk *c)
{
  struct resync *rs = c->rs;
  if (--c->pending > 0)
    return;
  if (c->out_refs > 0)
    return; /* freed when the last piece has left the output buffer */
  free(c->buf);
  free(c);
  rs->chunks--;
  resync_kick(rs);
}

/* A piece of c->buf was written out (or dropped with the link).  It is
 * acknowledged only after it was sent, so normally pending > 0 here; the
 * chunk is freed here only if the link dropped first. */
static void
chunk_ref_done(const void *data, size_t len, void *arg)
{
  struct chunk *c = arg;
  (void)data;
  (void)len;
  if (--c->out_refs == 0 && c->pending == 0) {
    c->rs->chunks--;
    free(c->buf);
    free(c);
  }
}

static void
piece_acked(struct repl_op *op, bool ok)
{
  struct piece *pc = (struct piece *)op;
  struct chunk *c = pc->c;
  struct resync *rs = c->rs;

  rs->window_bytes -= pc->len;
  if (ok) {
    if (c->gen == rs->gen)
      rs->ctr.done_bytes += pc->len;
  } else {
    bitmap_set_range(rs->env.oos, pc->off, pc->len);
  }
  free(pc);
  chunk_put(c);
}

/* Send [off, off+len) of the chunk, as data (buf != NULL) or as zeroes.
 * The window bytes of the piece are released when it is acknowledged. */
static void
piece_send(struct chunk *c, uint64_t off, uint64_t len, const char *buf)
{
  struct resync *rs = c->rs;
  const struct resync_env *p = &rs->env;
  struct piece *pc;
  int rc;

  if (c->gen != rs->gen || !repl_connected(p->repl)) {
    bitmap_set_range(p->oos, off, len);
    rs->window_bytes -= len;
    return;
  }
  pc = calloc(1, sizeof *pc);
  if (!pc)
    abort();
  pc->c = c;
  pc->off = off;
  pc->len = len;
  pc->op.acked = piece_acked;
  if (buf) {
    /* The reference is taken first: a small piece is copied and released
     * inside the call (the chunk's pending count keeps it alive). */
    c->out_refs++;
    rc = repl_send_write_ref(p->repl, &pc->op, off, (uint32_t)len, buf,
                             DUPLEX__OP_FLAG__OP_FLAG_RESYNC, chunk_ref_done,
                             c);
    if (rc == 0)
      rs->ctr.data_bytes_sent += len;
    else
      c->out_refs--;
  } else {
    rc = repl_send_zero(p->repl, &pc->op, off, len,
                        DUPLEX__OP_FLAG__OP_FLAG_RESYNC |
                            DUPLEX__OP_FLAG__OP_FLAG_PUNCH);
    if (rc == 0)
      rs->ctr.zero_bytes_sent += len;
  }
  if (rc == -1) {
    free(pc);
    bitmap_set_range(p->oos, off, len);
    rs->window_bytes -= len;
    return;
  }
  c->pending++;
}

/* Split data read at [off, off+len) into runs of zero and non-zero 4 KiB
 * blocks and send each run. */
static void
chunk_send_data(struct chunk *c, uint64_t off, uint64_t len, const char *buf)
{
  uint64_t pos = 0;
  while (pos < len) {
    bool zero = util_is_zero(buf + pos, MIN(BDEV_ALIGN, len - pos));
    uint64_t end = pos + BDEV_ALIGN;
    while (end < len &&
           util_is_zero(buf + end, MIN(BDEV_ALIGN, len - end)) == zero)
      end += BDEV_ALIGN;
    end = MIN(end, len);
    piece_send(c, off + pos, end - pos, zero ? NULL : buf + pos);
    pos = end;
  }
}

/* Drop one hold on the chunk's range lock: the lock stays until the chunk's
 * read and every checksum comparison have put their frames on the stream.
 * Its release makes room for another chunk to start. */
static void
chunk_unlock(struct chunk *c)
{
  struct resync *rs = c->rs;

  if (--c->lock_holds > 0)
    return;
  if (c->lock) {
    struct range_lock *l = c->lock;
    c->lock = NULL;
    rs->locked--;
    lock_release(rs->env.locks, l);
    resync_kick(rs);
  }
}

static bool
resync_use_checksums(const struct resync *rs)
{
  return rs->env.checksums || rs->env.crash_recovery(rs->env.arg);
}

static void chunk_send_data(struct chunk *c, uint64_t off, uint64_t len,
                            const char *buf);

static uint64_t
resync_zero_hash(void)
{
  static uint64_t h;
  static bool have;
  if (!have) {
    static const char zero[BDEV_ALIGN];
    h = hash_block(zero, sizeof zero);
    have = true;
  }
  return h;
}

/* Send the blocks of [off, off+len) whose hash differs from the
 * secondary's (`res`), as data from buf, or as zero ranges when buf is NULL
 * (a hole); equal blocks only count as done.  Each local hash is computed
 * once.  Without a usable answer the whole range is sent, or, if the link
 * or this resync is gone, put back into the bitmap. */
static void
chunk_send_differing(struct chunk *c, uint64_t off, uint64_t len,
                     const char *buf, bool ok, const Duplex__VerifyResult *res)
{
  struct resync *rs = c->rs;
  uint64_t k, start = 0, n = len / BDEV_ALIGN, zh = resync_zero_hash();
  bool start_same = false;

  if (!ok || !res || res->error || res->n_hashes != n || c->gen != rs->gen) {
    if (ok && c->gen == rs->gen && repl_connected(rs->env.repl)) {
      if (buf)
        chunk_send_data(c, off, len, buf);
      else
        piece_send(c, off, len, NULL);
    } else {
      bitmap_set_range(rs->env.oos, off, len);
      rs->window_bytes -= len;
    }
    return;
  }
  for (k = 0; k <= n; k++) {
    bool same = k < n &&
        res->hashes[k] == (buf ? hash_block(buf + k * BDEV_ALIGN, BDEV_ALIGN)
                               : zh);
    if (k == 0) {
      start_same = same;
      continue;
    }
    if (k < n && same == start_same)
      continue;
    /* The run [start, k) ends here. */
    if (start_same) {
      uint64_t l = (k - start) * BDEV_ALIGN;
      rs->window_bytes -= l;
      rs->ctr.done_bytes += l;
      rs->ctr.checksum_same_bytes += l;
    } else if (buf) {
      chunk_send_data(c, off + start * BDEV_ALIGN, (k - start) * BDEV_ALIGN,
                      buf + start * BDEV_ALIGN);
    } else {
      piece_send(c, off + start * BDEV_ALIGN, (k - start) * BDEV_ALIGN, NULL);
    }
    start = k;
    start_same = same;
  }
}

/* A hole checked by checksum: only blocks the secondary does not hold as
 * zeroes are sent (as zero ranges). */
struct hole_check {
  struct repl_op op;
  struct chunk *c;
  uint64_t off, len;
};


static void chunk_unlock(struct chunk *c);

static void
hole_checked(struct repl_op *op, bool ok)
{
  struct hole_check *hc = (struct hole_check *)op;
  struct chunk *c = hc->c;

  chunk_send_differing(c, hc->off, hc->len, NULL, ok, op->verify_result);
  free(hc);
  chunk_unlock(c);
  chunk_put(c);
}

/* Ask for the secondary's hashes of a hole; false if it went out (the
 * answer sends what differs), true if the caller must send it as is. */
static bool
chunk_check_hole(struct chunk *c, uint64_t off, uint64_t len)
{
  struct hole_check *hc = calloc(1, sizeof *hc);
  if (!hc)
    abort();
  hc->c = c;
  hc->off = off;
  hc->len = len;
  hc->op.acked = hole_checked;
  if (repl_send_verify(c->rs->env.repl, &hc->op, off, (uint32_t)len) == -1) {
    free(hc);
    return true;
  }
  c->pending++;
  c->lock_holds++;
  return false;
}

/* --resync-checksums (DRBD's csums-alg): the secondary hashes the blocks it
 * has; only blocks whose hash differs travel. */
static void
chunk_checksums(struct repl_op *op, bool ok)
{
  struct chunk *c = op->opaque;

  chunk_send_differing(c, c->rd_off, c->rd_len, c->buf, ok,
                       op->verify_result);
  free(op);
  chunk_unlock(c);
  chunk_put(c);
}

static int
chunk_ask_checksums(struct chunk *c)
{
  struct repl_op *op = calloc(1, sizeof *op);
  if (!op)
    abort();
  op->acked = chunk_checksums;
  op->opaque = c;
  if (repl_send_verify(c->rs->env.repl, op, c->rd_off, (uint32_t)c->rd_len)
      == -1) {
    free(op);
    return -1;
  }
  c->pending++;
  return 0;
}

static void
chunk_read_done(struct aio_op *op, long res)
{
  struct chunk *c = op->opaque;
  struct resync *rs = c->rs;

  if (res < 0) {
    log_error("primary: volume %s: resync read at %" PRIu64 ": %s",
              rs->env.vol->path, c->rd_off, strerror((int)-res));
    bitmap_set_range(rs->env.oos, c->rd_off, c->rd_len);
    rs->window_bytes -= c->rd_len;
  } else if (resync_use_checksums(rs) && c->gen == rs->gen &&
             chunk_ask_checksums(c) == 0) {
    /* The lock stays held until the differing blocks are on the stream. */
    chunk_put(c);
    return;
  } else {
    chunk_send_data(c, c->rd_off, c->rd_len, c->buf);
  }
  chunk_unlock(c);
  chunk_put(c);
}

/* Under the range lock: read [pos, end) and send it when the read
 * completes.  The chunk's opening reference now belongs to the read. */
static void
chunk_read(struct chunk *c, uint64_t pos, uint64_t end)
{
  const struct resync_env *p = &c->rs->env;

  c->buf = util_alloc_aligned(end - pos);
  c->rd_off = pos;
  c->rd_len = end - pos;
  c->lock_holds++;
  aio_pread(p->aio, &c->aio, p->vol->fd, c->buf, end - pos, pos,
            chunk_read_done, c);
  chunk_unlock(c); /* chunk_locked's own hold; chunk_read_done drops the
                      read's */
}

/* Under the range lock: holes go out as zero ranges at once, the data
 * extent (at most one per chunk; the rest of the chunk is put back into the
 * bitmap) is read and sent when the read completes. */
static void
chunk_locked(struct range_lock *l, void *opaque)
{
  struct chunk *c = opaque;
  struct resync *rs = c->rs;
  const struct resync_env *p = &rs->env;
  uint64_t pos = c->off, end = c->off + c->len;

  (void)l;
  if (c->len <= RESYNC_NO_PROBE) {
    chunk_read(c, pos, end);
    return;
  }
  while (pos < end) {
    uint64_t data = bdev_next_data(p->vol, pos);
    uint64_t dend;
    if (data > pos) {
      uint64_t hend = MIN(end, data - (data % BDEV_ALIGN));
      if (hend > pos) {
        if (!resync_use_checksums(rs) || chunk_check_hole(c, pos, hend - pos))
          piece_send(c, pos, hend - pos, NULL);
        pos = hend;
        continue;
      }
    }
    dend = MIN(end, bdev_next_hole(p->vol, pos));
    dend = (dend + BDEV_ALIGN - 1) & ~(uint64_t)(BDEV_ALIGN - 1);
    dend = MIN(MAX(dend, pos + BDEV_ALIGN), end);
    if (dend < end) {
      /* Another extent follows: it is synced by a later chunk. */
      bitmap_set_range(p->oos, dend, end - dend);
      rs->window_bytes -= end - dend;
      if (rs->cursor > dend)
        rs->cursor = dend;
    }
    chunk_read(c, pos, dend);
    return;
  }
  chunk_unlock(c);
  chunk_put(c);
}

static void
resync_start_chunk(struct resync *rs, uint64_t off, uint64_t len)
{
  const struct resync_env *p = &rs->env;
  struct chunk *c = calloc(1, sizeof *c);
  bool granted;

  if (!c)
    abort();
  c->rs = rs;
  c->gen = rs->gen;
  c->off = off;
  c->len = len;
  c->pending = 1;
  c->lock_holds = 1;
  rs->chunks++;
  rs->locked++;
  bitmap_clear_range(p->oos, off, len);
  rs->window_bytes += len;
  c->lock = lock_acquire(p->locks, off, off + len, chunk_locked, c, &granted);
  if (granted)
    chunk_locked(c->lock, c);
}

void
resync_kick(struct resync *rs)
{
  const struct resync_env *p = &rs->env;

  /* A chunk may finish inside resync_start_chunk (a hole, a failed send)
   * and kick again: the loop below already goes on, do not nest. */
  if (rs->kicking)
    return;
  rs->kicking = true;
  while (rs->active && repl_connected(p->repl) &&
         rs->window_bytes + RESYNC_CHUNK <= RESYNC_WINDOW &&
         rs->chunks < RESYNC_MAX_CHUNKS && rs->locked < RESYNC_MAX_LOCKED) {
    uint64_t off, len;
    if (!bitmap_next_run(p->oos, rs->cursor, RESYNC_CHUNK, &off, &len)) {
      if (rs->cursor == 0 || !bitmap_next_run(p->oos, 0, RESYNC_CHUNK, &off,
                                              &len))
        break;
    }
    rs->cursor = off + len;
    resync_start_chunk(rs, off, len);
  }
  rs->kicking = false;
  resync_check_done(rs);
}

static void
resync_check_done(struct resync *rs)
{
  uint64_t ms;

  if (!rs->active)
    return;
  if (rs->window_bytes > 0 || bitmap_dirty_bytes(rs->env.oos) > 0) {
    resync_report(rs, false);
    return;
  }
  rs->active = false;
  rs->ctr.ever_completed = true;
  rs->ctr.finished_ms = util_now_ms();
  ms = rs->ctr.finished_ms - rs->ctr.started_ms;
  log_info("primary: %s complete: %" PRIu64 " bytes in %.1f s (%.1f MiB/s), "
           "%" PRIu64 " sent as data, %" PRIu64 " as zero ranges",
           rs->ctr.full ? "initial sync" : "resync", rs->ctr.total_bytes,
           ms / 1000.0,
           ms ? rs->ctr.total_bytes / 1048576.0 / (ms / 1000.0) : 0.0,
           rs->ctr.data_bytes_sent, rs->ctr.zero_bytes_sent);
  /* During a restore the replica is in sync only once the restore is
   * done: restore.c says so then. */
  if (rs->env.hold_in_sync(rs->env.arg))
    return;
  {
    struct repl_op *op = calloc(1, sizeof *op);
    if (!op)
      abort();
    op->acked = resync_done_acked;
    op->opaque = rs;
    if (repl_send_sync_done(rs->env.repl, op, false) == -1)
      free(op);
  }
}

void
resync_begin(struct resync *rs, bool full)
{
  const struct resync_env *p = &rs->env;

  if (full)
    bitmap_set_all(p->oos);
  rs->active = true;
  rs->cursor = 0;
  rs->ctr.full = full;
  rs->ctr.total_bytes = bitmap_dirty_bytes(p->oos);
  rs->ctr.done_bytes = 0;
  rs->ctr.data_bytes_sent = 0;
  rs->ctr.checksum_same_bytes = 0;
  rs->ctr.zero_bytes_sent = 0;
  rs->ctr.started_ms = util_now_ms();
  rs->ctr.in_sync_confirmed = false;
  rs->ctr.crash_recovery = p->crash_recovery(p->arg);
  log_info("primary: %s of %" PRIu64 " bytes to the secondary started",
           full ? "initial sync" : "resync", rs->ctr.total_bytes);
  resync_report(rs, true);
  resync_kick(rs);
}

void
resync_ensure(struct resync *rs)
{
  if (rs->active)
    resync_kick(rs);
  else if (bitmap_dirty_bytes(rs->env.oos))
    resync_begin(rs, false);
}

void
resync_abort(struct resync *rs)
{
  if (rs->active)
    log_info("primary: resync interrupted at %" PRIu64 " of %" PRIu64
             " bytes", rs->ctr.done_bytes, rs->ctr.total_bytes);
  rs->active = false;
  rs->gen++;
}
