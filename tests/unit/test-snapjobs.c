/* Copy-before-write bookkeeping (secondary/snapjobs.c), against a model of
 * the volume: every block has a version that each write increments; a
 * snapshot's image is the versions at the instant it is taken.  Random
 * runs of takes, writes (claiming and journaling old contents first, as
 * snap.c does), background copier reads in flight, commits and failures
 * check that each snapshot collects exactly its image, each (snapshot,
 * block) is claimed and journaled at most once, a delta's blocks outside
 * its set equal the previous snapshot's, commits go in snapshot order, and
 * a before-resync snapshot holds back the writes to its set. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "snapjobs.h"
#include "util.h"

#define BS STORE_BLOCK
#define NB 48                   /* blocks of the model volume */
#define MAXJ 64
#define MAXR 16

struct mjob {
  struct snap_job *j;
  unsigned img[NB];             /* versions when taken */
  int got[NB];                  /* version collected, -1: none */
  unsigned char journaled[NB];  /* times journaled */
  bool all;
  bool done, failed;
};

struct mread {
  uint64_t first, n;
  struct snap_job *owner[8];
};

struct model {
  struct snap_jobq q;
  struct bitmap *dirty;
  unsigned cur[NB];
  struct mjob jobs[MAXJ];
  unsigned n_jobs;
  struct mread reads[MAXR];
  unsigned n_reads;
  bool next_all;
  uint64_t last_commit;
  uint64_t rng;
};

static uint64_t
rnd(struct model *m)
{
  m->rng ^= m->rng >> 12;
  m->rng ^= m->rng << 25;
  m->rng ^= m->rng >> 27;
  return m->rng * 0x2545f4914f6cdd1dull;
}

static struct mjob *
mjob_of(struct model *m, const struct snap_job *j)
{
  for (unsigned i = 0; i < m->n_jobs; i++)
    if (m->jobs[i].j == j)
      return &m->jobs[i];
  fail_msg("unknown job");
  return NULL;
}

static void
model_init(struct model *m, uint64_t seed)
{
  memset(m, 0, sizeof *m);
  TAILQ_INIT(&m->q);
  m->dirty = bitmap_new(NB * (uint64_t)BS, BS);
  assert_non_null(m->dirty);
  m->next_all = true;
  m->rng = seed * 0x9e3779b97f4a7c15ull + 1;
  for (unsigned b = 0; b < NB; b++)
    m->cur[b] = 1;
}

static void
model_free(struct model *m)
{
  struct snap_job *j;

  while ((j = TAILQ_FIRST(&m->q)) != NULL) {
    TAILQ_REMOVE(&m->q, j, q);
    snapjob_free(j);
  }
  bitmap_free(m->dirty);
}

static struct mjob *
take(struct model *m, bool hold)
{
  struct mjob *mj;
  bool all = m->next_all;

  if (m->n_jobs == MAXJ)
    return NULL;
  mj = &m->jobs[m->n_jobs++];
  memset(mj, 0, sizeof *mj);
  mj->j = snapjob_new(m->n_jobs, NB * (uint64_t)BS);
  mj->j->meta.size_bytes = NB * (uint64_t)BS;
  mj->j->hold = hold;
  mj->all = all;
  memcpy(mj->img, m->cur, sizeof mj->img);
  for (unsigned b = 0; b < NB; b++)
    mj->got[b] = -1;
  snapjobs_fill(&m->q, mj->j, m->dirty, all);
  assert_true(mj->j->total == bitmap_dirty_bytes(mj->j->set) / BS);
  TAILQ_INSERT_TAIL(&m->q, mj->j, q);
  bitmap_clear_all(m->dirty);
  bitmap_recount(m->dirty);
  m->next_all = false;
  return mj;
}

static void
collect(struct model *m, struct snap_job *j, uint64_t b)
{
  struct mjob *mj = mjob_of(m, j);

  if (mj->got[b] != -1)
    fail_msg("snapshot %" PRIu64 ": block %" PRIu64 " claimed twice", j->id,
             b);
  mj->got[b] = (int)m->cur[b];
}

static bool
overlaps_read(const struct model *m, uint64_t first, uint64_t n)
{
  for (unsigned i = 0; i < m->n_reads; i++)
    if (first < m->reads[i].first + m->reads[i].n &&
        m->reads[i].first < first + n)
      return true;
  return false;
}

/* Brute force: a live before-resync job's set has a block of the range. */
static bool
held_model(struct model *m, uint64_t first, uint64_t n)
{
  for (unsigned i = 0; i < m->n_jobs; i++) {
    struct snap_job *j = m->jobs[i].j;
    if (!j || !j->hold || m->jobs[i].done || m->jobs[i].failed)
      continue;
    for (uint64_t b = first; b < first + n; b++)
      if (bitmap_test(j->set, b * BS))
        return true;
  }
  return false;
}

