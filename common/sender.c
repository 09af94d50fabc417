/* Block sender (sender.h): send every block marked in a bitmap while the
 * source keeps changing.
 *
 * The source is walked in chunks of up to env.chunk bytes.  Each chunk
 * takes the range lock first, so no write to it is in flight while it is
 * read, and is put on the stream before the lock is released: any later
 * write to the range therefore follows it on the stream and wins on the
 * receiver, as it did at the source.  Inside the lock a large chunk is
 * split into holes (next_data/next_hole, sent as zero ranges without
 * reading) and data; a small one is read whole, since reading a hole
 * returns zeroes and two lseek calls cost more than reading 64 KiB.  Data
 * that reads as all zeroes is sent as zero ranges, in 4 KiB granules.  A
 * chunk's bits are cleared when it is sent and set again if the transport
 * drops before the receiver acknowledges it.
 *
 * Scattered 4 KiB changes make thousands of tiny chunks, so their per-chunk
 * cost is what a resync after an outage is made of: at most
 * SENDER_MAX_LOCKED chunks hold (or wait for) their range lock, which keeps
 * the lock list short and lets the first reads go out while later chunks
 * are still being started (the TLS stream then packs their small frames
 * into full records). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "blockdev.h"
#include "hash.h"
#include "lock.h"
#include "log.h"
#include "sender.h"
#include "util.h"

/* Default bytes read or unacknowledged (sender_env.window). */
#define SENDER_WINDOW (16u * 1024 * 1024)
/* Chunks in flight, a bound on their bookkeeping for scattered 4 KiB runs
 * (128 measured slower: the window is limited by acknowledgement latency). */
#define SENDER_MAX_CHUNKS 4096
#define SENDER_PROGRESS_MS 500
/* Chunks started and not yet read (they hold their range lock): the lock
 * set is a list, so this bounds the cost of every lock_acquire. */
#define SENDER_MAX_LOCKED 128
/* Chunks up to this size are read whole, without SEEK_DATA/SEEK_HOLE. */
#define SENDER_NO_PROBE (64u * 1024)
struct sender {
  struct sender_env env;
  uint64_t window;              /* env.window or SENDER_WINDOW */
  bool active;
  uint64_t gen;                 /* bumped by sender_abort */
  uint64_t cursor;
  uint64_t window_bytes;
  unsigned chunks;              /* chunks started and not yet freed */
  unsigned locked;              /* chunks holding or waiting for the lock */
  bool kicking;                 /* inside sender_kick */
  struct sender_counters ctr;
  uint64_t last_progress_ms;
};

struct chunk {
  struct sender *rs;
  uint64_t gen;
  uint64_t off, len;
  char *buf;
  struct range_lock *lock;
  uint64_t rd_off, rd_len;      /* the data extent being read */
  unsigned lock_holds;          /* steps that still need the range lock */
  unsigned out_refs;            /* pieces of buf still in the output buffer */
  unsigned pending;             /* piece ops unacknowledged, +1 until the
                                   chunk is read and all of it sent */
  bool compare;                 /* compare with the receiver's hashes */
};

/* One frame of a chunk on the transport. */
struct piece {
  struct sender_op op;
  struct chunk *c;
  uint64_t off, len;
};

static void sender_check_done(struct sender *rs);

struct sender *
sender_new(const struct sender_env *env)
{
  struct sender *rs = calloc(1, sizeof *rs);
  if (!rs)
    abort();
  rs->env = *env;
  rs->window = env->window ? MAX(env->window, env->chunk) : SENDER_WINDOW;
  return rs;
}

void
sender_free(struct sender *rs)
{
  free(rs);
}

bool
sender_active(const struct sender *rs)
{
  return rs->active;
}

unsigned
sender_chunks(const struct sender *rs)
{
  return rs->chunks;
}

void
sender_get_counters(const struct sender *rs, struct sender_counters *c)
{
  *c = rs->ctr;
}

