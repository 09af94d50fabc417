/* Snapshots of the replica (DESIGN.md "Snapshots", docs/STORE.md).
 *
 * A snapshot is taken at an apply barrier: a MARK op tagged SNAP_MARK_TAG
 * goes through the apply queue (from the primary's SNAPSHOT frame, from
 * `duplexctl snapshot create` here, from the schedule, before a resync),
 * and when it starts every earlier op has completed and no later one has
 * started.  Taking it is O(1): the set of blocks changed since the
 * previous snapshot ("dirty") becomes the new snapshot's "pending" set and
 * dirty starts empty.  Nothing is copied before the requester is answered.
 *
 * Then the pending blocks are copied in the background: the copier reads
 * them from the replica (libaio, on the loop) and hands them to the store
 * thread, which hashes, packs and writes them (store/writer.c) and commits
 * the snapshot when the last one is in.  Before the apply path overwrites
 * a block some snapshot still has pending, it reads the old contents first
 * and hands those over instead (copy-before-write, once per block: the bit
 * is cleared when the block is claimed).  A block being read by the copier
 * is not written until the read is complete.
 *
 * Blocks only travel forward: a block pending in one snapshot was not
 * written since it was taken, so it is in no later snapshot's set; each
 * block read serves exactly one snapshot.
 *
 * A snapshot taken before a resync ("before-resync") holds back every
 * write to a block in its set until it is committed: the replica is about
 * to become inconsistent and this snapshot is the restore point
 * (DESIGN.md guarantee 6).
 *
 * Crash semantics: the snapshots being copied and their block sets are
 * saved (snapjournal.c) before the requester is answered, and the old
 * contents of a block in such a set are journaled durably before the
 * apply path overwrites it (once per block and snapshot, whether or not
 * the copier has read it already).  After a crash or restart those
 * snapshots are copied again, from the journal and the replica, and
 * finish; the catalog only ever names complete snapshots.  The first new
 * snapshot after a start compares every block with the newest snapshot
 * (what changed while the agent was down is not known) and stores only
 * what differs. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#include "bitmap.h"
#include "json.h"
#include "log.h"
#include "nbd-export.h"
#include "retention.h"
#include "snapjobs.h"
#include "store.h"

#define SNAP_COPY_CHUNK (256u * 1024)  /* bytes per copier read */
#define SNAP_COPY_INFLIGHT 8u
#define SNAP_QUEUE_MAX 4096u           /* blocks queued for the store thread */

enum task_kind { T_BEGIN, T_BLOCK, T_ZERO, T_COMMIT, T_ABORT, T_DELETE,
                 T_LIST, T_DIFF, T_PLAN, T_STOP };

struct snap_job;

struct task {
  enum task_kind kind;
  struct snap_job *job;
  uint64_t block;
  uint64_t count;               /* T_ZERO: blocks from block on */
  uint64_t id;                  /* T_DELETE */
  uint8_t *data;                /* T_BLOCK: STORE_BLOCK bytes, owned */
  void *req;                    /* T_DELETE: the control reply */
  /* T_DIFF: snapshots id..id2, the text, who wants it */
  uint64_t id2;
  bool json;
  char *text;
  snap_diff_fn diff_done;
  void *diff_arg;
  /* T_PLAN: regions of plan_grain bytes where id and id2 differ */
  uint32_t plan_grain;
  uint64_t plan_size;
  uint8_t *plan;
  size_t plan_len;
  snap_plan_fn plan_done;
  void *plan_arg;
  /* results, filled by the store thread */
  int rc;
  char err[512];
  struct snap_info *list;       /* T_LIST */
  size_t n_list;
  uint64_t store_bytes;
  TAILQ_ENTRY(task) q;
};
TAILQ_HEAD(taskq, task);

/* A claimed range being read: a copier chunk or a copy-before-write. */
struct snap_read {
  struct snapmgr *m;
  struct snap_job *job;         /* copier reads: the job; else NULL */
  struct apply *a;              /* copy-before-write: the op to start */
  struct apply_op *op;
  uint64_t off, len;
  uint8_t *buf;
  struct snap_job **owner;      /* per block of the read: the job that
                                   claimed it, or NULL */
  /* copy-before-write: (job, block) pairs to journal before the write */
  struct snap_jclaims jc;
  struct aio_op aio;
  TAILQ_ENTRY(snap_read) q;
};
TAILQ_HEAD(readq, snap_read);

/* An apply op waiting for a read of the blocks it writes, or for a
 * before-resync snapshot to be committed. */
struct snap_wait {
  struct apply *a;
  struct apply_op *op;
  TAILQ_ENTRY(snap_wait) q;
};
TAILQ_HEAD(waitq, snap_wait);

struct snap_req {
  unsigned reason;
  char name[STORE_NAME_MAX + 1];
  uint64_t epoch;
  snap_done_fn done;
  void *arg;
  bool queued;                  /* its MARK is in the apply queue */
  uint64_t since_ms;
  TAILQ_ENTRY(snap_req) q;
};
TAILQ_HEAD(reqq, snap_req);

/* A snapshot served read-only over NBD by this agent. */
struct snap_export {
  uint64_t id;
  struct snap_source *src;
  struct nbd_export_server *srv;
  struct snap_export *next;
};

struct snapmgr {
  struct secondary *s;
  struct snap_export *exports;
  /* A restore of the primary reads this snapshot (FETCH): kept open, and
   * retention waits, until another one is read or the restore ends. */
  struct snap_source *fetch_src;
  uint64_t fetch_id;
  struct taskq plans_waiting;   /* T_PLAN tasks whose `to` is copying */
  struct snapjournal *journal;
  pthread_mutex_t store_lock;   /* every call into the store (thread,
                                   exports, FETCH); the thread lets go of
                                   it while a snapshot's objects are
                                   written and synced */
  struct aio_ctx *aio;
  struct store *store;          /* the store thread's after start-up */
  char store_dir[PATH_MAX];
  struct keep_policy keep;
  uint64_t every_ms, next_ms;
  uint64_t copy_rate;           /* bytes/s, 0: no limit */
  int64_t copy_budget;          /* bytes the copier may read now */
  uint64_t budget_ms;           /* when the budget was last refilled */
  /* main thread */
  struct bitmap *dirty;         /* changed since the newest snapshot taken */
  bool first_rescan;            /* the next snapshot compares everything */
  uint64_t next_id;
  struct snap_jobq jobs;        /* taken, not yet reaped */
  struct readq reads;
  struct waitq waiting;
  struct reqq reqs;             /* requests whose MARK has not started */
  unsigned copier_reads;
  unsigned queued_blocks;       /* T_BLOCK tasks not yet done */
  struct snap_info *list;       /* the store's snapshots, as last listed */
  size_t n_list;
  uint64_t store_bytes;
  uint64_t taken, lost, failed;
  uint64_t last_ms_wall;        /* created time of the newest snapshot */
  char last_error[512];
  /* thread */
  pthread_t thr;
  bool thr_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct taskq todo, done;
  int efd;
  struct event *done_ev;
};

static void snap_copier_kick(struct snapmgr *m);
static void snap_retry_waiting(struct snapmgr *m);
static void snap_retry_plans(struct snapmgr *m);

/* ---- the store thread ---- */

static void
task_post(struct snapmgr *m, struct task *t)
{
  if (t->job)
    t->job->tasks++;
  pthread_mutex_lock(&m->mu);
  TAILQ_INSERT_TAIL(&m->todo, t, q);
  pthread_cond_signal(&m->cv);
  pthread_mutex_unlock(&m->mu);
}

static struct task *
task_new(enum task_kind k, struct snap_job *job)
{
  struct task *t = calloc(1, sizeof *t);

  if (!t)
    abort();
  t->kind = k;
  t->job = job;
  return t;
}

