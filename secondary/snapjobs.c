/* The bookkeeping of snapshots being copied (snapjobs.h).
 *
 * Blocks only travel forward: a block pending in one job was not written
 * since that job was taken (a write claims it first), so it is in no later
 * job's pending set; each block read serves exactly one job. */
#include <stdlib.h>

#include "snapjobs.h"
#include "util.h"

struct snap_job *
snapjob_new(uint64_t id, uint64_t size)
{
  struct snap_job *j = calloc(1, sizeof *j);

  if (!j)
    abort();
  j->id = id;
  j->pending = bitmap_new(size, STORE_BLOCK);
  j->set = bitmap_new(size, STORE_BLOCK);
  j->journaled = bitmap_new(size, STORE_BLOCK);
  if (!j->pending || !j->set || !j->journaled)
    abort();
  return j;
}

void
snapjob_free(struct snap_job *j)
{
  if (!j)
    return;
  bitmap_free(j->pending);
  bitmap_free(j->set);
  bitmap_free(j->journaled);
  free(j);
}

bool
snapjob_live(const struct snap_job *j)
{
  return j->state == JOB_COPYING || j->state == JOB_COMMITTING;
}

bool
snapjob_reapable(const struct snap_job *j)
{
  return (j->state == JOB_FAILED || j->state == JOB_DONE) && j->reads == 0 &&
         j->tasks == 0;
}

void
snapjobs_fill(const struct snap_jobq *q, struct snap_job *j,
              const struct bitmap *dirty, bool all)
{
  const struct snap_job *x;

  bitmap_clear_all(j->pending);
  if (all) {
    uint64_t *d = bitmap_words(j->pending);
    bitmap_set_all(j->pending);
    TAILQ_FOREACH(x, q, q) {
      const uint64_t *o = bitmap_words(x->pending);
      if (x->state != JOB_COPYING ||
          bitmap_word_count(x->pending) != bitmap_word_count(j->pending))
        continue;
      for (size_t w = 0; w < bitmap_word_count(j->pending); w++)
        d[w] &= ~o[w];
    }
  } else {
    bitmap_or_words(j->pending, bitmap_words((struct bitmap *)dirty),
                    bitmap_word_count(dirty));
  }
  bitmap_recount(j->pending);
  bitmap_clear_all(j->set);
  bitmap_or_words(j->set, bitmap_words(j->pending),
                  bitmap_word_count(j->pending));
  bitmap_recount(j->set);
  j->total = bitmap_dirty_bytes(j->pending) / STORE_BLOCK;
}

bool
snapjobs_claim(struct snap_jobq *q, uint64_t off, uint64_t len,
               struct snap_job **owner)
{
  uint64_t nblocks = len / STORE_BLOCK;
  bool any = false;

  for (uint64_t i = 0; i < nblocks; i++) {
    uint64_t o = off + i * STORE_BLOCK;
    struct snap_job *j;
    owner[i] = NULL;
    TAILQ_FOREACH(j, q, q) {
      if (j->state != JOB_COPYING || o >= j->meta.size_bytes ||
          !bitmap_test(j->pending, o))
        continue;
      bitmap_clear_range(j->pending, o, STORE_BLOCK);
      j->claimed++;
      j->reads++;
      owner[i] = j;
      any = true;
      break;
    }
  }
  return any;
}

static void
jclaims_add(struct snap_jclaims *c, struct snap_job *j, uint64_t block)
{
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 16;
    c->job = realloc(c->job, c->cap * sizeof *c->job);
    c->block = realloc(c->block, c->cap * sizeof *c->block);
    if (!c->job || !c->block)
      abort();
  }
  c->job[c->n] = j;
  c->block[c->n] = block;
  c->n++;
}

bool
snapjobs_claim_journal(struct snap_jobq *q, uint64_t off, uint64_t len,
                       struct snap_jclaims *c)
{
  uint64_t nblocks = len / STORE_BLOCK;
  size_t before = c->n;
  struct snap_job *j;

  TAILQ_FOREACH(j, q, q) {
    if (!snapjob_live(j))
      continue;
    for (uint64_t i = 0; i < nblocks; i++) {
      uint64_t o = off + i * STORE_BLOCK;
      if (o >= j->meta.size_bytes || !bitmap_test(j->set, o) ||
          bitmap_test(j->journaled, o))
        continue;
      bitmap_set_range(j->journaled, o, STORE_BLOCK);
      jclaims_add(c, j, o / STORE_BLOCK);
      j->reads++;               /* keeps j until the read is done */
    }
  }
  return c->n > before;
}

void
snapjobs_jclaims_free(struct snap_jclaims *c)
{
  free(c->job);
  free(c->block);
  c->job = NULL;
  c->block = NULL;
  c->n = c->cap = 0;
}

bool
snapjobs_held(const struct snap_jobq *q, uint64_t off, uint64_t len)
{
  const struct snap_job *j;

  TAILQ_FOREACH(j, q, q) {
    uint64_t o, l;
    if (!j->hold || !snapjob_live(j))
      continue;
    if (bitmap_next_run(j->set, off & ~(uint64_t)(STORE_BLOCK - 1),
                        len + STORE_BLOCK, &o, &l) && o < off + len)
      return true;
  }
  return false;
}

bool
snapjobs_may_commit(const struct snap_jobq *q, const struct snap_job *j)
{
  const struct snap_job *x;

  if (j->state != JOB_COPYING || j->reads > 0 ||
      bitmap_dirty_bytes(j->pending) != 0)
    return false;
  for (x = TAILQ_FIRST(q); x && x != j; x = TAILQ_NEXT(x, q))
    if (x->state == JOB_COPYING)
      return false;
  return true;
}

bool
snapjobs_any_live(const struct snap_jobq *q)
{
  const struct snap_job *j;

  TAILQ_FOREACH(j, q, q)
    if (snapjob_live(j))
      return true;
  return false;
}

unsigned
snapjobs_fail_from(struct snap_job *j, void (*fn)(struct snap_job *, void *),
                   void *arg)
{
  unsigned n = 0;

  for (; j; j = TAILQ_NEXT(j, q))
    if (snapjob_live(j)) {
      j->state = JOB_FAILED;
      n++;
      if (fn)
        fn(j, arg);
    }
  return n;
}
