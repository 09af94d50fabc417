/* Unit tests for common/sender.c, hosted outside either agent: an
 * in-memory source (with holes, reads completed when the test says so or
 * inside the call) and a fake transport that applies frames in order to a
 * receiver buffer when the test acknowledges them, or drops them with the
 * link.  Every test compares the receiver's bytes with the source's and
 * counts what travelled. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bitmap.h"
#include "blockdev.h"
#include "hash.h"
#include "lock.h"
#include "sender.h"
#include "util.h"

#define VOL (8u * 1024 * 1024)
#define BLK 4096u
#define NBLK (VOL / BLK)
#define MAXQ 8192

enum frame_type { F_DATA, F_ZERO, F_HASH };

struct frame {
  enum frame_type type;
  struct sender_op *op;
  uint64_t off, len;
  char *data;                   /* F_DATA: a copy */
};

struct read_req {
  uint64_t off, len;
  void *buf;
  sender_read_done_fn done;
  void *cookie;
};

struct fx {
  /* source */
  char *src;
  bool hole[NBLK];              /* reads as zero, reported as a hole */
  bool sync_reads;              /* complete reads inside the call */
  int fail_read_at;             /* -1, or the read number that fails */
  unsigned n_reads;
  struct read_req reads[MAXQ];
  unsigned n_pending_reads;
  /* transport */
  bool connected;
  struct frame q[MAXQ];
  unsigned qh, qt;              /* queued, unacknowledged: [qh, qt) */
  char *rcv;
  uint64_t *hashes;             /* answer buffer of the current F_HASH */
  uint64_t data_bytes, zero_bytes, hash_asks, frames;
  unsigned progress_calls;
  /* the sender */
  struct bitmap *todo;
  struct lockset *locks;
  struct sender *s;
  bool compare;
  unsigned completes;
};

static void
src_read(void *arg, uint64_t off, uint64_t len, void *buf,
         sender_read_done_fn done, void *cookie)
{
  struct fx *f = arg;
  struct read_req *r;

  assert_int_equal(off % BLK, 0);
  assert_int_equal(len % BLK, 0);
  assert_true(off + len <= VOL);
  assert_int_equal((uintptr_t)buf % BDEV_ALIGN, 0);
  if (f->sync_reads) {
    memcpy(buf, f->src + off, len);
    done(cookie, (long)len);
    return;
  }
  assert_true(f->n_pending_reads < MAXQ);
  r = &f->reads[f->n_pending_reads++];
  r->off = off;
  r->len = len;
  r->buf = buf;
  r->done = done;
  r->cookie = cookie;
}

static uint64_t
src_next_data(void *arg, uint64_t off)
{
  struct fx *f = arg;
  uint64_t b;
  for (b = off / BLK; b < NBLK && f->hole[b]; b++)
    ;
  return b < NBLK ? MAX(off, b * BLK) : VOL;
}

static uint64_t
src_next_hole(void *arg, uint64_t off)
{
  struct fx *f = arg;
  uint64_t b;
  for (b = off / BLK; b < NBLK && !f->hole[b]; b++)
    ;
  return b < NBLK ? MAX(off, b * BLK) : VOL;
}

static bool
tp_connected(void *arg)
{
  return ((struct fx *)arg)->connected;
}

static struct frame *
tp_push(struct fx *f, enum frame_type t, struct sender_op *op, uint64_t off,
        uint64_t len)
{
  struct frame *fr;
  assert_true(f->qt < MAXQ);
  fr = &f->q[f->qt++];
  fr->type = t;
  fr->op = op;
  fr->off = off;
  fr->len = len;
  fr->data = NULL;
  f->frames++;
  return fr;
}

static int
tp_send_data(void *arg, struct sender_op *op, uint64_t off, uint32_t len,
             const void *data, sender_ref_done_fn ref_done, void *ref_arg)
{
  struct fx *f = arg;
  struct frame *fr;

  if (!f->connected)
    return -1;
  assert_int_equal(off % BLK, 0);
  assert_int_equal(len % BLK, 0);
  fr = tp_push(f, F_DATA, op, off, len);
  fr->data = malloc(len);
  assert_non_null(fr->data);
  memcpy(fr->data, data, len);
  /* Written out at once, like a small frame copied into the output. */
  ref_done(data, len, ref_arg);
  f->data_bytes += len;
  return 0;
}