static void
task_free(struct task *t)
{
  free(t->data);
  free(t->list);
  free(t->text);
  free(t->plan);
  free(t);
}

static void
thr_list(struct snapmgr *m, struct task *t)
{
  const struct catalog *c = store_catalog(m->store);

  t->list = calloc(c->n_snaps ? c->n_snaps : 1, sizeof *t->list);
  if (!t->list)
    abort();
  for (uint32_t i = 0; i < c->n_snaps; i++) {
    const struct manifest *mf;
    struct snap_info *in = &t->list[t->n_list];
    if (store_manifest(m->store, c->snaps[i].id, &mf, t->err,
                       sizeof t->err) < 0) {
      t->rc = -EIO;
      continue;
    }
    in->id = mf->id;
    snprintf(in->name, sizeof in->name, "%s", mf->name);
    in->created_ns = mf->created_ns;
    in->epoch = mf->epoch;
    in->reason = mf->reason;
    in->size_bytes = mf->size_bytes;
    in->stored_bytes = mf->stored_bytes;
    in->complete = true;
    t->n_list++;
  }
  (void)store_usage(m->store, &t->store_bytes, t->err, sizeof t->err);
}

static void
thr_run(struct snapmgr *m, struct task *t)
{
  struct snap_job *j = t->job;
  struct gc_stats gs;

  switch (t->kind) {
  case T_BEGIN:
    t->rc = store_writer_begin(m->store, &j->meta, j->full, &j->w, t->err,
                               sizeof t->err);
    break;
  case T_BLOCK:
    if (!j->w)
      break;                    /* the job failed: drop */
    t->rc = store_writer_block(j->w, t->block, t->data, t->err,
                               sizeof t->err);
    break;
  case T_ZERO:
    if (!j->w)
      break;
    t->rc = store_writer_zero(j->w, t->block, t->count, t->err,
                              sizeof t->err);
    break;
  case T_COMMIT:
    if (!j->w) {
      t->rc = -ECANCELED;
      break;
    }
    t->rc = store_writer_commit(j->w, &t->id, NULL, t->err, sizeof t->err);
    if (t->rc == 0) {
      j->w = NULL;
      thr_list(m, t);
    }
    break;
  case T_ABORT:                 /* the job failed: nothing is committed */
    store_writer_abort(j->w);
    j->w = NULL;
    break;
  case T_DELETE:
    t->rc = store_delete(m->store, t->id, &gs, t->err, sizeof t->err);
    thr_list(m, t);
    break;
  case T_LIST:
    thr_list(m, t);
    break;
  case T_DIFF: {
    size_t len;
    t->rc = store_diff_text(m->store, t->id, t->id2, t->json, &t->text, &len,
                            t->err, sizeof t->err);
    break;
  }
  case T_PLAN:
    t->rc = store_diff_image(m->store, t->id, t->id2, t->plan_size,
                             t->plan_grain, &t->plan, &t->plan_len, t->err,
                             sizeof t->err);
    break;
  case T_STOP:
    break;
  }
  /* A failed step ends the job's writer: nothing it holds is committed. */
  if (t->rc < 0 && j && j->w) {
    store_writer_abort(j->w);
    j->w = NULL;
  }
}

static void *
thr_main(void *arg)
{
  struct snapmgr *m = arg;
  struct taskq deferred = TAILQ_HEAD_INITIALIZER(deferred);
  bool stop = false, retry = false;

  while (!stop) {
    struct task *t;
    uint64_t one = 1;

    pthread_mutex_lock(&m->mu);
    /* Deletes of the newest snapshot wait for the snapshot being written
     * on it (store_delete says -EBUSY): tried again after each commit. */
    if (retry && !TAILQ_EMPTY(&deferred)) {
      TAILQ_CONCAT(&deferred, &m->todo, q);
      TAILQ_CONCAT(&m->todo, &deferred, q);
    }
    retry = false;
    while (TAILQ_EMPTY(&m->todo))
      pthread_cond_wait(&m->cv, &m->mu);
    t = TAILQ_FIRST(&m->todo);
    TAILQ_REMOVE(&m->todo, t, q);
    pthread_mutex_unlock(&m->mu);
    stop = t->kind == T_STOP;
    pthread_mutex_lock(&m->store_lock);
    thr_run(m, t);
    pthread_mutex_unlock(&m->store_lock);
    if (t->kind == T_DELETE && t->rc == -EBUSY) {
      TAILQ_INSERT_TAIL(&deferred, t, q);
      continue;
    }
    retry = t->kind == T_COMMIT || t->kind == T_ABORT ||
            ((t->kind == T_BLOCK || t->kind == T_ZERO) && t->rc < 0);
    free(t->data);
    t->data = NULL;
    pthread_mutex_lock(&m->mu);
    TAILQ_INSERT_TAIL(&m->done, t, q);
    pthread_mutex_unlock(&m->mu);
    if (write(m->efd, &one, sizeof one) < 0) {
      /* the counter cannot overflow here; nothing to do */
    }
  }
  while (!TAILQ_EMPTY(&deferred)) {  /* stopping: not deleted this time */
    struct task *t = TAILQ_FIRST(&deferred);
    TAILQ_REMOVE(&deferred, t, q);
    task_free(t);
  }
  return NULL;
}

/* ---- jobs ---- */

/* Save the list of snapshots being copied (and empty the journal once
 * there are none).  0, or -1 with last_error set. */
static int
snap_save_jobs(struct snapmgr *m)
{
  struct snapjournal_job v[64] = { { 0 } };
  struct snap_job *j;
  size_t n = 0;
  char err[512];

  TAILQ_FOREACH(j, &m->jobs, q) {
    if (!snapjob_live(j))
      continue;
    if (n == ARRAY_SIZE(v))
      break;
    v[n].id = j->id;
    v[n].meta = j->meta;
    v[n].full = j->full;
    v[n].rescan = j->rescan;
    v[n].size = j->meta.size_bytes;
    v[n].set_words = bitmap_words(j->set);
    v[n].n_words = bitmap_word_count(j->set);
    n++;
  }
  if (snapjournal_save_jobs(m->journal, v, n, err, sizeof err) < 0) {
    snprintf(m->last_error, sizeof m->last_error, "%s", err);
    log_error("secondary: saving the snapshots being copied: %s", err);
    return -1;
  }
  if (n == 0)
    snapjournal_reset(m->journal);
  return 0;
}

static struct snap_job *
job_find(struct snapmgr *m, const struct snap_job *j)
{
  struct snap_job *x;

  TAILQ_FOREACH(x, &m->jobs, q)
    if (x == j)
      return x;
  return NULL;
}

/* The job (and every later one, whose deltas build on it) cannot be
 * completed: drop them; the next snapshot compares everything. */
static void
job_abort_writer(struct snap_job *j, void *arg)
{
  task_post(arg, task_new(T_ABORT, j));
}

static void
job_fail(struct snapmgr *m, struct snap_job *j, const char *why)
{
  snprintf(m->last_error, sizeof m->last_error, "snapshot %" PRIu64
           " failed: %s", j->id, why);
  log_error("secondary: snapshot %" PRIu64 " (%s): %s; it is not kept, and "
            "the next snapshot compares every block", j->id,
            j->meta.name[0] ? j->meta.name : "no name", why);
  m->failed += snapjobs_fail_from(j, job_abort_writer, m);
  m->first_rescan = true;
  snap_save_jobs(m);
  snap_retry_waiting(m);
  snap_retry_plans(m);
}

