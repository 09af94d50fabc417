/* duplex-primary, tail capture (--capture tail): replicate a block device
 * that applications write directly, learning which blocks change from the
 * block layer's tracepoints (DESIGN.md "Tail capture").  One section per .c
 * file. */
#ifndef DUPLEX_PRIMARY_TAIL_H
#define DUPLEX_PRIMARY_TAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

/* ---- trace-decode.c: tracepoint records to changed ranges, no I/O ----
 *
 * The layout of block:block_rq_complete differs between kernels (fields
 * were added), so it is read from the event's format text (tracefs
 * events/block/block_rq_complete/format) with libtraceevent; a raw record
 * (perf's PERF_SAMPLE_RAW, the same bytes as the ftrace ring's) is then
 * decoded with the offsets found there. */
struct trace_field {
  unsigned off, size;
};
struct trace_layout {
  struct trace_field dev, sector, nr_sector, error, rwbs;
  unsigned min_len;             /* a record shorter than this is malformed */
};

/* 0, or -1 with the reason in err (not the block_rq_complete format, a
 * field missing or of an unexpected size). */
int trace_layout_parse(const char *format, size_t len,
                       struct trace_layout *l, char *err, size_t errlen);

enum trace_kind {
  TRACE_NONE,                   /* a read, or nothing that changes data */
  TRACE_WRITE,                  /* a write: [off, off+len) changed */
  TRACE_DISCARD,                /* discard or secure erase */
  TRACE_OTHER,                  /* another data-changing op with a range
                                   (write-zeroes shows as 'N') */
  TRACE_FLUSH,                  /* a flush without data */
};

struct trace_change {
  enum trace_kind kind;
  uint32_t dev;                 /* the kernel's encoding: major << 20 | minor */
  uint64_t off, len;            /* bytes */
  int error;                    /* the request's error (0: success) */
  bool preflush;                /* the write was preceded by a flush */
  bool fua;
};

/* Decode one raw record.  0, or -1 if it is malformed (too short, a range
 * past 2^64 bytes).  A failed request still reports its range: the data may
 * have changed partly. */
int trace_decode(const struct trace_layout *l, const void *raw, size_t len,
                 struct trace_change *out);

/* The kernel's dev_t of a tracepoint record for a device number. */
uint32_t trace_kdev(unsigned major, unsigned minor);

/* perf ring buffers (perf_event_open's mmap, sample_type PERF_SAMPLE_RAW):
 * positions are free-running byte counts like data_head and data_tail.
 * Takes the record at *tail (one that wraps is copied into scratch) and
 * advances *tail past it: 1 with *rec, *rec_len (header included), 0 when
 * *tail == head, -1 when the ring is inconsistent (a record shorter than
 * its header, past head, or larger than scratch): the reader must drop the
 * whole ring and count it as lost. */
int trace_ring_next(const uint8_t *data, uint64_t size, uint64_t head,
                    uint64_t *tail, uint8_t *scratch, size_t scratch_len,
                    const uint8_t **rec, size_t *rec_len);

enum trace_rec {
  TRACE_REC_CHANGE,             /* a sample: *c is set */
  TRACE_REC_LOST,               /* records were lost: *lost of them */
  TRACE_REC_OTHER,              /* nothing for us */
  TRACE_REC_BAD,                /* a sample that does not decode */
};
/* One record of a perf ring. */
enum trace_rec trace_perf_record(const struct trace_layout *l,
                                 const uint8_t *rec, size_t len,
                                 struct trace_change *c, uint64_t *lost);

/* ---- trace-perf.c: change capture from the block tracepoints ---- */
struct trace_device {
  unsigned major, minor;        /* the device tailed */
  unsigned disk_major, disk_minor; /* its disk (itself, or a partition's) */
  uint64_t start;               /* bytes: where it starts on the disk */
  uint64_t size;                /* bytes */
};
/* The device behind path: a block device, request-based; 0 or -1 with a
 * message saying what to do instead. */
int trace_device_resolve(const char *path, struct trace_device *d,
                         char *err, size_t errlen);

struct trace_capture_config {
  const char *path;             /* for messages */
  struct trace_device dev;
  unsigned ring_pages;          /* per CPU, a power of two */
  unsigned poll_ms;             /* drain at least this often */
};
struct trace_capture_events {
  /* A write, discard or write-zeroes completed on [off, off+len) of the
   * device (bytes from its start). */
  void (*changed)(void *arg, uint64_t off, uint64_t len);
  /* n records were lost: some change is unknown. */
  void (*lost)(void *arg, uint64_t n);
  /* The records read so far were delivered. */
  void (*batch_done)(void *arg);
  void *arg;
};
struct trace_capture_counters {
  uint64_t records;             /* decoded, any device */
  uint64_t changes, bytes_changed; /* of this device's volume */
  uint64_t flushes;
  uint64_t lost;                /* records lost (overruns, bad records) */
  uint64_t bad;
  uint64_t drains;
};
struct trace_capture;
/* Attach to the tracepoint on every CPU (the rings are drained on the
 * loop).  NULL with the reason in err. */
struct trace_capture *trace_capture_open(struct event_base *base,
                                         const struct trace_capture_config *cfg,
                                         const struct trace_capture_events *ev,
                                         char *err, size_t errlen);
/* Deliver every record in the rings now (a consistency point: after
 * FIFREEZE returned, every write before it is in the rings). */
