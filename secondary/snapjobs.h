/* The bookkeeping of snapshots being copied (snap.c): what a new snapshot
 * has to copy, which snapshot a block read belongs to (each block of each
 * snapshot claimed once), whose old contents a write must journal first,
 * which writes a before-resync snapshot holds back, and when a snapshot
 * may commit.  No I/O: snap.c reads the replica, journals and hands the
 * blocks to the store thread. */
#ifndef DUPLEX_SECONDARY_SNAPJOBS_H
#define DUPLEX_SECONDARY_SNAPJOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "bitmap.h"
#include "store.h"

enum job_state { JOB_COPYING, JOB_COMMITTING, JOB_DONE, JOB_FAILED };

struct snap_job {
  struct snap_meta meta;
  uint64_t id;
  bool full;                    /* a full map (the store has nothing yet) */
  bool rescan;                  /* compare every block with the parent */
  bool hold;                    /* before-resync: writes to its set wait */
  enum job_state state;
  struct bitmap *pending;       /* blocks not yet claimed */
  struct bitmap *set;           /* every block of the snapshot */
  struct bitmap *journaled;     /* old contents saved in the journal */
  bool resumed;                 /* from before a restart */
  uint64_t total, claimed;      /* blocks */
  uint64_t stored;              /* blocks the store thread took */
  uint64_t copy_from;           /* the copier's search starts here */
  unsigned reads;               /* claimed reads in flight */
  unsigned tasks;               /* its tasks the store thread has not
                                   given back: it is freed after them */
  uint64_t started_ms;
  /* store thread only */
  struct store_writer *w;
  TAILQ_ENTRY(snap_job) q;
};
TAILQ_HEAD(snap_jobq, snap_job);

/* (job, block) pairs whose old contents are journaled before a write. */
struct snap_jclaims {
  struct snap_job **job;
  uint64_t *block;
  size_t n, cap;
};

/* A job of id over a volume of size bytes: empty sets, copying. */
struct snap_job *snapjob_new(uint64_t id, uint64_t size);
void snapjob_free(struct snap_job *j);
bool snapjob_live(const struct snap_job *j);     /* copying or committing */
/* Failed or done, and nothing refers to it any more. */
bool snapjob_reapable(const struct snap_job *j);

/* What j (not yet queued) copies: every block (all) less those an earlier
 * job still has pending (they were not written since: that one reads
 * them), or the blocks changed since the newest snapshot (dirty).  Sets
 * set, pending, total. */
void snapjobs_fill(const struct snap_jobq *q, struct snap_job *j,
                   const struct bitmap *dirty, bool all);
/* The blocks of [off, off+len) (block-aligned) that a copying job has
 * pending go to the first such job: cleared from pending, claimed, a read
 * counted.  owner[i] is that job for block i, or NULL; true if any. */
bool snapjobs_claim(struct snap_jobq *q, uint64_t off, uint64_t len,
                    struct snap_job **owner);
/* Before a write to [off, off+len): every (live job, block) whose set has
 * the block and whose old contents are not journaled yet is marked
 * journaled, counted as a read and appended to c; true if any. */
bool snapjobs_claim_journal(struct snap_jobq *q, uint64_t off, uint64_t len,
                            struct snap_jclaims *c);
void snapjobs_jclaims_free(struct snap_jclaims *c);
/* A live before-resync job's set touches [off, off+len). */
bool snapjobs_held(const struct snap_jobq *q, uint64_t off, uint64_t len);
/* j may commit: copying, all claimed, no read in flight, and no earlier
 * job still copying (commits go in snapshot order: a delta is built on
 * the newest snapshot at its commit). */
bool snapjobs_may_commit(const struct snap_jobq *q, const struct snap_job *j);
bool snapjobs_any_live(const struct snap_jobq *q);
/* j and every later live job (their deltas build on it) become failed;
 * fn runs for each.  Returns how many. */
unsigned snapjobs_fail_from(struct snap_job *j,
                            void (*fn)(struct snap_job *, void *), void *arg);

#endif