/* Jobs that failed and have nothing left in flight are forgotten. */
static void
job_reap(struct snapmgr *m)
{
  struct snap_job *j, *next;

  for (j = TAILQ_FIRST(&m->jobs); j; j = next) {
    next = TAILQ_NEXT(j, q);
    if (snapjob_reapable(j)) {
      TAILQ_REMOVE(&m->jobs, j, q);
      snapjob_free(j);
    }
  }
}

static void
job_maybe_commit(struct snapmgr *m, struct snap_job *j)
{
  if (!snapjobs_may_commit(&m->jobs, j))
    return;
  j->state = JOB_COMMITTING;
  task_post(m, task_new(T_COMMIT, j));
}

/* ---- results from the store thread ---- */

static void
snap_apply_retention(struct snapmgr *m)
{
  struct retention_item *items;
  size_t n = m->n_list;

  if (!m->keep.last && !m->keep.hourly && !m->keep.daily &&
      !m->keep.weekly && !m->keep.monthly && !m->keep.yearly)
    return;
  /* Deleting reloads the store under the exports' maps: later. */
  if (m->exports || m->fetch_src) {
    log_info("secondary: --keep applies once no snapshot is exported or "
             "restored from");
    return;
  }
  items = calloc(n ? n : 1, sizeof *items);
  if (!items)
    abort();
  n = 0;
  for (size_t i = 0; i < m->n_list; i++) {
    /* One being deleted is gone already, as far as the policy goes. */
    if (m->list[i].deleting)
      continue;
    items[n].id = m->list[i].id;
    items[n].created_unix = (int64_t)(m->list[i].created_ns / 1000000000ull);
    items[n].reason = m->list[i].reason;
    items[n].complete = m->list[i].complete;
    n++;
  }
  retention_select(&m->keep, items, n);
  for (size_t i = 0; i < n; i++)
    if (!items[i].keep) {
      struct task *t = task_new(T_DELETE, NULL);
      for (size_t k = 0; k < m->n_list; k++)
        if (m->list[k].id == items[i].id)
          m->list[k].deleting = true;
      t->id = items[i].id;
      log_info("secondary: snapshot %" PRIu64 " expires (--keep)",
               items[i].id);
      task_post(m, t);
    }
  free(items);
}

static void
snap_take_list(struct snapmgr *m, struct task *t)
{
  if (t->rc < 0 && t->kind == T_LIST)
    return;
  free(m->list);
  m->list = t->list;
  m->n_list = t->n_list;
  t->list = NULL;
  m->store_bytes = t->store_bytes;
}

static void
snap_done_cb(evutil_socket_t fd, short what, void *arg)
{
  struct snapmgr *m = arg;
  uint64_t n;
  struct taskq q = TAILQ_HEAD_INITIALIZER(q);
  struct task *t;

  (void)what;
  if (read(fd, &n, sizeof n) < 0) {
    /* spurious wake-up: the queue below says what is done */
  }
  pthread_mutex_lock(&m->mu);
  TAILQ_CONCAT(&q, &m->done, q);
  pthread_mutex_unlock(&m->mu);
  while ((t = TAILQ_FIRST(&q)) != NULL) {
    struct snap_job *j = t->job;
    TAILQ_REMOVE(&q, t, q);
    if (j)
      j->tasks--;
    switch (t->kind) {
    case T_BLOCK:
    case T_ZERO:
      if (t->kind == T_BLOCK)
        m->queued_blocks--;
      if (j && job_find(m, j)) {
        j->stored += t->kind == T_ZERO ? t->count : 1;
        if (t->rc < 0 && j->state != JOB_FAILED)
          job_fail(m, j, t->err);
      }
      break;
    case T_BEGIN:
      if (t->rc < 0 && job_find(m, j) && j->state != JOB_FAILED)
        job_fail(m, j, t->err);
      break;
    case T_COMMIT:
      if (!job_find(m, j))
        break;
      if (t->rc < 0) {
        if (j->state != JOB_FAILED)
          job_fail(m, j, t->rc == -ECANCELED ? "an earlier step failed"
                                             : t->err);
        break;
      }
      j->state = JOB_DONE;
      snap_save_jobs(m);
      log_info("secondary: snapshot %" PRIu64 " complete: %" PRIu64
               " blocks copied in %.1f s", j->id, j->stored,
               (double)(util_now_ms() - j->started_ms) / 1000);
      snap_take_list(m, t);
      snap_retry_waiting(m);    /* a before-resync hold ends */
      snap_retry_plans(m);
      snap_apply_retention(m);
      break;
    case T_ABORT:
      break;
    case T_DELETE:
      if (t->rc < 0)
        log_error("secondary: deleting snapshot %" PRIu64 ": %s", t->id,
                  t->err);
      snap_take_list(m, t);
      break;
    case T_LIST:
      snap_take_list(m, t);
      break;
    case T_DIFF:
      t->diff_done(t->diff_arg, t->rc < 0 ? NULL : t->text, t->err);
      break;
    case T_PLAN:
      t->plan_done(t->plan_arg, t->rc < 0 ? NULL : t->plan, t->plan_len,
                   t->err);
      break;
    case T_STOP:
      break;
    }
    task_free(t);
  }
  job_reap(m);
  snap_copier_kick(m);
}

/* ---- reads: the copier and copy-before-write ---- */

static bool
read_overlaps(const struct snapmgr *m, uint64_t off, uint64_t len)
{
  const struct snap_read *r;

  TAILQ_FOREACH(r, &m->reads, q)
    if (off < r->off + r->len && r->off < off + len)
      return true;
  return false;
}

/* Hand every claimed block of a finished read to the store thread. */
static void
read_hand_over(struct snapmgr *m, struct snap_read *r)
{
  uint64_t nblocks = r->len / STORE_BLOCK;

  for (uint64_t i = 0; i < nblocks; i++) {
    struct snap_job *j = r->owner[i];
    struct task *t;
    if (!j)
      continue;
    j->reads--;
    if (!snapjob_live(j))
      continue;
    t = task_new(T_BLOCK, j);
    t->block = r->off / STORE_BLOCK + i;
    t->data = malloc(STORE_BLOCK);
    if (!t->data)
      abort();
    memcpy(t->data, r->buf + i * STORE_BLOCK, STORE_BLOCK);
    m->queued_blocks++;
    task_post(m, t);
  }
}

static void
read_free(struct snap_read *r)
{
  free(r->buf);
  free(r->owner);
  snapjobs_jclaims_free(&r->jc);
  free(r);
}

/* Copy-before-write: the old contents of the blocks some snapshot being
 * copied holds, durable in the journal before the write starts. */
static void
read_journal(struct snapmgr *m, struct snap_read *r)
{
  uint64_t *ids;
  uint8_t *data;
  char err[512];

  if (!r->jc.n)
    return;
  /* A snapshot committed meanwhile needs nothing more. */
  for (size_t k = 0; k < r->jc.n; k++)
    if (snapjob_live(r->jc.job[k]))
      break;
    else if (k + 1 == r->jc.n)
      return;
  ids = malloc(r->jc.n * sizeof *ids);
  data = malloc(r->jc.n * STORE_BLOCK);
  if (!ids || !data)
    abort();
  for (size_t k = 0; k < r->jc.n; k++) {
    ids[k] = r->jc.job[k]->id;
    memcpy(data + k * STORE_BLOCK,
           r->buf + (r->jc.block[k] * STORE_BLOCK - r->off), STORE_BLOCK);
  }
  if (snapjournal_append(m->journal, ids, r->jc.block, data, r->jc.n, err,
                         sizeof err) < 0) {
    for (size_t k = 0; k < r->jc.n; k++)
      if (job_find(m, r->jc.job[k]) && snapjob_live(r->jc.job[k]))
        job_fail(m, r->jc.job[k], err);
  }
  free(ids);
  free(data);
}