void trace_capture_drain(struct trace_capture *tc);
void trace_capture_close(struct trace_capture *tc);
void trace_capture_get_counters(const struct trace_capture *tc,
                                struct trace_capture_counters *c);

/* ---- point.c: consistency points, the state machine (no I/O) ----
 *
 * The driver (tail.c) performs each action and reports its outcome with
 * point_event, which returns the next action. */
enum point_state {
  POINT_IDLE, POINT_PRE_HOOK, POINT_FREEZING, POINT_DRAINING, POINT_MARKING,
  POINT_THAWING, POINT_POST_HOOK, POINT_DONE, POINT_FAILED,
};
enum point_action {
  POINT_ACT_NONE,               /* wait for the outcome of the last one */
  POINT_ACT_PRE_HOOK,           /* run --pre-hook */
  POINT_ACT_FREEZE,             /* FIFREEZE the mount point */
  POINT_ACT_DRAIN,              /* drain the trace, wait until every
                                   captured change is on the secondary */
  POINT_ACT_MARK,               /* place the snapshot marker */
  POINT_ACT_THAW,               /* FITHAW */
  POINT_ACT_POST_HOOK,          /* run --post-hook */
  POINT_ACT_FINISH,             /* report the result (state DONE/FAILED) */
};
enum point_event {
  POINT_EV_PRE_HOOK_DONE, POINT_EV_FROZEN, POINT_EV_DRAINED,
  POINT_EV_MARKED, POINT_EV_THAWED, POINT_EV_POST_HOOK_DONE,
  POINT_EV_ABORT,               /* time limit, link lost, agent stopping */
};
struct point_config {
  bool freeze;                  /* a mount point to freeze */
  const char *pre_hook, *post_hook; /* or NULL */
};
struct point {
  struct point_config cfg;
  enum point_state state;
  enum point_action action;     /* the last one returned */
  bool pre_hook_ran;            /* succeeded: its post-hook must run */
  bool frozen;                  /* frozen and not thawed */
  bool thaw_sent, thaw_failed, post_hook_sent;
  bool marked;                  /* the snapshot was taken */
  bool failed;
  char error[256];              /* the first failure */
};
/* Begin a point: pt->action is the first action. */
void point_start(struct point *pt, const struct point_config *cfg);
/* An outcome (ok, or !ok with why) of the current step, or an abort;
 * events that do not belong to the current state are ignored.  Returns
 * the next action. */
enum point_action point_event(struct point *pt, enum point_event ev, bool ok,
                              const char *why);
bool point_finished(const struct point *pt);
const char *point_state_name(enum point_state s);

/* ---- freeze.c: FIFREEZE held by a watchdog process ---- */
struct freezer;
/* what: 'F' frozen, 'T' thawed as asked (or here, the watchdog having
 * died), 'X' thawed by the watchdog at its time limit; err: 0 or errno. */
typedef void (*freezer_fn)(void *arg, char what, int err);
/* Fork the watchdog, which freezes path and reports 'F'.  NULL with err
 * if it could not be started. */
struct freezer *freezer_start(struct event_base *base, const char *path,
                              unsigned timeout_ms, freezer_fn fn, void *arg,
                              char *err, size_t errlen);
/* Ask for the thaw ('T' follows; nothing if thawed already). */
void freezer_thaw(struct freezer *f);
bool freezer_thawed(const struct freezer *f);
/* Close the watchdog's socket (it thaws if still frozen) and reap it. */
void freezer_free(struct freezer *f);

/* ---- hook.c: --pre-hook / --post-hook ---- */
#define HOOK_TIMED_OUT (-1000)
struct hook;
/* status: the exit code, -SIGNAL if killed, HOOK_TIMED_OUT; output: what
 * it printed (the first 1 KiB). */
typedef void (*hook_fn)(void *arg, int status, const char *output);
/* The environment gets DUPLEX_POINT=point (the snapshot's name). */
struct hook *hook_run(struct event_base *base, const char *cmd,
                      const char *point, unsigned timeout_ms, hook_fn fn,
                      void *arg, char *err, size_t errlen);
/* Kill it (its process group) if it still runs, and free it. */
void hook_free(struct hook *h);

/* ---- tail.c: tail capture in the agent ---- */
struct primary;
struct json;
struct evbuffer;
/* --capture tail: attach the trace, mark the whole device for comparison.
 * 0 or -1 with the reason. */
int tail_start(struct primary *p, char *err, size_t errlen);
/* Detach (the agent stops); a point in progress is abandoned, thawed. */
void tail_stop(struct primary *p);
void tail_free(struct primary *p);
/* The resync's questions in tail mode: compare hashes in this run? hold
 * the in-sync report back (only points report it)? */
bool tail_compare(struct primary *p);
bool tail_hold_in_sync(struct primary *p);
/* The secondary acknowledged an in-sync report. */
void tail_in_sync(struct primary *p);
/* A resync run sent everything marked. */
void tail_run_done(struct primary *p);
/* Acknowledgements arrived: a draining point may go on. */
void tail_progress(struct primary *p);
void tail_link_lost(struct primary *p);
/* duplexctl snapshot create [--freeze MOUNTPOINT] in tail mode. */
int tail_snapshot_command(struct primary *p, const char *mountpoint,
                          const char *name, bool json, struct evbuffer *out);
const char *tail_capture_state(const struct primary *p);
void tail_status_json(struct primary *p, struct json *j);
void tail_status_text(struct primary *p, struct evbuffer *out);

#endif
