/* Activity log: the write-intent record of the primary's hot regions.
 *
 * Before a client write touches a region ("extent", 4 MiB by default) that
 * is not in the on-disk activity log, the extent is added and the log is
 * written and synced.  After a crash, every extent in the log may hold
 * writes the secondary never got, so they are marked out of sync; together
 * with the bitmap (flushed lazily, always a superset of what the secondary
 * lacks outside the logged extents) that bounds the resync after a primary
 * crash to the regions written recently (DRBD's activity log).
 *
 * An extent leaves the log only when idle (no write in flight and nothing
 * unacknowledged by the secondary) and after the bitmap pages covering it
 * are on disk.  Idle extents are retired by al_tick, so the log stays small
 * and a crash resyncs only what was being written in the last seconds. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "log.h"

#define AL_IDLE_MS 2000

struct al_extent {
  uint64_t nr;
  unsigned refs;
  uint64_t last_used_ms;
};

struct al {
  struct primary *p;
  unsigned shift;
  struct al_extent ext[META_AL_MAX];
  unsigned n;                   /* extents in the log (in memory = on disk) */
  uint64_t transactions;
};

struct al *
al_new(struct primary *p, unsigned shift)
{
  struct al *al = calloc(1, sizeof *al);
  if (!al)
    abort();
  al->p = p;
  al->shift = shift;
  return al;
}

void
al_free(struct al *al)
{
  free(al);
}

static struct al_extent *
al_find(struct al *al, uint64_t nr)
{
  unsigned i;
  for (i = 0; i < al->n; i++)
    if (al->ext[i].nr == nr)
      return &al->ext[i];
  return NULL;
}

/* Write the bitmap pages changed since the last flush, and sync (or
 * not: al_write_bitmap). */
static int
al_bitmap_out(struct al *al, bool sync)
{
  struct primary *p = al->p;
  uint64_t first, n;
  bool wrote = false;
  int rc;

  uint64_t lo = UINT64_MAX, hi = 0;

  while (bitmap_take_dirty_pages(p->oos, &first, &n)) {
    lo = MIN(lo, first);
    hi = MAX(hi, first + n);
    rc = meta_bitmap_write(p->meta, bitmap_words(p->oos), first, n);
    if (rc < 0) {
      log_error("primary: metadata %s: bitmap write: %s", p->cfg.meta,
                strerror(-rc));
      goto failed;
    }
    wrote = true;
  }
  if (sync && wrote && (rc = meta_sync(p->meta)) < 0) {
    log_error("primary: metadata %s: sync: %s", p->cfg.meta, strerror(-rc));
    goto failed;
  }
  return 0;

failed:
  /* Not on disk: keep every page taken so far for the next attempt. */
  bitmap_mark_pages_dirty(p->oos, lo, hi - lo);
  return rc;
}

int
al_flush_bitmap(struct al *al)
{
  return al_bitmap_out(al, true);
}

int
al_write_bitmap(struct al *al)
{
  return al_bitmap_out(al, false);
}

static int
al_commit(struct al *al)
{
  struct meta_al m;
  unsigned i;
  int rc;

  memset(&m, 0, sizeof m);
  m.extent_shift = al->shift;
  m.n = al->n;
  for (i = 0; i < al->n; i++)
    m.extents[i] = al->ext[i].nr;
  rc = meta_al_write(al->p->meta, &m);
  if (rc < 0)
    log_error("primary: metadata %s: activity log write: %s",
              al->p->cfg.meta, strerror(-rc));
  al->transactions++;
  return rc;
}

/* Drop idle extents (all of them if force); their bitmap bits go to disk
 * first.  Returns how many were dropped. */
static unsigned
al_retire(struct al *al, uint64_t idle_ms, bool force)
{
  uint64_t now = util_now_ms();
  unsigned i, kept = 0, dropped = 0;

  for (i = 0; i < al->n; i++)
    if (al->ext[i].refs == 0 && (force || now - al->ext[i].last_used_ms >=
                                              idle_ms))
      dropped++;
  if (dropped == 0)
    return 0;
  if (al_flush_bitmap(al) < 0)
    return 0;
  for (i = 0; i < al->n; i++) {
    if (al->ext[i].refs == 0 &&
        (force || now - al->ext[i].last_used_ms >= idle_ms))
      continue;
    al->ext[kept++] = al->ext[i];
  }
  al->n = kept;
  al_commit(al);
  return dropped;
}

int
al_begin(struct al *al, uint64_t off, uint64_t len)
{
  uint64_t first = off >> al->shift;
  uint64_t last = (off + len - 1) >> al->shift;
  uint64_t nr, now = util_now_ms();
  bool added = false;

  for (nr = first; nr <= last; nr++) {
    struct al_extent *e = al_find(al, nr);
    if (e)
      continue;
    if (al->n == META_AL_MAX && al_retire(al, 0, true) == 0) {
      /* Every logged extent is busy: over META_AL_MAX * 4 MiB in flight
       * cannot happen with bounded buffers; refuse rather than lie. */
      log_error("primary: activity log full (%u busy extents)", al->n);
      return -EBUSY;
    }
    e = &al->ext[al->n++];
    e->nr = nr;
    e->refs = 0;
    e->last_used_ms = now;
    added = true;
  }
  if (added && al_commit(al) < 0)
    return -EIO;
  for (nr = first; nr <= last; nr++) {
    struct al_extent *e = al_find(al, nr);
    e->refs++;
    e->last_used_ms = now;
  }
  return 0;
}

void
al_end(struct al *al, uint64_t off, uint64_t len)
{
  uint64_t first = off >> al->shift;
  uint64_t last = (off + len - 1) >> al->shift;
  uint64_t nr, now = util_now_ms();

  for (nr = first; nr <= last; nr++) {
    struct al_extent *e = al_find(al, nr);
    if (!e || e->refs == 0)
      abort(); /* unbalanced al_begin/al_end */
    e->refs--;
    e->last_used_ms = now;
  }
}

void
al_tick(struct al *al)
{
  al_retire(al, AL_IDLE_MS, false);
}

int
al_recover(struct al *al)
{
  struct primary *p = al->p;
  struct meta_al m;
  uint64_t marked = 0;
  unsigned i;
  int rc;

  rc = meta_al_read(p->meta, &m);
  if (rc < 0)
    return rc;
  for (i = 0; i < m.n; i++) {
    uint64_t start = m.extents[i] << m.extent_shift;
    uint64_t len = (uint64_t)1 << m.extent_shift;
    if (start >= p->vol.size)
      continue;
    len = MIN(len, p->vol.size - start);
    bitmap_set_range(p->oos, start, len);
    marked += len;
  }
  if (m.n) {
    log_warn("primary: %u regions (%" PRIu64 " bytes) were being written "
             "when the primary last stopped; they are resynced, comparing "
             "checksums so only blocks that differ travel", m.n, marked);
    p->crash_recovery = true;
  }
  /* Persist those bits, then start with an empty log. */
  rc = al_flush_bitmap(al);
  if (rc < 0)
    return rc;
  al->n = 0;
  return al_commit(al);
}

void
al_shutdown(struct al *al)
{
  al_retire(al, 0, true);
  al_flush_bitmap(al);
}

unsigned
al_active(const struct al *al)
{
  return al->n;
}