static void
read_done_cb(struct aio_op *aop, long res)
{
  struct snap_read *r = aop->opaque;
  struct snapmgr *m = r->m;
  struct snap_job *j;

  TAILQ_REMOVE(&m->reads, r, q);
  if (!r->op)
    m->copier_reads--;
  if (res < 0) {
    char why[300];
    snprintf(why, sizeof why, "reading the replica at %" PRIu64 ": %s",
             r->off, strerror((int)-res));
    for (uint64_t i = 0; i < r->len / STORE_BLOCK; i++)
      if ((j = r->owner[i]) != NULL) {
        j->reads--;
        if (j->state == JOB_COPYING)
          job_fail(m, j, why);
        r->owner[i] = NULL;
      }
  } else {
    read_journal(m, r);
    read_hand_over(m, r);
  }
  /* The op whose old contents were saved may write now. */
  for (size_t k = 0; k < r->jc.n; k++)
    r->jc.job[k]->reads--;
  if (r->op)
    replica_start(m->s->replica, r->a, r->op);
  for (uint64_t i = 0; i < r->len / STORE_BLOCK; i++)
    if (r->owner[i])
      job_maybe_commit(m, r->owner[i]);
  read_free(r);
  TAILQ_FOREACH(j, &m->jobs, q)
    job_maybe_commit(m, j);
  job_reap(m);
  snap_retry_waiting(m);
  snap_copier_kick(m);
}

/* Claim the pending blocks of [off, off+len) for whichever job has them;
 * true if any was claimed. */
static bool
read_claim(struct snapmgr *m, struct snap_read *r)
{
  r->owner = calloc(r->len / STORE_BLOCK, sizeof *r->owner);
  if (!r->owner)
    abort();
  return snapjobs_claim(&m->jobs, r->off, r->len, r->owner);
}

static void
read_start(struct snapmgr *m, struct snap_read *r)
{
  r->m = m;
  r->buf = util_alloc_aligned(r->len);
  if (!r->buf)
    abort();
  TAILQ_INSERT_TAIL(&m->reads, r, q);
  aio_pread(m->aio, &r->aio, replica_fd(m->s->replica), r->buf, r->len,
            r->off, read_done_cb, r);
}

/* How much of [off, off+len) from off on is a hole of the replica
 * (SEEK_DATA; 0 where that cannot be told). */
static uint64_t
copier_hole(struct snapmgr *m, uint64_t off, uint64_t len)
{
  off_t d = lseek(replica_fd(m->s->replica), (off_t)off, SEEK_DATA);

  if (d < 0)
    return errno == ENXIO ? len : 0;    /* ENXIO: no data after off */
  if ((uint64_t)d <= off)
    return 0;
  return MIN((uint64_t)d - off, len) & ~(uint64_t)(STORE_BLOCK - 1);
}

/* A hole of the replica in a pending run: claimed and handed to the store
 * thread as zero ranges, nothing read.  The blocks were not written since
 * their snapshot was taken (a write claims them first), so they were zero
 * then too. */
static void
copier_take_hole(struct snapmgr *m, uint64_t off, uint64_t len)
{
  uint64_t n = len / STORE_BLOCK, i = 0;
  struct snap_job **owner = calloc(n, sizeof *owner);

  if (!owner)
    abort();
  snapjobs_claim(&m->jobs, off, len, owner);
  while (i < n) {
    uint64_t k = i + 1;
    struct task *t;
    if (!owner[i]) {
      i++;
      continue;
    }
    while (k < n && owner[k] == owner[i])
      k++;
    for (uint64_t x = i; x < k; x++)
      owner[x]->reads--;
    t = task_new(T_ZERO, owner[i]);
    t->block = off / STORE_BLOCK + i;
    t->count = k - i;
    task_post(m, t);
    i = k;
  }
  free(owner);
}

static void
snap_copier_kick(struct snapmgr *m)
{
  struct snap_job *j;

  /* Stopping: no new reads (those in flight are waited for). */
  if (!replica_is_open(m->s->replica) || m->s->stopping)
    return;
  TAILQ_FOREACH(j, &m->jobs, q) {
    uint64_t off, len, hole;
    if (j->state != JOB_COPYING)
      continue;
    /* j->copy_from: every pending block before it is claimed (pending
     * only shrinks), so the search does not start over each time. */
    while (m->copier_reads < SNAP_COPY_INFLIGHT &&
           m->queued_blocks < SNAP_QUEUE_MAX &&
           (!m->copy_rate || m->copy_budget > 0) &&
           bitmap_next_run(j->pending, j->copy_from, SNAP_COPY_CHUNK, &off,
                           &len)) {
      if ((hole = copier_hole(m, off, len)) > 0) {
        copier_take_hole(m, off, hole);
        j->copy_from = off + hole;
        continue;
      }
      j->copy_from = off + len;
      m->copy_budget -= (int64_t)len;
      struct snap_read *r = calloc(1, sizeof *r);
      if (!r)
        abort();
      r->off = off;
      r->len = len;
      read_claim(m, r);
      m->copier_reads++;
      read_start(m, r);
    }
    job_maybe_commit(m, j);
  }
}

/* ---- the apply backend in front of the replica ---- */

static void snap_take(struct snapmgr *m, struct apply_op *op);

/* Start op, after saving what some snapshot still needs. */
static void
snap_start_op(struct snapmgr *m, struct apply *a, struct apply_op *op)
{
  uint64_t start, end;
  struct snap_read *r;

  if (op->type == APPLY_MARK && op->tag == SNAP_MARK_TAG &&
      op->io == APPLY_IO_SYNC) {
    snap_take(m, op);
    replica_start(m->s->replica, a, op);
    return;
  }
  if ((op->io != APPLY_IO_WRITE && op->io != APPLY_IO_ZERO) ||
      op->length == 0) {
    replica_start(m->s->replica, a, op);
    return;
  }
  start = op->offset & ~(uint64_t)(STORE_BLOCK - 1);
  end = (op->offset + op->length + STORE_BLOCK - 1) &
        ~(uint64_t)(STORE_BLOCK - 1);
  if (read_overlaps(m, start, end - start) ||
      snapjobs_held(&m->jobs, start, end - start)) {
    struct snap_wait *w = calloc(1, sizeof *w);
    if (!w)
      abort();
    w->a = a;
    w->op = op;
    TAILQ_INSERT_TAIL(&m->waiting, w, q);
    return;
  }
  bitmap_set_range(m->dirty, start, end - start);
  r = calloc(1, sizeof *r);
  if (!r)
    abort();
  r->off = start;
  r->len = end - start;
  r->a = a;
  r->op = op;
  if (!TAILQ_EMPTY(&m->jobs) &&
      (snapjobs_claim_journal(&m->jobs, r->off, r->len, &r->jc) |
       read_claim(m, r))) {
    read_start(m, r);           /* the write follows in read_done_cb */
    return;
  }
  read_free(r);
  replica_start(m->s->replica, a, op);
}

static void
snap_retry_waiting(struct snapmgr *m)
{
  struct waitq q = TAILQ_HEAD_INITIALIZER(q);
  struct snap_wait *w;

  TAILQ_CONCAT(&q, &m->waiting, q);
  while ((w = TAILQ_FIRST(&q)) != NULL) {
    TAILQ_REMOVE(&q, w, q);
    snap_start_op(m, w->a, w->op);
    free(w);
  }
}

void
snap_backend_start(void *opaque, struct apply *a, struct apply_op *op)
{
  struct snapmgr *m = opaque;

  if (!m->store) {
    replica_start(m->s->replica, a, op);
    return;
  }
  snap_start_op(m, a, op);
}

/* ---- taking a snapshot ---- */

/* At the barrier of a snapshot MARK: nothing before it is in flight,
 * nothing after it has started. */