static int
tp_send_zero(void *arg, struct sender_op *op, uint64_t off, uint64_t len)
{
  struct fx *f = arg;
  if (!f->connected)
    return -1;
  tp_push(f, F_ZERO, op, off, len);
  f->zero_bytes += len;
  return 0;
}

static int
tp_ask_hashes(void *arg, struct sender_op *op, uint64_t off, uint32_t len)
{
  struct fx *f = arg;
  if (!f->connected)
    return -1;
  tp_push(f, F_HASH, op, off, len);
  f->hash_asks++;
  return 0;
}

static void
tp_progress(void *arg, uint64_t total, uint64_t done, uint64_t remaining)
{
  struct fx *f = arg;
  (void)remaining;
  assert_true(done <= total);
  f->progress_calls++;
}

static bool
fx_compare(void *arg)
{
  return ((struct fx *)arg)->compare;
}

static void
fx_complete(void *arg)
{
  ((struct fx *)arg)->completes++;
}

/* Fill the source: random data, some all-zero blocks, some holes. */
static void
fx_fill(struct fx *f, unsigned seed)
{
  uint64_t b;
  srand(seed);
  for (b = 0; b < NBLK; b++) {
    unsigned kind = (unsigned)rand() % 10;
    f->hole[b] = b >= NBLK / 2 && b < NBLK / 2 + 300; /* a large hole */
    if (f->hole[b] || kind == 0) {
      memset(f->src + b * BLK, 0, BLK);
    } else {
      uint64_t i;
      for (i = 0; i < BLK; i++)
        f->src[b * BLK + i] = (char)rand();
    }
  }
}

static int
setup(void **state)
{
  struct fx *f = calloc(1, sizeof *f);
  struct sender_env env = { 0 };

  assert_non_null(f);
  f->src = util_alloc_aligned(VOL);
  f->rcv = calloc(1, VOL);
  assert_non_null(f->rcv);
  memset(f->rcv, 0xa5, VOL); /* the receiver holds something else */
  fx_fill(f, 1);
  f->fail_read_at = -1;
  f->connected = true;
  f->todo = bitmap_new(VOL, BLK);
  f->locks = lock_set_new();
  env.todo = f->todo;
  env.locks = f->locks;
  env.src.name = "memory";
  env.src.read = src_read;
  env.src.next_data = src_next_data;
  env.src.next_hole = src_next_hole;
  env.src.arg = f;
  env.tp.connected = tp_connected;
  env.tp.send_data = tp_send_data;
  env.tp.send_zero = tp_send_zero;
  env.tp.ask_hashes = tp_ask_hashes;
  env.tp.progress = tp_progress;
  env.tp.arg = f;
  env.chunk = 1024 * 1024;
  env.compare = fx_compare;
  env.complete = fx_complete;
  env.who = "test";
  env.peer = "the fake";
  env.arg = f;
  f->s = sender_new(&env);
  *state = f;
  return 0;
}

static int
teardown(void **state)
{
  struct fx *f = *state;
  unsigned i;
  for (i = f->qh; i < f->qt; i++)
    free(f->q[i].data);
  sender_free(f->s);
  lock_set_free(f->locks);
  bitmap_free(f->todo);
  free(f->src);
  free(f->rcv);
  free(f->hashes);
  free(f);
  return 0;
}

/* Complete the reads started so far (a failing one with EIO). */
static bool
fx_complete_reads(struct fx *f)
{
  unsigned n = f->n_pending_reads, i;
  struct read_req batch[MAXQ];

  if (n == 0)
    return false;
  memcpy(batch, f->reads, n * sizeof batch[0]);
  f->n_pending_reads = 0;
  for (i = 0; i < n; i++) {
    struct read_req *r = &batch[i];
    if ((int)f->n_reads++ == f->fail_read_at) {
      r->done(r->cookie, -5);
      continue;
    }
    memcpy(r->buf, f->src + r->off, r->len);
    r->done(r->cookie, (long)r->len);
  }
  return true;
}