/* A client write of n blocks at first, as snap_start_op does it. */
static void
write_blocks(struct model *m, uint64_t first, uint64_t n)
{
  struct snap_jclaims jc = { 0 };
  struct snap_job *owner[8];
  bool held = snapjobs_held(&m->q, first * BS, n * BS);

  assert_int_equal(held, held_model(m, first, n));
  if (held || overlaps_read(m, first, n))
    return;                     /* it waits; tried again later */
  bitmap_set_range(m->dirty, first * BS, n * BS);
  snapjobs_claim_journal(&m->q, first * BS, n * BS, &jc);
  snapjobs_claim(&m->q, first * BS, n * BS, owner);
  /* the read of the old contents, done at once */
  for (size_t k = 0; k < jc.n; k++) {
    struct mjob *mj = mjob_of(m, jc.job[k]);
    assert_true(jc.block[k] >= first && jc.block[k] < first + n);
    assert_true(bitmap_test(jc.job[k]->set, jc.block[k] * BS));
    if (++mj->journaled[jc.block[k]] > 1)
      fail_msg("snapshot %" PRIu64 ": block %" PRIu64 " journaled twice",
               jc.job[k]->id, jc.block[k]);
  }
  for (uint64_t i = 0; i < n; i++)
    if (owner[i]) {
      collect(m, owner[i], first + i);
      owner[i]->reads--;
    }
  for (size_t k = 0; k < jc.n; k++)
    jc.job[k]->reads--;
  /* every live snapshot holding a block has its old contents journaled */
  for (unsigned i = 0; i < m->n_jobs; i++) {
    struct snap_job *j = m->jobs[i].j;
    if (!j || !snapjob_live(j))
      continue;
    for (uint64_t b = first; b < first + n; b++)
      if (bitmap_test(j->set, b * BS) && !m->jobs[i].journaled[b])
        fail_msg("snapshot %" PRIu64 ": block %" PRIu64 " overwritten "
                 "without its old contents journaled", j->id, b);
  }
  snapjobs_jclaims_free(&jc);
  for (uint64_t b = first; b < first + n; b++)
    m->cur[b]++;
}

static void
copier_start(struct model *m)
{
  struct snap_job *j;
  struct mread *r;
  uint64_t off, len;

  if (m->n_reads == MAXR)
    return;
  TAILQ_FOREACH(j, &m->q, q)
    if (j->state == JOB_COPYING &&
        bitmap_next_run(j->pending, 0, 4 * BS, &off, &len))
      break;
  if (!j)
    return;
  r = &m->reads[m->n_reads++];
  r->first = off / BS;
  r->n = len / BS;
  assert_true(snapjobs_claim(&m->q, off, len, r->owner));
}

static void
copier_finish(struct model *m, unsigned i)
{
  struct mread *r = &m->reads[i];

  for (uint64_t k = 0; k < r->n; k++)
    if (r->owner[k]) {
      collect(m, r->owner[k], r->first + k);
      r->owner[k]->reads--;
    }
  m->reads[i] = m->reads[--m->n_reads];
}

static void
commit_ready(struct model *m)
{
  struct snap_job *j;

  TAILQ_FOREACH(j, &m->q, q) {
    if (!snapjobs_may_commit(&m->q, j))
      continue;
    if (j->id <= m->last_commit)
      fail_msg("snapshot %" PRIu64 " commits after %" PRIu64, j->id,
               m->last_commit);
    m->last_commit = j->id;
    j->state = JOB_DONE;      /* COMMITTING, then the store says done */
    mjob_of(m, j)->done = true;
  }
}

static void
mark_failed(struct snap_job *j, void *arg)
{
  struct model *m = arg;

  mjob_of(m, j)->failed = true;
}

static void
fail_one(struct model *m)
{
  struct snap_job *j;
  unsigned n = 0, live_after = 0;

  TAILQ_FOREACH(j, &m->q, q)
    if (snapjob_live(j) && rnd(m) % 2 == 0)
      break;
  if (!j)
    return;
  for (struct snap_job *x = j; x; x = TAILQ_NEXT(x, q))
    live_after += snapjob_live(x);
  n = snapjobs_fail_from(j, mark_failed, m);
  assert_int_equal(n, live_after);
  for (struct snap_job *x = j; x; x = TAILQ_NEXT(x, q))
    assert_false(snapjob_live(x));
  m->next_all = true;           /* what the failed ones held is unknown */
}

