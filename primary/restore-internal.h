/* duplex-primary's restore (restore.c, restore-plan.c, restore-fetch.c):
 * what the three files share.  Not for other modules: they use the
 * restore_* functions in internal.h. */
#ifndef DUPLEX_PRIMARY_RESTORE_INTERNAL_H
#define DUPLEX_PRIMARY_RESTORE_INTERNAL_H

#include "internal.h"

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


/* From RST_DONE on the restore is over: done, or not started (why in
 * error; nothing was changed). */
enum rst_phase { RST_CHECK, RST_WAIT_SYNC, RST_SNAPSHOT, RST_PLAN,
                 RST_COPY, RST_FINISH, RST_DONE, RST_NOT_STARTED };

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
  void (*read_cont)(struct req *r); /* how they go on */
  struct rst_holdq holds;       /* client writes held (not fetching) */
  uint64_t demand_bytes;        /* fetched for clients */
  uint64_t demand_fetches;
  int64_t budget;               /* --restore-rate: bytes the copy may fetch */
  uint64_t budget_ms;
  char error[9000];             /* the last failure, "" if none */
};

static inline bool
rst_instant(const struct restore *rs)
{
  return (rs->hdr.flags & RESTORE_F_INSTANT) != 0;
}

/* restore.c */
/* Not started: answer the command with why (rs->error), nothing changed. */
void rst_not_started(struct restore *rs);
const char *rst_phase_name(enum rst_phase ph);
void rst_source_text(const struct restore *rs, char *out, size_t len);
/* Cleared bits to the record, after the volume is synced.  0 or -errno
 * (rs->error says what). */
int rst_flush_record(struct restore *rs);
/* The plan is known (todo holds it): persist, go on to COPY. */
void rst_planned(struct restore *rs);
/* Something finished: go on with whatever the phase allows. */
void rst_pump(struct restore *rs);
void rst_finish(struct restore *rs);
/* RESTORE_PLAN of the source against snapshot `to` (unless an op of the
 * restore is in flight). */
void rst_send_plan(struct restore *rs, uint64_t to, repl_acked_fn acked,
                   void (*part)(struct repl_op *op,
                                const Duplex__RestorePlanPart *m,
                                const uint8_t *payload));

/* restore-plan.c */
void rst_plan_snapshot(struct restore *rs);
void rst_plan_replica(struct restore *rs);

/* restore-fetch.c */
void rst_copy(struct restore *rs);
/* Clients waiting for fetches or held go on where they can. */
void rst_wake(struct restore *rs);

#endif
