/* Restore, PLAN (restore.c has the phases): which regions differ.  From a
 * snapshot, the store's lineage: the secondary diffs the source and the
 * safety snapshot (RESTORE_PLAN) once the latter is complete.  From the
 * replica, nothing records what differs: block hashes of the whole
 * volume are compared (VERIFY), as --resync-checksums does. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"
#include "restore-internal.h"

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

void
rst_plan_snapshot(struct restore *rs)
{
  if (util_now_ms() >= rs->retry_ms)
    rst_send_plan(rs, rs->hdr.safety, rst_plan_acked, rst_plan_part);
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

void
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