static void
snap_take(struct snapmgr *m, struct apply_op *op)
{
  struct snap_req *req = *(struct snap_req **)op->mem;
  struct snap_job *j;
  uint64_t size = replica_size(m->s->replica);
  char err[300];

  TAILQ_REMOVE(&m->reqs, req, q);
  if (!replica_is_open(m->s->replica) || size == 0) {
    snprintf(err, sizeof err, "there is no replica yet (no primary has "
             "connected)");
    req->done(req->arg, 0, err);
    free(req);
    return;
  }
  j = snapjob_new(m->next_id++, size);
  snprintf(j->meta.name, sizeof j->meta.name, "%s", req->name);
  j->meta.created_ns = util_wall_ns();
  if (!req->epoch) {
    struct apply_stats st;
    apply_get_stats(m->s->apply, &st);
    req->epoch = st.epoch;
  }
  j->meta.epoch = req->epoch;
  j->meta.reason = (uint8_t)req->reason;
  j->meta.size_bytes = size;
  j->meta.id = j->id;
  memcpy(j->meta.volume_uuid, meta_get(m->s->meta)->volume_uuid, 16);
  j->full = m->n_list == 0 && !snapjobs_any_live(&m->jobs);
  j->rescan = m->first_rescan && !j->full;
  j->meta.drop_same = j->rescan;
  j->hold = req->reason == SNAP_BEFORE_RESYNC;
  j->started_ms = util_now_ms();
  /* Every block when the changes are not known (or the size changed). */
  snapjobs_fill(&m->jobs, j, m->dirty, j->full || j->rescan ||
                bitmap_bits(m->dirty) != bitmap_bits(j->pending));
  /* From now on dirty counts the changes after this snapshot. */
  bitmap_free(m->dirty);
  m->dirty = bitmap_new(size, STORE_BLOCK);
  if (!m->dirty)
    abort();
  m->first_rescan = false;
  m->taken++;
  m->last_ms_wall = j->meta.created_ns / 1000000;
  TAILQ_INSERT_TAIL(&m->jobs, j, q);
  /* Durable before anyone is told it exists. */
  if (snap_save_jobs(m) < 0) {
    j->state = JOB_FAILED;
    m->failed++;
    m->first_rescan = true;
    req->done(req->arg, 0, m->last_error);
    free(req);
    job_reap(m);
    return;
  }
  task_post(m, task_new(T_BEGIN, j));
  log_info("secondary: snapshot %" PRIu64 " taken (%s%s%s), epoch %" PRIu64
           ": %" PRIu64 " blocks to copy%s", j->id,
           format_reason_name(j->meta.reason), j->meta.name[0] ? ", " : "",
           j->meta.name, j->meta.epoch, j->total,
           j->full ? " (the first: every block)"
           : j->rescan ? " (compared with the last snapshot: what changed "
                         "while this agent was stopped is not known)" : "");
  req->done(req->arg, j->id, NULL);
  free(req);
  snap_copier_kick(m);
}

int
snap_request(struct snapmgr *m, unsigned reason, const char *name,
             uint64_t epoch, snap_done_fn done, void *arg, char *err,
             size_t errlen)
{
  struct snap_req *req;
  struct apply_op *op;

  if (!m || !m->store) {
    snprintf(err, errlen, "snapshots are not enabled: start duplex-secondary "
             "with --snapshot-store DIR");
    return -1;
  }
  if (strlen(name) > STORE_NAME_MAX) {
    snprintf(err, errlen, "a snapshot name is at most %u bytes",
             STORE_NAME_MAX);
    return -1;
  }
  if (!replica_is_open(m->s->replica)) {
    snprintf(err, errlen, "there is no replica yet (no primary has "
             "connected)");
    return -1;
  }
  if (apply_failed(m->s->apply)) {
    snprintf(err, errlen, "applying is paused after an I/O error (%s); "
             "resume first", m->s->st.pause_reason);
    return -1;
  }
  req = calloc(1, sizeof *req);
  op = apply_op_new(APPLY_MARK);
  if (!req || !op)
    abort();
  req->reason = reason;
  snprintf(req->name, sizeof req->name, "%s", name);
  req->epoch = epoch;
  req->done = done;
  req->arg = arg;
  req->since_ms = util_now_ms();
  op->tag = SNAP_MARK_TAG;
  op->mem = malloc(sizeof req);
  if (!op->mem)
    abort();
  memcpy(op->mem, &req, sizeof req);
  req->queued = true;
  TAILQ_INSERT_TAIL(&m->reqs, req, q);
  /* The MARK may start (and req be answered and freed) right here. */
  if (apply_queue(m->s->apply, op) == -1) {
    TAILQ_REMOVE(&m->reqs, req, q);
    free(req);
    snprintf(err, errlen, "applying is paused; resume first");
    return -1;
  }
  return 0;
}

/* ---- life cycle ---- */

static void
snap_replay_one(void *arg, uint64_t id, uint64_t block, const uint8_t *data)
{
  struct snapmgr *m = arg;
  struct snap_job *j;
  uint64_t off = block * STORE_BLOCK;

  TAILQ_FOREACH(j, &m->jobs, q) {
    struct task *t;
    if (j->id != id || !snapjob_live(j) || off >= j->meta.size_bytes)
      continue;
    bitmap_set_range(j->journaled, off, STORE_BLOCK);
    if (!bitmap_test(j->pending, off))
      return;                   /* an older record of the same block */
    bitmap_clear_range(j->pending, off, STORE_BLOCK);
    j->claimed++;
    t = task_new(T_BLOCK, j);
    t->block = block;
    t->data = malloc(STORE_BLOCK);
    if (!t->data)
      abort();
    memcpy(t->data, data, STORE_BLOCK);
    m->queued_blocks++;
    task_post(m, t);
    return;
  }
}

/* Snapshots that were being copied when the agent stopped (or crashed)
 * are copied again: journaled blocks from the journal, the rest of their
 * sets from the replica. */
static void
snap_resume(struct snapmgr *m)
{
  struct snapjournal_job *v;
  size_t n, resumed = 0;
  char err[512];
  int replayed;

  if (snapjournal_load_jobs(m->journal, &v, &n, err, sizeof err) < 0) {
    log_error("secondary: the snapshots being copied when this agent "
              "stopped are lost: %s", err);
    snapjournal_reset(m->journal);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    struct snap_job *j;
    bool listed = false;
    for (size_t k = 0; k < m->n_list; k++)
      if (m->list[k].id == v[i].id)
        listed = true;
    if (listed || v[i].id < m->next_id || !replica_is_open(m->s->replica) ||
        v[i].size != replica_size(m->s->replica)) {
      if (!listed)
        log_warn("secondary: snapshot %" PRIu64 " was being copied when "
                 "this agent stopped and cannot be finished (the replica "
                 "changed size or is gone); it is not kept", v[i].id);
      continue;
    }
    j = snapjob_new(v[i].id, v[i].size);
    j->meta = v[i].meta;
    j->meta.id = j->id;
    j->full = v[i].full;
    j->rescan = v[i].rescan;
    j->meta.drop_same = j->rescan;
    j->hold = j->meta.reason == SNAP_BEFORE_RESYNC;
    j->resumed = true;
    j->started_ms = util_now_ms();
    if (bitmap_word_count(j->set) != v[i].n_words) {
      log_warn("secondary: snapshot %" PRIu64 ": its saved block set does "
               "not fit the replica; it is not kept", j->id);
      snapjob_free(j);
      continue;
    }
    bitmap_or_words(j->set, v[i].set_words, v[i].n_words);
    bitmap_recount(j->set);
    bitmap_or_words(j->pending, v[i].set_words, v[i].n_words);
    bitmap_recount(j->pending);
    j->total = bitmap_dirty_bytes(j->set) / STORE_BLOCK;
    TAILQ_INSERT_TAIL(&m->jobs, j, q);
    task_post(m, task_new(T_BEGIN, j));
    m->next_id = MAX(m->next_id, j->id + 1);
    resumed++;
  }
  snapjournal_free_jobs(v, n);
  replayed = snapjournal_replay(m->journal, snap_replay_one, m);
  snap_save_jobs(m);
  if (resumed)
    log_info("secondary: %zu snapshot%s being copied when this agent "
             "stopped resumed (%d blocks from the journal)", resumed,
             resumed == 1 ? "" : "s", replayed);
}