static void
sender_report(struct sender *rs, bool force)
{
  uint64_t now = util_now_ms();
  if (!rs->active ||
      (!force && now - rs->last_progress_ms < SENDER_PROGRESS_MS))
    return;
  rs->last_progress_ms = now;
  rs->env.tp.progress(rs->env.tp.arg, rs->ctr.total_bytes,
                      rs->ctr.done_bytes, bitmap_dirty_bytes(rs->env.todo));
}

static void
chunk_put(struct chunk *c)
{
  struct sender *rs = c->rs;
  if (--c->pending > 0)
    return;
  if (c->out_refs > 0)
    return; /* freed when the last piece has left the output buffer */
  free(c->buf);
  free(c);
  rs->chunks--;
  sender_kick(rs);
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
piece_acked(struct sender_op *op, bool ok)
{
  struct piece *pc = (struct piece *)op;
  struct chunk *c = pc->c;
  struct sender *rs = c->rs;

  rs->window_bytes -= pc->len;
  if (ok) {
    if (c->gen == rs->gen)
      rs->ctr.done_bytes += pc->len;
  } else {
    bitmap_set_range(rs->env.todo, pc->off, pc->len);
  }
  free(pc);
  chunk_put(c);
}

/* Send [off, off+len) of the chunk, as data (buf != NULL) or as zeroes.
 * The window bytes of the piece are released when it is acknowledged. */
static void
piece_send(struct chunk *c, uint64_t off, uint64_t len, const char *buf)
{
  struct sender *rs = c->rs;
  const struct sender_env *p = &rs->env;
  struct piece *pc;
  int rc;

  if (c->gen != rs->gen || !p->tp.connected(p->tp.arg)) {
    bitmap_set_range(p->todo, off, len);
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
    rc = p->tp.send_data(p->tp.arg, &pc->op, off, (uint32_t)len, buf,
                         chunk_ref_done, c);
    if (rc == 0) {
      rs->ctr.data_bytes_sent += len;
      if (c->compare)
        rs->ctr.compared_sent_bytes += len;
    } else {
      c->out_refs--;
    }
  } else {
    rc = p->tp.send_zero(p->tp.arg, &pc->op, off, len);
    if (rc == 0)
      rs->ctr.zero_bytes_sent += len;
    if (rc == 0 && c->compare)
      rs->ctr.compared_sent_bytes += len;
  }
  if (rc == -1) {
    free(pc);
    bitmap_set_range(p->todo, off, len);
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
  struct sender *rs = c->rs;

  if (--c->lock_holds > 0)
    return;
  if (c->lock) {
    struct range_lock *l = c->lock;
    c->lock = NULL;
    lock_release(rs->env.locks, l);
  }
  rs->locked--;
  sender_kick(rs);
}

static uint64_t
sender_zero_hash(void)
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
                     const char *buf, bool ok, const struct sender_op *res)
{
  struct sender *rs = c->rs;
  uint64_t k, start = 0, n = len / BDEV_ALIGN, zh = sender_zero_hash();
  bool start_same = false;

  if (!ok || !res->hashes || res->n_hashes != n || c->gen != rs->gen) {
    if (ok && c->gen == rs->gen && rs->env.tp.connected(rs->env.tp.arg)) {
      if (buf)
        chunk_send_data(c, off, len, buf);
      else
        piece_send(c, off, len, NULL);
    } else {
      bitmap_set_range(rs->env.todo, off, len);
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
      rs->ctr.same_bytes += l;
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

/* A range whose blocks are compared with the receiver's before they are
 * sent: data read into buf, or a hole (buf NULL) of which only blocks the
 * receiver does not hold as zeroes are sent (as zero ranges).  It holds the
 * range lock until the answer has put the differing blocks on the stream. */
struct compare {
  struct sender_op op;
  struct chunk *c;
  uint64_t off, len;
  const char *buf;
};

static void
compared(struct sender_op *op, bool ok)
{
  struct compare *cmp = (struct compare *)op;
  struct chunk *c = cmp->c;

  chunk_send_differing(c, cmp->off, cmp->len, cmp->buf, ok, op);
  free(cmp);
  chunk_unlock(c);
  chunk_put(c);
}

/* Ask for the receiver's hashes of [off, off+len) (the chunk's data in
 * buf, or a hole); 0 if the request went out (it takes a reference; its
 * answer sends what differs and drops that and one lock hold, which the
 * caller provides), -1 if the caller must send the range as it is. */
static int
chunk_compare(struct chunk *c, uint64_t off, uint64_t len, const char *buf)
{
  const struct sender_transport *tp = &c->rs->env.tp;
  struct compare *cmp = calloc(1, sizeof *cmp);

  if (!cmp)
    abort();
  cmp->c = c;
  cmp->off = off;
  cmp->len = len;
  cmp->buf = buf;
  cmp->op.acked = compared;
  if (tp->ask_hashes(tp->arg, &cmp->op, off, (uint32_t)len) == -1) {
    free(cmp);
    return -1;
  }
  c->pending++;
  return 0;
}

static void
chunk_read_done(void *cookie, long res)
{
  struct chunk *c = cookie;
  struct sender *rs = c->rs;

  if (res < 0 || (uint64_t)res != c->rd_len) {
    /* The blocks stay marked.  Retrying at once would spin on a bad
     * sector: this run stops (chunks in flight put their bits back) and the
     * next one (a reconnect, new writes) tries again. */
    if (c->gen == rs->gen) {
      log_error("%s: %s: read of %" PRIu64 " bytes at %" PRIu64 " to send "
                "them failed: %s; %s stopped, the blocks stay marked and "
                "are sent by the next one", rs->env.who, rs->env.src.name,
                c->rd_len, c->rd_off,
                res < 0 ? strerror((int)-res) : "short read",
                rs->ctr.full ? "initial sync" : "resync");
      rs->ctr.read_errors++;
      rs->active = false;
      rs->gen++;
    }
    bitmap_set_range(rs->env.todo, c->rd_off, c->rd_len);
    rs->window_bytes -= c->rd_len;
  } else if (c->compare && c->gen == rs->gen &&
             chunk_compare(c, c->rd_off, c->rd_len, c->buf) == 0) {
    /* The read's lock hold passes to the comparison. */
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
  const struct sender_env *p = &c->rs->env;

  c->buf = util_alloc_aligned(end - pos);
  c->rd_off = pos;
  c->rd_len = end - pos;
  c->lock_holds++;
  c->pending++; /* the read may complete inside the call */
  p->src.read(p->src.arg, pos, end - pos, c->buf, chunk_read_done, c);
  chunk_unlock(c); /* chunk_locked's own hold; chunk_read_done drops the
                      read's */
  chunk_put(c);
}

/* Under the range lock: holes go out as zero ranges at once, the data
 * extent (at most one per chunk; the rest of the chunk is put back into the
 * bitmap) is read and sent when the read completes. */
static void
chunk_locked(struct range_lock *l, void *opaque)
{
  struct chunk *c = opaque;
  struct sender *rs = c->rs;
  const struct sender_env *p = &rs->env;
  uint64_t pos = c->off, end = c->off + c->len;

  (void)l;
  if (c->len <= SENDER_NO_PROBE || !p->src.next_data) {
    chunk_read(c, pos, end);
    return;
  }
  while (pos < end) {
    uint64_t data = p->src.next_data(p->src.arg, pos);
    uint64_t dend;
    if (data > pos) {
      uint64_t hend = MIN(end, data - (data % BDEV_ALIGN));
      if (hend > pos) {
        c->lock_holds++;
        if (!c->compare || chunk_compare(c, pos, hend - pos, NULL)) {
          c->lock_holds--;
          piece_send(c, pos, hend - pos, NULL);
        }
        pos = hend;
        continue;
      }
    }
    dend = MIN(end, p->src.next_hole(p->src.arg, pos));
    dend = (dend + BDEV_ALIGN - 1) & ~(uint64_t)(BDEV_ALIGN - 1);
    dend = MIN(MAX(dend, pos + BDEV_ALIGN), end);
    if (dend < end) {
      /* Another extent follows: it is synced by a later chunk. */
      bitmap_set_range(p->todo, dend, end - dend);
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
sender_start_chunk(struct sender *rs, uint64_t off, uint64_t len)
{
  const struct sender_env *p = &rs->env;
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
  c->compare = p->compare_range ? p->compare_range(p->arg, off, len)
                                : rs->ctr.compared;
  rs->chunks++;
  rs->locked++;
  bitmap_clear_range(p->todo, off, len);
  rs->window_bytes += len;
  if (!p->locks) {
    chunk_locked(NULL, c);
    return;
  }
  c->lock = lock_acquire(p->locks, off, off + len, chunk_locked, c, &granted);
  if (granted)
    chunk_locked(c->lock, c);
}

void
sender_kick(struct sender *rs)
{
  const struct sender_env *p = &rs->env;

  /* A chunk may finish inside sender_start_chunk (a hole, a failed send)
   * and kick again: the loop below already goes on, do not nest. */
  if (rs->kicking)
    return;
  rs->kicking = true;
  while (rs->active && p->tp.connected(p->tp.arg) &&
         rs->window_bytes + rs->env.chunk <= rs->window &&
         rs->chunks < SENDER_MAX_CHUNKS && rs->locked < SENDER_MAX_LOCKED) {
    uint64_t off, len;
    if (!bitmap_next_run(p->todo, rs->cursor, rs->env.chunk, &off, &len)) {
      if (rs->cursor == 0 || !bitmap_next_run(p->todo, 0, rs->env.chunk, &off,
                                              &len))
        break;
    }
    rs->cursor = off + len;
    sender_start_chunk(rs, off, len);
  }
  rs->kicking = false;
  sender_check_done(rs);
}

static void
sender_check_done(struct sender *rs)
{
  uint64_t ms;

  if (!rs->active)
    return;
  if (rs->window_bytes > 0 || bitmap_dirty_bytes(rs->env.todo) > 0) {
    sender_report(rs, false);
    return;
  }
  rs->active = false;
  rs->ctr.ever_completed = true;
  rs->ctr.finished_ms = util_now_ms();
  ms = rs->ctr.finished_ms - rs->ctr.started_ms;
  log_msg(rs->env.quiet ? LOG_LVL_DEBUG : LOG_LVL_INFO,
          "%s: %s complete: %" PRIu64 " bytes in %.1f s (%.1f MiB/s), "
           "%" PRIu64 " sent as data, %" PRIu64 " as zero ranges", rs->env.who,
           rs->ctr.full ? "initial sync" : "resync", rs->ctr.total_bytes,
           ms / 1000.0,
           ms ? rs->ctr.total_bytes / 1048576.0 / (ms / 1000.0) : 0.0,
           rs->ctr.data_bytes_sent, rs->ctr.zero_bytes_sent);
  rs->env.complete(rs->env.arg);
}

void
sender_begin(struct sender *rs, bool full)
{
  const struct sender_env *p = &rs->env;

  if (full)
    bitmap_set_all(p->todo);
  rs->active = true;
  rs->cursor = 0;
  rs->ctr.full = full;
  rs->ctr.total_bytes = bitmap_dirty_bytes(p->todo);
  rs->ctr.done_bytes = 0;
  rs->ctr.data_bytes_sent = 0;
  rs->ctr.same_bytes = 0;
  rs->ctr.compared_sent_bytes = 0;
  rs->ctr.zero_bytes_sent = 0;
  rs->ctr.started_ms = util_now_ms();
  rs->ctr.compared = p->compare && p->compare(p->arg);
  log_msg(p->quiet ? LOG_LVL_DEBUG : LOG_LVL_INFO,
          "%s: %s of %" PRIu64 " bytes to %s started", p->who,
           full ? "initial sync" : "resync", rs->ctr.total_bytes, p->peer);
  sender_report(rs, true);
  sender_kick(rs);
}

void
sender_abort(struct sender *rs)
{
  if (rs->active)
    log_msg(rs->env.quiet ? LOG_LVL_DEBUG : LOG_LVL_INFO,
            "%s: resync interrupted at %" PRIu64 " of %" PRIu64 " bytes",
             rs->env.who, rs->ctr.done_bytes, rs->ctr.total_bytes);
  rs->active = false;
  rs->gen++;
}