/* The receiver applies (or answers) up to max queued frames in order. */
static unsigned
fx_ack(struct fx *f, unsigned max)
{
  unsigned n = 0;
  while (f->qh < f->qt && n < max) {
    struct frame fr = f->q[f->qh++];
    n++;
    if (fr.type == F_DATA) {
      memcpy(f->rcv + fr.off, fr.data, fr.len);
      free(fr.data);
    } else if (fr.type == F_ZERO) {
      memset(f->rcv + fr.off, 0, fr.len);
    } else {
      uint64_t k, nb = fr.len / BLK;
      free(f->hashes);
      f->hashes = calloc(nb, sizeof *f->hashes);
      assert_non_null(f->hashes);
      for (k = 0; k < nb; k++)
        f->hashes[k] = hash_block(f->rcv + fr.off + k * BLK, BLK);
      fr.op->hashes = f->hashes;
      fr.op->n_hashes = nb;
    }
    fr.op->acked(fr.op, true);
  }
  return n;
}

/* The link drops: every queued frame fails. */
static void
fx_drop(struct fx *f)
{
  f->connected = false;
  sender_abort(f->s);
  while (f->qh < f->qt) {
    struct frame fr = f->q[f->qh++];
    free(fr.data);
    fr.op->hashes = NULL;
    fr.op->n_hashes = 0;
    fr.op->acked(fr.op, false);
  }
}

/* Run reads and acknowledgements until nothing moves. */
static void
fx_run(struct fx *f)
{
  unsigned rounds = 0;
  while (fx_complete_reads(f) | (fx_ack(f, MAXQ) > 0))
    assert_true(++rounds < 100000);
}

static void
test_full_sync_equal_bytes(void **state)
{
  struct fx *f = *state;
  struct sender_counters c;
  uint64_t zero_blocks = 0, b;

  for (b = 0; b < NBLK; b++)
    zero_blocks += util_is_zero(f->src + b * BLK, BLK);
  sender_begin(f->s, true);
  assert_true(sender_active(f->s));
  fx_run(f);
  assert_false(sender_active(f->s));
  assert_int_equal(f->completes, 1);
  assert_int_equal(sender_chunks(f->s), 0); /* every chunk freed */
  assert_memory_equal(f->rcv, f->src, VOL);
  /* Every byte once, zero blocks as zero ranges, no reads of the hole. */
  assert_int_equal(f->data_bytes + f->zero_bytes, VOL);
  assert_int_equal(f->zero_bytes, zero_blocks * BLK);
  assert_int_equal(f->hash_asks, 0);
  sender_get_counters(f->s, &c);
  assert_true(c.full && c.ever_completed);
  assert_int_equal(c.total_bytes, VOL);
  assert_int_equal(c.done_bytes, VOL);
  assert_int_equal(c.data_bytes_sent, f->data_bytes);
  assert_int_equal(c.zero_bytes_sent, f->zero_bytes);
  assert_int_equal(bitmap_dirty_bytes(f->todo), 0);
  assert_true(f->progress_calls >= 1);
}

static void
test_sync_reads(void **state)
{
  struct fx *f = *state;
  f->sync_reads = true;
  sender_begin(f->s, true);
  fx_run(f);
  assert_int_equal(f->completes, 1);
  assert_int_equal(sender_chunks(f->s), 0);
  assert_memory_equal(f->rcv, f->src, VOL);
  assert_int_equal(f->data_bytes + f->zero_bytes, VOL);
}

/* Only what is marked travels; the rest of the receiver is untouched. */
static void
test_only_marked(void **state)
{
  struct fx *f = *state;
  static const uint64_t runs[][2] = {
    { 0, BLK }, { 5 * BLK, 3 * BLK }, { 1024 * 1024 - BLK, 2 * BLK },
    { VOL - BLK, BLK },
  };
  char *expect = malloc(VOL);
  uint64_t marked = 0;
  unsigned i;

  assert_non_null(expect);
  memcpy(expect, f->rcv, VOL);
  for (i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    bitmap_set_range(f->todo, runs[i][0], runs[i][1]);
    memcpy(expect + runs[i][0], f->src + runs[i][0], runs[i][1]);
    marked += runs[i][1];
  }
  sender_begin(f->s, false);
  fx_run(f);
  assert_int_equal(f->completes, 1);
  assert_int_equal(f->data_bytes + f->zero_bytes, marked);
  assert_memory_equal(f->rcv, expect, VOL);
  free(expect);
}

/* Frames lost with the link put their ranges back; the next run sends
 * exactly those and the receiver ends equal. */