int
snap_new(struct secondary *s, struct aio_ctx *aio, struct snapmgr **out,
         char *err, size_t errlen)
{
  struct snapmgr *m = calloc(1, sizeof *m);
  struct gc_stats gs;
  struct task t = { 0 };
  int rc;

  *out = NULL;
  if (!m)
    abort();
  m->s = s;
  m->aio = aio;
  TAILQ_INIT(&m->jobs);
  TAILQ_INIT(&m->reads);
  TAILQ_INIT(&m->waiting);
  TAILQ_INIT(&m->reqs);
  TAILQ_INIT(&m->todo);
  TAILQ_INIT(&m->done);
  TAILQ_INIT(&m->plans_waiting);
  m->efd = -1;
  if (!s->cfg.snapshot_store) {
    *out = m;                   /* snapshots off: a pass-through backend */
    return 0;
  }
  snprintf(m->store_dir, sizeof m->store_dir, "%s", s->cfg.snapshot_store);
  m->keep = s->cfg.keep;
  m->every_ms = s->cfg.snapshot_every_ms;
  m->copy_rate = s->cfg.snapshot_copy_rate;
  m->budget_ms = util_now_ms();
  rc = store_open(m->store_dir, STORE_CREATE | STORE_WRITE, &m->store, err,
                  errlen);
  if (rc < 0)
    goto fail;
  /* Finish whatever an interrupted delete left behind. */
  if ((rc = store_gc(m->store, false, &gs, err, errlen)) < 0)
    goto fail;
  thr_list(m, &t);
  if (t.rc < 0) {
    snprintf(err, errlen, "%s", t.err);
    free(t.list);
    rc = t.rc;
    goto fail;
  }
  m->list = t.list;
  m->n_list = t.n_list;
  m->store_bytes = t.store_bytes;
  m->next_id = store_catalog(m->store)->next_id;
  if (snapjournal_open(s->cfg.meta, &m->journal, err, errlen) < 0) {
    rc = -EIO;
    goto fail;
  }
  m->first_rescan = true;
  if (m->n_list)
    m->last_ms_wall = m->list[m->n_list - 1].created_ns / 1000000;
  m->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (m->efd < 0) {
    rc = -errno;
    snprintf(err, errlen, "eventfd: %s", strerror(errno));
    goto fail;
  }
  m->done_ev = event_new(s->base, m->efd, EV_READ | EV_PERSIST, snap_done_cb,
                         m);
  if (!m->done_ev || event_add(m->done_ev, NULL) == -1)
    abort();
  pthread_mutex_init(&m->mu, NULL);
  pthread_mutex_init(&m->store_lock, NULL);
  /* Snapshots being copied write and sync their objects without it: a
   * FETCH or an export's read waits for memory work, not for a disk. */
  store_set_io_lock(m->store, &m->store_lock);
  pthread_cond_init(&m->cv, NULL);
  if ((rc = pthread_create(&m->thr, NULL, thr_main, m)) != 0) {
    snprintf(err, errlen, "cannot start the store thread: %s", strerror(rc));
    rc = -rc;
    goto fail;
  }
  m->thr_started = true;
  snap_resume(m);
  snap_copier_kick(m);
  if (m->every_ms)
    m->next_ms = util_now_ms() + m->every_ms;
  log_info("secondary: snapshot store %s: %zu snapshots, %" PRIu64
           " bytes%s", m->store_dir, m->n_list, m->store_bytes,
           m->every_ms ? "; taking one on schedule" : "");
  *out = m;
  return 0;

fail:
  snap_free(m);
  return rc < 0 ? rc : -EINVAL;
}

void
snap_free(struct snapmgr *m)
{
  struct snap_job *j;
  struct snap_req *req;
  struct task *t0;

  if (!m)
    return;
  snap_fetch_end(m);
  while ((t0 = TAILQ_FIRST(&m->plans_waiting)) != NULL) {
    TAILQ_REMOVE(&m->plans_waiting, t0, q);
    t0->plan_done(t0->plan_arg, NULL, 0, "the secondary is stopping");
    task_free(t0);
  }
  while (m->exports) {
    struct snap_export *e = m->exports;
    m->exports = e->next;
    nbd_export_free(e->srv);
    snap_source_close(e->src);
    free(e);
  }
  if (m->thr_started) {
    task_post(m, task_new(T_STOP, NULL));
    pthread_join(m->thr, NULL);
    /* Results nobody will read. */
    while (!TAILQ_EMPTY(&m->done)) {
      struct task *t = TAILQ_FIRST(&m->done);
      TAILQ_REMOVE(&m->done, t, q);
      task_free(t);
    }
    while (!TAILQ_EMPTY(&m->todo)) {
      struct task *t = TAILQ_FIRST(&m->todo);
      TAILQ_REMOVE(&m->todo, t, q);
      task_free(t);
    }
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->store_lock);
    pthread_cond_destroy(&m->cv);
  }
  while ((j = TAILQ_FIRST(&m->jobs)) != NULL) {
    TAILQ_REMOVE(&m->jobs, j, q);
    if (snapjob_live(j))
      log_info("secondary: snapshot %" PRIu64 " is still copying; it is "
               "finished after the next start", j->id);
    if (j->w)
      store_writer_abort(j->w);
    snapjob_free(j);
  }
  while ((req = TAILQ_FIRST(&m->reqs)) != NULL) {
    TAILQ_REMOVE(&m->reqs, req, q);
    req->done(req->arg, 0, "the secondary is stopping");
    free(req);
  }
  if (m->done_ev)
    event_free(m->done_ev);
  if (m->efd >= 0)
    close(m->efd);
  store_close(m->store);
  snapjournal_close(m->journal);
  bitmap_free(m->dirty);
  free(m->list);
  free(m);
}

/* The replica was opened (or sized) for a primary: start tracking. */
void
snap_replica_ready(struct snapmgr *m)
{
  uint64_t size = replica_size(m->s->replica);

  if (!m->store || (m->dirty && bitmap_bits(m->dirty) ==
                                    (size + STORE_BLOCK - 1) / STORE_BLOCK))
    return;
  bitmap_free(m->dirty);
  m->dirty = bitmap_new(size, STORE_BLOCK);
  if (!m->dirty)
    abort();
  m->first_rescan = true;
}

bool
snap_reading(const struct snapmgr *m)
{
  return m && !TAILQ_EMPTY(&m->reads);
}

bool
snap_busy(const struct snapmgr *m)
{
  return m && (!TAILQ_EMPTY(&m->jobs) || !TAILQ_EMPTY(&m->reads));
}

static void
snap_sched_done(void *arg, uint64_t id, const char *err)
{
  (void)arg;
  if (err)
    log_warn("secondary: scheduled snapshot not taken: %s", err);
  else
    log_debug("secondary: scheduled snapshot %" PRIu64 " taken", id);
}