/* Reads done and jobs finished: every done job holds exactly its image. */
static void
drain_and_check(struct model *m)
{
  const struct mjob *prev = NULL;

  for (unsigned guard = 0; guard < 100000; guard++) {
    bool busy = false;
    struct snap_job *j;
    while (m->n_reads)
      copier_finish(m, 0);
    copier_start(m);
    commit_ready(m);
    TAILQ_FOREACH(j, &m->q, q)
      busy |= snapjob_live(j);
    if (!busy && !m->n_reads)
      break;
  }
  for (unsigned i = 0; i < m->n_jobs; i++) {
    const struct mjob *mj = &m->jobs[i];
    if (mj->failed)
      continue;                 /* the next one is a delta on the last done */
    assert_true(mj->done);
    assert_int_equal(mj->j->reads, 0);
    for (unsigned b = 0; b < NB; b++) {
      bool in = bitmap_test(mj->j->set, b * (uint64_t)BS);
      if (in && mj->got[b] != (int)mj->img[b])
        fail_msg("snapshot %" PRIu64 ": block %u holds version %d, the "
                 "image %u", mj->j->id, b, mj->got[b], mj->img[b]);
      if (!in && mj->got[b] != -1)
        fail_msg("snapshot %" PRIu64 ": block %u collected outside its set",
                 mj->j->id, b);
      if (!in && !prev && !mj->all)
        fail_msg("snapshot %" PRIu64 ": a delta with no snapshot before it",
                 mj->j->id);
      /* outside its set a delta reads as the snapshot before it */
      if (!in && prev && mj->img[b] != prev->img[b])
        fail_msg("snapshot %" PRIu64 ": block %u changed since snapshot %"
                 PRIu64 " but is not in its set", mj->j->id, b,
                 prev->j->id);
      if (!in && !prev && mj->all)
        fail_msg("snapshot %" PRIu64 ": block %u missing from a full set",
                 mj->j->id, b);
    }
    prev = mj;
  }
}

static void
test_random_runs(void **state)
{
  (void)state;
  for (uint64_t seed = 1; seed <= 300; seed++) {
    struct model m;
    model_init(&m, seed);
    for (unsigned step = 0; step < 400; step++) {
      unsigned k = (unsigned)(rnd(&m) % 100);
      if (k < 45) {
        uint64_t n = 1 + rnd(&m) % 4, first = rnd(&m) % (NB - n + 1);
        write_blocks(&m, first, n);
      } else if (k < 60) {
        copier_start(&m);
      } else if (k < 75) {
        if (m.n_reads)
          copier_finish(&m, (unsigned)(rnd(&m) % m.n_reads));
      } else if (k < 85) {
        commit_ready(&m);
      } else if (k < 94) {
        take(&m, rnd(&m) % 5 == 0);
      } else if (k < 95) {
        fail_one(&m);
      } else if (k < 97) {
        m.next_all = true;      /* a restart: changes unknown */
      }
    }
    drain_and_check(&m);
    model_free(&m);
  }
}

/* The cases the random runs rely on, spelled out. */
static void
test_directed(void **state)
{
  struct model m;
  struct mjob *a, *b;
  struct snap_job *owner[8];

  (void)state;
  model_init(&m, 42);
  a = take(&m, false);                          /* everything */
  assert_true(a->j->total == NB);
  write_blocks(&m, 3, 1);                       /* old contents go to a */
  assert_int_equal(a->got[3], 1);
  assert_int_equal(a->journaled[3], 1);
  b = take(&m, false);                          /* just block 3 */
  assert_true(b->j->total == 1);
  assert_true(bitmap_test(b->j->set, 3 * (uint64_t)BS));
  /* b's block is written again: copy-before-write completes b at once,
   * but b may not commit while a (its parent) is still copying */
  write_blocks(&m, 3, 1);
  assert_int_equal(b->got[3], 2);
  assert_false(snapjobs_may_commit(&m.q, b->j));
  assert_false(snapjobs_may_commit(&m.q, a->j));
  /* a block claimed once is not claimed again */
  assert_true(snapjobs_claim(&m.q, 0, BS, owner));
  assert_ptr_equal(owner[0], a->j);
  assert_false(snapjobs_claim(&m.q, 0, BS, owner));
  assert_null(owner[0]);
  collect(&m, a->j, 0);
  a->j->reads--;
  drain_and_check(&m);
  assert_true(a->done && b->done);
  model_free(&m);

  /* a before-resync snapshot holds writes to its set until it is done */
  model_init(&m, 43);
  a = take(&m, true);
  assert_true(snapjobs_held(&m.q, 5 * BS, 100));
  write_blocks(&m, 5, 1);
  assert_int_equal(m.cur[5], 1);                /* held back */
  drain_and_check(&m);
  assert_false(snapjobs_held(&m.q, 5 * BS, 100));
  write_blocks(&m, 5, 1);
  assert_int_equal(m.cur[5], 2);
  model_free(&m);

  /* a failure takes every later snapshot with it */
  model_init(&m, 44);
  a = take(&m, false);
  write_blocks(&m, 1, 1);
  b = take(&m, false);
  write_blocks(&m, 2, 1);
  take(&m, false);
  assert_int_equal(snapjobs_fail_from(b->j, mark_failed, &m), 2);
  assert_true(snapjob_live(a->j));
  assert_false(snapjob_live(b->j));
  assert_true(snapjobs_any_live(&m.q));
  b->j->tasks = 1;
  assert_false(snapjob_reapable(b->j));         /* a task still queued */
  b->j->tasks = 0;
  assert_true(snapjob_reapable(b->j));
  model_free(&m);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_directed),
    cmocka_unit_test(test_random_runs),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