static void
test_link_drop_remarks(void **state)
{
  struct fx *f = *state;
  uint64_t acked_bytes = 0, sent_before;
  unsigned i, n;

  sender_begin(f->s, true);
  fx_complete_reads(f);
  /* Acknowledge a third of what is queued, then drop the link. */
  n = (f->qt - f->qh) / 3;
  assert_true(n > 0);
  for (i = 0; i < n; i++)
    acked_bytes += f->q[f->qh + i].len;
  fx_ack(f, n);
  fx_drop(f);
  fx_complete_reads(f); /* reads that finish after the drop */
  assert_int_equal(f->completes, 0);
  assert_int_equal(bitmap_dirty_bytes(f->todo), VOL - acked_bytes);
  sent_before = f->data_bytes + f->zero_bytes;
  f->connected = true;
  sender_begin(f->s, false);
  fx_run(f);
  assert_int_equal(f->completes, 1);
  assert_memory_equal(f->rcv, f->src, VOL);
  /* The second run moved exactly what was not acknowledged. */
  assert_int_equal(f->data_bytes + f->zero_bytes - sent_before,
                   VOL - acked_bytes);
}

/* A read error stops the run without spinning on the bad blocks: they
 * stay marked (nothing is sent from them) and the next run sends them. */
static void
test_read_error_stops_run(void **state)
{
  struct fx *f = *state;
  struct sender_counters c;

  f->fail_read_at = 0;
  bitmap_set_range(f->todo, 0, 64 * 1024);
  sender_begin(f->s, false);
  fx_run(f);
  assert_false(sender_active(f->s));
  assert_int_equal(f->n_reads, 1);
  assert_int_equal(f->data_bytes + f->zero_bytes, 0);
  assert_int_equal(f->completes, 0);
  assert_int_equal(bitmap_dirty_bytes(f->todo), 64 * 1024);
  sender_get_counters(f->s, &c);
  assert_int_equal(c.read_errors, 1);
  sender_begin(f->s, false);
  fx_run(f);
  assert_int_equal(f->completes, 1);
  assert_memory_equal(f->rcv, f->src, 64 * 1024);
}

/* Comparing first: only blocks whose hash differs travel, holes included
 * (a hole the receiver holds as zeroes is not sent). */
static void
test_compare_sends_differing(void **state)
{
  struct fx *f = *state;
  static const uint64_t differ[] = { 3, 700, 1000, NBLK / 2 + 10, NBLK - 1 };
  struct sender_counters c;
  unsigned i;

  memcpy(f->rcv, f->src, VOL);
  for (i = 0; i < sizeof differ / sizeof differ[0]; i++)
    f->rcv[differ[i] * BLK + 17] ^= 0x40;
  f->compare = true;
  sender_begin(f->s, true);
  fx_run(f);
  assert_int_equal(f->completes, 1);
  assert_int_equal(sender_chunks(f->s), 0);
  assert_memory_equal(f->rcv, f->src, VOL);
  assert_int_equal(f->data_bytes + f->zero_bytes,
                   sizeof differ / sizeof differ[0] * BLK);
  assert_true(f->hash_asks > 0);
  sender_get_counters(f->s, &c);
  assert_true(c.compared);
  assert_int_equal(c.same_bytes, VOL - sizeof differ / sizeof differ[0] * BLK);
  assert_int_equal(c.done_bytes, VOL);
}

/* A range locked by a write in flight is not read until it is released:
 * the write reaches the stream first. */
static void
test_waits_for_lock(void **state)
{
  struct fx *f = *state;
  bool granted;
  struct range_lock *l =
      lock_acquire(f->locks, 2 * BLK, 3 * BLK, NULL, NULL, &granted);
  unsigned i;

  assert_true(granted);
  bitmap_set_range(f->todo, 0, 16 * BLK);
  sender_begin(f->s, false);
  fx_run(f);
  for (i = 0; i < f->qt; i++)
    assert_true(f->q[i].off + f->q[i].len <= 2 * BLK ||
                f->q[i].off >= 3 * BLK);
  assert_int_equal(f->completes, 0);
  lock_release(f->locks, l);
  fx_run(f);
  assert_int_equal(f->completes, 1);
  assert_memory_equal(f->rcv, f->src, 16 * BLK);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_full_sync_equal_bytes, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_sync_reads, setup, teardown),
    cmocka_unit_test_setup_teardown(test_only_marked, setup, teardown),
    cmocka_unit_test_setup_teardown(test_link_drop_remarks, setup, teardown),
    cmocka_unit_test_setup_teardown(test_read_error_stops_run, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_compare_sends_differing, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_waits_for_lock, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