void
snap_tick(struct snapmgr *m)
{
  uint64_t now = util_now_ms();
  struct snap_req *req, *next;
  struct apply_stats st;
  char err[300];

  if (!m || !m->store)
    return;
  /* --snapshot-copy-rate: a budget refilled every tick, at most one
   * second's worth. */
  if (m->copy_rate) {
    m->copy_budget = MIN(m->copy_budget + (int64_t)(m->copy_rate *
                         (now - m->budget_ms) / 1000), (int64_t)m->copy_rate);
    m->budget_ms = now;
    snap_copier_kick(m);
  }
  /* A request whose MARK was dropped with a link (apply_abort): take it
   * here once nothing is in flight. */
  apply_get_stats(m->s->apply, &st);
  for (req = TAILQ_FIRST(&m->reqs); req; req = next) {
    next = TAILQ_NEXT(req, q);
    if (now - req->since_ms < 1000 || st.queued || st.inflight)
      continue;
    TAILQ_REMOVE(&m->reqs, req, q);
    req->since_ms = now;
    {
      struct apply_op *op = apply_op_new(APPLY_MARK);
      if (!op)
        abort();
      op->tag = SNAP_MARK_TAG;
      op->mem = malloc(sizeof req);
      if (!op->mem)
        abort();
      memcpy(op->mem, &req, sizeof req);
      TAILQ_INSERT_TAIL(&m->reqs, req, q);
      if (apply_queue(m->s->apply, op) == -1) {
        TAILQ_REMOVE(&m->reqs, req, q);
        req->done(req->arg, 0, "applying is paused");
        free(req);
      }
    }
  }
  if (m->every_ms && now >= m->next_ms) {
    m->next_ms = now + m->every_ms;
    if (replica_is_open(m->s->replica) &&
        snap_request(m, SNAP_SCHEDULE, "", 0, snap_sched_done, NULL, err,
                     sizeof err) == -1)
      log_debug("secondary: no scheduled snapshot: %s", err);
  }
}

int
snap_delete(struct snapmgr *m, uint64_t id, char *err, size_t errlen)
{
  bool found = false;
  struct task *t;

  if (!m || !m->store) {
    snprintf(err, errlen, "snapshots are not enabled: start duplex-secondary "
             "with --snapshot-store DIR");
    return -1;
  }
  for (size_t i = 0; i < m->n_list; i++)
    if (m->list[i].id == id)
      found = true;
  if (!found) {
    snprintf(err, errlen, "no snapshot %" PRIu64 " (see snapshot list)", id);
    return -1;
  }
  if (m->exports) {
    snprintf(err, errlen, "snapshots are exported over NBD; unexport them "
             "first (a delete rewrites the store under them)");
    return -1;
  }
  if (m->fetch_src) {
    snprintf(err, errlen, "the primary is restoring from snapshot %" PRIu64
             "; delete once the restore is done (a delete rewrites the "
             "store under it)", m->fetch_id);
    return -1;
  }
  t = task_new(T_DELETE, NULL);
  t->id = id;
  task_post(m, t);
  return 0;
}

/* ---- status ---- */

bool
snap_enabled(const struct snapmgr *m)
{
  return m && m->store;
}

void
snap_status_json(const struct snapmgr *m, struct json *j)
{
  const struct snap_job *job;
  uint64_t copying = 0;

  json_obj_begin(j, "snapshots");
  json_bool(j, "enabled", snap_enabled(m));
  if (snap_enabled(m)) {
    json_str(j, "store", m->store_dir);
    json_u64(j, "count", m->n_list);
    json_u64(j, "store_bytes", m->store_bytes);
    json_u64(j, "taken", m->taken);
    json_u64(j, "failed", m->failed);
    if (m->last_ms_wall) {
      char when[32];
      util_rfc3339(m->last_ms_wall * 1000000, when, sizeof when);
      json_str(j, "last", when);
    } else {
      json_null(j, "last");
    }
    TAILQ_FOREACH(job, &m->jobs, q)
      if (snapjob_live(job))
        copying++;
    json_u64(j, "copying", copying);
    job = TAILQ_FIRST(&m->jobs);
    if (job && snapjob_live(job)) {
      json_u64(j, "copying_id", job->id);
      json_u64(j, "copying_blocks_total", job->total);
      json_u64(j, "copying_blocks_done", job->stored);
    }
    if (m->last_error[0])
      json_str(j, "last_error", m->last_error);
  }
  json_obj_end(j);
}

/* One line of `status`: "snapshots:   ..." (nothing without a store). */
void
snap_status_text(const struct snapmgr *m, struct evbuffer *out)
{
  const struct snap_job *job;
  char bytes[32], when[32] = "none yet";
  unsigned copying = 0;

  if (!snap_enabled(m)) {
    evbuffer_add_printf(out, "snapshots:   off (no --snapshot-store)\n");
    return;
  }
  util_format_bytes(m->store_bytes, bytes, sizeof bytes);
  if (m->last_ms_wall)
    util_rfc3339(m->last_ms_wall * 1000000, when, sizeof when);
  TAILQ_FOREACH(job, &m->jobs, q)
    copying += snapjob_live(job);
  evbuffer_add_printf(out, "snapshots:   %zu, store %s (%s), last taken "
                      "%s", m->n_list, m->store_dir, bytes, when);
  job = TAILQ_FIRST(&m->jobs);
  if (job && snapjob_live(job))
    evbuffer_add_printf(out, "; copying %u (snapshot %" PRIu64 ": %" PRIu64
                        " of %" PRIu64 " blocks)", copying, job->id,
                        job->stored, job->total);
  if (m->failed)
    evbuffer_add_printf(out, "; %" PRIu64 " failed", m->failed);
  evbuffer_add_printf(out, "\n");
}

/* The snapshots for `snapshot list`: those in the store, then those still
 * copying. */
size_t
snap_list(const struct snapmgr *m, struct snap_info **out)
{
  const struct snap_job *j;
  size_t n = m->n_list, k = 0;
  struct snap_info *v;

  TAILQ_FOREACH(j, &m->jobs, q)
    if (snapjob_live(j))
      n++;
  v = calloc(n ? n : 1, sizeof *v);
  if (!v)
    abort();
  memcpy(v, m->list, m->n_list * sizeof *v);
  k = m->n_list;
  TAILQ_FOREACH(j, &m->jobs, q) {
    if (!snapjob_live(j))
      continue;
    /* Committed already but not yet listed: skip the duplicate. */
    bool listed = false;
    for (size_t i = 0; i < m->n_list; i++)
      if (m->list[i].id == j->id)
        listed = true;
    if (listed)
      continue;
    v[k].id = j->id;
    snprintf(v[k].name, sizeof v[k].name, "%s", j->meta.name);
    v[k].created_ns = j->meta.created_ns;
    v[k].epoch = j->meta.epoch;
    v[k].reason = j->meta.reason;
    v[k].size_bytes = j->meta.size_bytes;
    v[k].complete = false;
    v[k].copied_blocks = j->stored;
    v[k].total_blocks = j->total;
    k++;
  }
  *out = v;
  return k;
}

/* ---- exports ---- */

/* Snapshot id is in the store's list (complete). */
static bool
snap_complete(const struct snapmgr *m, uint64_t id)
{
  for (size_t i = 0; i < m->n_list; i++)
    if (m->list[i].id == id)
      return true;
  return false;
}


int
snap_export(struct snapmgr *m, uint64_t id, const char *nbd, char *where,
            size_t wlen, char *err, size_t errlen)
{
  struct snap_export *e;
  struct endpoint ep;
  char sub[512], name[64];

  if (!snap_enabled(m)) {
    snprintf(err, errlen, "snapshots are not enabled: start duplex-secondary "
             "with --snapshot-store DIR");
    return -1;
  }
  if (!snap_complete(m, id)) {
    snprintf(err, errlen, "no complete snapshot %" PRIu64 " (see snapshot "
             "list; a copying one can be exported once complete)", id);
    return -1;
  }
  for (e = m->exports; e; e = e->next)
    if (e->id == id) {
      snprintf(err, errlen, "snapshot %" PRIu64 " is already exported on %s",
               id, nbd_export_where(e->srv));
      return -1;
    }
  if (util_parse_endpoint(nbd, &ep, sub, sizeof sub) == -1) {
    snprintf(err, errlen, "--nbd %s: %s", nbd, sub);
    return -1;
  }
  e = calloc(1, sizeof *e);
  if (!e)
    abort();
  e->id = id;
  if (snap_source_open(m->store, id, &m->store_lock, &e->src, err,
                       errlen) < 0) {
    free(e);
    return -1;
  }
  snprintf(name, sizeof name, "snapshot-%" PRIu64, id);
  if (nbd_export_new(m->s->base, &ep, snap_source_get(e->src), name,
                     "duplex snapshot (read-only)", &e->srv, sub,
                     sizeof sub) < 0) {
    snprintf(err, errlen, "--nbd %s: %s", nbd, sub);
    snap_source_close(e->src);
    free(e);
    return -1;
  }
  e->next = m->exports;
  m->exports = e;
  snprintf(where, wlen, "%s", nbd_export_where(e->srv));
  log_info("secondary: snapshot %" PRIu64 " exported read-only on %s", id,
           where);
  return 0;
}

int
snap_unexport(struct snapmgr *m, uint64_t id, char *err, size_t errlen)
{
  struct snap_export **pp, *e;

  for (pp = m ? &m->exports : NULL; pp && *pp; pp = &(*pp)->next)
    if ((*pp)->id == id) {
      e = *pp;
      *pp = e->next;
      nbd_export_free(e->srv);
      snap_source_close(e->src);
      free(e);
      log_info("secondary: snapshot %" PRIu64 " no longer exported", id);
      if (m && !m->exports)
        snap_apply_retention(m);
      return 0;
    }
  snprintf(err, errlen, "snapshot %" PRIu64 " is not exported", id);
  return -1;
}

/* ---- diff ---- */

int
snap_diff(struct snapmgr *m, uint64_t a, uint64_t b, bool json,
          snap_diff_fn done, void *arg, char *err, size_t errlen)
{
  struct task *t;

  if (!snap_enabled(m)) {
    snprintf(err, errlen, "snapshots are not enabled: start duplex-secondary "
             "with --snapshot-store DIR");
    return -1;
  }
  if (!snap_complete(m, a) || !snap_complete(m, b)) {
    snprintf(err, errlen, "no complete snapshot %" PRIu64 " (see snapshot "
             "list)", snap_complete(m, a) ? b : a);
    return -1;
  }
  t = task_new(T_DIFF, NULL);
  t->id = a;
  t->id2 = b;
  t->json = json;
  t->diff_done = done;
  t->diff_arg = arg;
  task_post(m, t);
  return 0;
}

/* ---- restoring the primary: plans and reads of a snapshot ---- */

static bool
snap_copying(struct snapmgr *m, uint64_t id)
{
  struct snap_job *j;

  TAILQ_FOREACH(j, &m->jobs, q)
    if (j->id == id && snapjob_live(j))
      return true;
  return false;
}

/* A snapshot was committed or failed: plans waiting for it go on. */
static void
snap_retry_plans(struct snapmgr *m)
{
  struct task *t, *next;

  for (t = TAILQ_FIRST(&m->plans_waiting); t; t = next) {
    next = TAILQ_NEXT(t, q);
    if (snap_complete(m, t->id2)) {
      TAILQ_REMOVE(&m->plans_waiting, t, q);
      task_post(m, t);
    } else if (!snap_copying(m, t->id2)) {
      char why[160];
      TAILQ_REMOVE(&m->plans_waiting, t, q);
      snprintf(why, sizeof why, "snapshot %" PRIu64 " failed before it was "
               "complete (see the secondary's log)", t->id2);
      t->plan_done(t->plan_arg, NULL, 0, why);
      task_free(t);
    }
  }
}

int
snap_plan(struct snapmgr *m, uint64_t from, uint64_t to, uint64_t size,
          uint32_t grain, snap_plan_fn done, void *arg, char *err,
          size_t errlen)
{
  struct task *t;

  if (!snap_enabled(m)) {
    snprintf(err, errlen, "snapshots are not enabled: start duplex-secondary "
             "with --snapshot-store DIR");
    return -1;
  }
  if (!snap_complete(m, from)) {
    snprintf(err, errlen, "no complete snapshot %" PRIu64 " (see snapshot "
             "list)", from);
    return -1;
  }
  if (!snap_complete(m, to) && !snap_copying(m, to)) {
    snprintf(err, errlen, "no snapshot %" PRIu64 " (see snapshot list)", to);
    return -1;
  }
  for (size_t i = 0; i < m->n_list; i++)
    if (m->list[i].id == from && m->list[i].size_bytes != size) {
      snprintf(err, errlen, "snapshot %" PRIu64 " is of a volume of %" PRIu64
               " bytes, the primary's is %" PRIu64 " bytes", from,
               m->list[i].size_bytes, size);
      return -1;
    }
  if (from == to) {
    /* Nothing differs (the primary's check that it can restore `from`):
     * answered at once, without the store thread. */
    uint64_t bits = (size + grain - 1) / grain;
    size_t len = (size_t)((bits + 63) / 64 * 8);
    uint8_t *img = calloc(1, len ? len : 8);
    if (img == NULL)
      abort();
    done(arg, img, len, NULL);
    free(img);
    return 0;
  }
  t = task_new(T_PLAN, NULL);
  t->id = from;
  t->id2 = to;
  t->plan_size = size;
  t->plan_grain = grain;
  t->plan_done = done;
  t->plan_arg = arg;
  if (snap_complete(m, to))
    task_post(m, t);
  else
    TAILQ_INSERT_TAIL(&m->plans_waiting, t, q);
  return 0;
}

int
snap_fetch(struct snapmgr *m, uint64_t id, uint64_t off, uint32_t len,
           void *buf, char *err, size_t errlen)
{
  const struct nbd_export_source *src;
  char sub[512];

  if (!snap_enabled(m)) {
    snprintf(err, errlen, "snapshots are not enabled: start duplex-secondary "
             "with --snapshot-store DIR");
    return -1;
  }
  if (m->fetch_src == NULL || m->fetch_id != id) {
    if (!snap_complete(m, id)) {
      snprintf(err, errlen, "no complete snapshot %" PRIu64 " (see snapshot "
               "list)", id);
      return -1;
    }
    snap_fetch_end(m);
    if (snap_source_open(m->store, id, &m->store_lock, &m->fetch_src, err,
                         errlen) < 0)
      return -1;
    m->fetch_id = id;
    log_info("secondary: the primary restores from snapshot %" PRIu64
             " (retention waits until it is done)", id);
  }
  src = snap_source_get(m->fetch_src);
  if (off > src->size || len > src->size - off) {
    snprintf(err, errlen, "%" PRIu64 "+%" PRIu32 " is past the end of "
             "snapshot %" PRIu64 " (%" PRIu64 " bytes)", off, len, id,
             src->size);
    return -1;
  }
  if (src->read(src->arg, off, len, buf, sub, sizeof sub) < 0) {
    snprintf(err, errlen, "snapshot %" PRIu64 ": %s", id, sub);
    return -1;
  }
  return 0;
}

void
snap_fetch_end(struct snapmgr *m)
{
  if (m == NULL || m->fetch_src == NULL)
    return;
  snap_source_close(m->fetch_src);
  m->fetch_src = NULL;
  log_info("secondary: restore from snapshot %" PRIu64 " finished or "
           "stopped", m->fetch_id);
  m->fetch_id = 0;
  snap_apply_retention(m);
}
