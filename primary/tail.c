/* Tail capture in the agent (--capture tail; DESIGN.md "Tail capture").
 *
 * The trace (trace-perf.c) says which ranges of the device completed a
 * write; they go into the bitmap, which is written to the metadata before
 * the block sender (the resync) may act on them, and the sender reads them
 * back from the device and sends them: tail mode is the primary always
 * "ahead", resyncing as changes come.  What the trace cannot account for
 * (the agent's start, lost records) is compared with the secondary by
 * checksums: the whole device is marked and the run compares hashes.
 *
 * Between consistency points the replica is as fresh as possible but not
 * write-ordered, so the secondary is told in-sync (and takes its
 * consistency as established) only at points: pre-hook, freeze, drain the
 * trace and every captured change, in-sync, snapshot marker, thaw,
 * post-hook (point.c is the state machine, this file its driver). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "control.h"
#include "internal.h"
#include "json.h"
#include "log.h"

#define TAIL_POLL_MS 10

/* Why the whole device is being compared: at the start, after lost
 * records, after the statistics counted writes no record reported. */
enum tail_scan_reason { TAIL_SCAN_START, TAIL_SCAN_OVERRUN, TAIL_SCAN_UNTRACED };
static const char *const tail_scan_reasons[] = {
  "start", "overrun", "untraced writes",
};
static const char *const tail_scan_states[] = {
  "scanning (start)", "scanning (overrun)", "scanning (untraced writes)",
};

struct tail {
  struct primary *p;
  struct trace_device dev;
  struct trace_capture *tc;
  /* What the trace could not account for (the agent's start, lost
   * records): compared with the secondary's hashes as the sender reaches
   * it, then cleared.  Traced changes are sent as they are. */
  struct bitmap *scan_bm;
  bool scan;                    /* scan_bm not empty yet */
  enum tail_scan_reason scan_reason;
  uint64_t lag_since_ms;        /* oldest change not yet on the secondary */
  /* Bytes sent (data and zero ranges) by finished runs: after comparing
   * (what the scan found different), and as traced. */
  uint64_t scan_sent, traced_sent;

  /* The consistency point in progress (point_active), or the last one. */
  struct point pt;
  bool point_active;
  bool confirm_sent;            /* in-sync SYNC_STATE sent while draining */
  const char *mountpoint;       /* this point's (mount_buf), or NULL */
  char mount_buf[4096];
  char name[256];
  struct freezer *fz;
  struct hook *hook;
  struct event *deadline;       /* the point's time limit */
  struct event *every;          /* --snapshot-every */
  struct control_pending *reply;
  bool json;
  uint64_t freeze_started_ms, frozen_ms;
  uint64_t points_ok, points_failed, last_snapshot_id;
  uint64_t last_freeze_ms;      /* how long the last point kept it frozen */
  char last_error[256];
};

static void tail_point_step(struct tail *t, enum point_action a);


static void __attribute__((format(printf, 3, 4)))
tail_reply(struct control_pending *r, bool ok, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  control_finish_vprintf(r, ok, fmt, ap);
  va_end(ap);
}

/* ---- capture ---- */

static void
tail_changed(void *arg, uint64_t off, uint64_t len)
{
  struct tail *t = arg;
  struct primary *p = t->p;

  bitmap_set_range(p->oos, off, len);
  if (t->lag_since_ms == 0)
    t->lag_since_ms = util_now_ms();
  /* A change the secondary cannot get now starts a new generation (after
   * the fact: tail mode cannot hold the write back; a restart compares
   * everything anyway). */
  if (!repl_connected(p->repl) && p->need_new_gen &&
      primary_new_generation(p) == 0)
    p->need_new_gen = false;
}

static void
tail_lost(void *arg, bool untraced)
{
  struct tail *t = arg;
  struct primary *p = t->p;

  bitmap_set_all(p->oos);
  bitmap_set_all(t->scan_bm);
  t->scan = true;
  t->scan_reason = untraced ? TAIL_SCAN_UNTRACED : TAIL_SCAN_OVERRUN;
  if (t->lag_since_ms == 0)
    t->lag_since_ms = util_now_ms();
}

/* After each batch of records: the bits are in the metadata file before
 * the sender may clear them (written, not synced: a sync per batch would
 * stall the loop behind the device's writeback; the tick syncs once a
 * second, and a restart compares the whole device anyway), then the
 * sender goes on. */
static void
tail_batch_done(void *arg)
{
  struct tail *t = arg;
  struct primary *p = t->p;

  if (al_write_bitmap(p->al) < 0)
    return; /* logged; retried at the next batch, nothing is sent */
  if (repl_connected(p->repl))
    resync_ensure(p->resync);
  tail_progress(p);
}

/* ---- what the resync asks ---- */

/* The totals of finished runs plus what the current (or last) run has
 * sent: after comparing (the scan) and as traced. */
static void
tail_sent(const struct tail *t, uint64_t *scan, uint64_t *traced)
{
  struct resync_counters rc;

  resync_get_counters(t->p->resync, &rc);
  *scan = t->scan_sent + rc.compared_sent_bytes;
  *traced = t->traced_sent + rc.data_bytes_sent + rc.zero_bytes_sent -
            rc.compared_sent_bytes;
}

void
tail_run_begins(struct primary *p)
{
  struct tail *t = p->tail;
  /* The previous run's counters join the totals before they are reset. */
  tail_sent(t, &t->scan_sent, &t->traced_sent);
}

bool
tail_compare_range(struct primary *p, uint64_t off, uint64_t len)
{
  struct tail *t = p->tail;
  uint64_t o, l;
  bool any = bitmap_next_run(t->scan_bm, off, len, &o, &l) && o < off + len;

  if (any)
    bitmap_clear_range(t->scan_bm, off, len);
  return any;
}

void
tail_in_sync(struct primary *p)
{
  struct tail *t = p->tail;

  if (t->point_active && t->pt.state == POINT_DRAINING && t->confirm_sent)
    tail_point_step(t, point_event(&t->pt, POINT_EV_DRAINED, true, NULL));
}

/* Everything captured is on the secondary. */
static bool
tail_drained(const struct tail *t)
{
  const struct primary *p = t->p;
  return bitmap_dirty_bytes(p->oos) == 0 && !resync_active(p->resync);
}

void
tail_progress(struct primary *p)
{
  struct tail *t = p->tail;

  if (!t)
    return;
  if (tail_drained(t))
    t->lag_since_ms = 0;
  if (t->scan && bitmap_dirty_bytes(t->scan_bm) == 0) {
    /* (its last chunks may still be on the way) */
    log_info("primary: tail capture of %s: the comparison of the whole "
             "device (%s) is done", p->vol.path,
             tail_scan_reasons[t->scan_reason]);
    t->scan = false;
  }
  if (t->point_active && t->pt.state == POINT_DRAINING && !t->confirm_sent &&
      repl_connected(p->repl) && tail_drained(t)) {
    t->confirm_sent = true;
    if (resync_send_in_sync(p->resync) == -1)
      tail_point_step(t, point_event(&t->pt, POINT_EV_ABORT, false,
                                     "the link to the secondary dropped"));
  }
}

void
tail_link_lost(struct primary *p)
{
  struct tail *t = p->tail;
  if (t && t->point_active &&
      (t->pt.state == POINT_DRAINING || t->pt.state == POINT_MARKING))
    tail_point_step(t, point_event(&t->pt, POINT_EV_ABORT, false,
                                   "the link to the secondary dropped"));
}

/* ---- consistency points ---- */

static void
tail_point_finish(struct tail *t)
{
  bool ok = t->pt.state == POINT_DONE;
  struct evbuffer *body = evbuffer_new();

  if (t->frozen_ms)
    t->last_freeze_ms = util_now_ms() - t->frozen_ms;
  if (t->deadline)
    event_del(t->deadline);
  freezer_free(t->fz);
  t->fz = NULL;
  hook_free(t->hook);
  t->hook = NULL;
  t->point_active = false;
  if (ok) {
    t->points_ok++;
    t->last_error[0] = '\0';
    log_info("primary: consistency point %s: snapshot %" PRIu64 " taken%s "
             "(frozen %" PRIu64 " ms)", t->name, t->last_snapshot_id,
             t->mountpoint ? " with the file system frozen" : "",
             t->mountpoint ? t->last_freeze_ms : 0);
  } else {
    t->points_failed++;
    snprintf(t->last_error, sizeof t->last_error, "%s", t->pt.error);
    log_warn("primary: consistency point %s failed: %s", t->name,
             t->pt.error);
  }
  if (t->reply) {
    if (body && ok && t->json)
      evbuffer_add_printf(body, "{\"id\": %" PRIu64 ", \"frozen_ms\": %"
                          PRIu64 "}\n", t->last_snapshot_id,
                          t->mountpoint ? t->last_freeze_ms : 0);
    else if (body && ok)
      evbuffer_add_printf(body, "snapshot %" PRIu64 " taken on the secondary "
                          "at a consistency point%s\n", t->last_snapshot_id,
                          t->mountpoint ? " (file system frozen meanwhile)"
                                        : "");
    else if (body)
      evbuffer_add_printf(body, "snapshot not taken: %s\n", t->pt.error);
    control_finish(t->reply, ok, body);
    t->reply = NULL;
  }
  if (body)
    evbuffer_free(body);
}

static void
tail_deadline(evutil_socket_t fd, short what, void *arg)
{
  struct tail *t = arg;
  char why[128];
  (void)fd;
  (void)what;
  snprintf(why, sizeof why, "not done within --freeze-timeout (%u s)",
           t->p->cfg.freeze_timeout_ms / 1000);
  tail_point_step(t, point_event(&t->pt, POINT_EV_ABORT, false, why));
}

static void
tail_arm_deadline(struct tail *t)
{
  unsigned ms = t->p->cfg.freeze_timeout_ms;
  struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
  event_add(t->deadline, &tv);
}

static void
tail_frozen(void *arg, char what, int err)
{
  struct tail *t = arg;
  char why[8400];

  if (what == 'F') {
    if (err == EXDEV) {
      snprintf(why, sizeof why, "%s is not the file system on %s (not "
               "mounted?); nothing was frozen", t->mountpoint, t->p->vol.path);
    } else if (err) {
      snprintf(why, sizeof why, "cannot freeze %s: %s", t->mountpoint,
               strerror(err));
    } else {
      t->frozen_ms = util_now_ms();
      log_debug("primary: %s frozen in %" PRIu64 " ms", t->mountpoint,
               t->frozen_ms - t->freeze_started_ms);
    }
    tail_point_step(t, point_event(&t->pt, POINT_EV_FROZEN, err == 0,
                                   err ? why : NULL));
    return;
  }
  /* Thawed: as asked ('T'), or by the watchdog at its limit ('X'). */
  if (t->frozen_ms)
    t->last_freeze_ms = util_now_ms() - t->frozen_ms;
  t->frozen_ms = 0;
  if (what == 'X')
    tail_point_step(t, point_event(&t->pt, POINT_EV_ABORT, false,
                                   "the freeze watchdog thawed at its time "
                                   "limit"));
  snprintf(why, sizeof why, "cannot thaw %s: %s", t->mountpoint,
           strerror(err));
  tail_point_step(t, point_event(&t->pt, POINT_EV_THAWED, err == 0,
                                 err ? why : NULL));
}

static void
tail_hook_done(void *arg, int status, const char *output)
{
  struct tail *t = arg;
  bool pre = t->pt.state == POINT_PRE_HOOK;
  const char *which = pre ? "--pre-hook" : "--post-hook";
  char why[300];

  if (output && *output)
    log_info("primary: %s said: %s", which, output);
  if (status == HOOK_TIMED_OUT)
    snprintf(why, sizeof why, "%s did not finish within --freeze-timeout "
             "and was killed", which);
  else if (status < 0)
    snprintf(why, sizeof why, "%s was killed by signal %d", which, -status);
  else
    snprintf(why, sizeof why, "%s exited with status %d", which, status);
  tail_point_step(t, point_event(&t->pt, pre ? POINT_EV_PRE_HOOK_DONE
                                             : POINT_EV_POST_HOOK_DONE,
                                 status == 0, status ? why : NULL));
}

struct tail_mark {
  struct repl_op op;            /* first: the ring holds &op */
  struct tail *t;
};

static void
tail_marked(struct repl_op *op, bool ok)
{
  struct tail_mark *m = (struct tail_mark *)op;
  struct tail *t = m->t;
  bool taken = ok && op->snapshot_done && op->snapshot_done->id != 0;
  char why[300];

  if (taken)
    t->last_snapshot_id = op->snapshot_done->id;
  else if (!ok)
    snprintf(why, sizeof why, "the link to the secondary dropped before "
             "it took the snapshot");
  else
    snprintf(why, sizeof why, "the secondary did not take the snapshot: %s",
             op->snapshot_done && op->snapshot_done->error
                 ? op->snapshot_done->error : "no reason given");
  free(m);
  tail_point_step(t, point_event(&t->pt, POINT_EV_MARKED, taken,
                                 taken ? NULL : why));
}

/* Do what the state machine asks; outcomes come back as events. */
static void
tail_point_step(struct tail *t, enum point_action a)
{
  struct primary *p = t->p;
  char err[256];

  switch (a) {
  case POINT_ACT_NONE:
    return;
  case POINT_ACT_PRE_HOOK:
  case POINT_ACT_POST_HOOK: {
    const char *cmd = a == POINT_ACT_PRE_HOOK ? p->cfg.pre_hook
                                              : p->cfg.post_hook;
    hook_free(t->hook);
    t->hook = hook_run(p->base, cmd, t->name, p->cfg.freeze_timeout_ms,
                       tail_hook_done, t, err, sizeof err);
    if (!t->hook)
      tail_point_step(t, point_event(&t->pt, a == POINT_ACT_PRE_HOOK
                                     ? POINT_EV_PRE_HOOK_DONE
                                     : POINT_EV_POST_HOOK_DONE, false, err));
    return;
  }
  case POINT_ACT_FREEZE:
    t->freeze_started_ms = util_now_ms();
    tail_arm_deadline(t);
    /* The watchdog's own limit is a little later than ours: it thaws if
     * this loop cannot. */
    t->fz = freezer_start(p->base, t->mountpoint,
                          makedev(t->dev.major, t->dev.minor),
                          p->cfg.freeze_timeout_ms + 1000, tail_frozen, t,
                          err, sizeof err);
    if (!t->fz)
      tail_point_step(t, point_event(&t->pt, POINT_EV_FROZEN, false, err));
    return;
  case POINT_ACT_DRAIN:
    if (!t->mountpoint)
      tail_arm_deadline(t);
    t->confirm_sent = false;
    /* After FIFREEZE returned, every write before it is in the rings. */
    trace_capture_drain(t->tc);
    tail_progress(p);
    return;
  case POINT_ACT_MARK: {
    struct tail_mark *m = calloc(1, sizeof *m);
    if (!m)
      abort();
    m->t = t;
    m->op.acked = tail_marked;
    if (repl_send_snapshot(p->repl, &m->op, t->name, 0) == -1)
      tail_marked(&m->op, false);
    return;
  }
  case POINT_ACT_THAW:
    if (!t->fz || freezer_thawed(t->fz))
      tail_point_step(t, point_event(&t->pt, POINT_EV_THAWED, true, NULL));
    else
      freezer_thaw(t->fz);
    return;
  case POINT_ACT_FINISH:
    tail_point_finish(t);
    return;
  }
}

/* Start a point; -1 with the reason in err if one runs or the link is
 * down. */
static int
tail_point_start(struct tail *t, const char *mountpoint, const char *name,
                 char *err, size_t errlen)
{
  struct primary *p = t->p;
  struct point_config pc = {
    .freeze = mountpoint != NULL,
    .pre_hook = p->cfg.pre_hook,
    .post_hook = p->cfg.post_hook,
  };

  if (t->point_active) {
    snprintf(err, errlen, "a consistency point is being taken (%s)",
             point_state_name(t->pt.state));
    return -1;
  }
  if (!repl_connected(p->repl)) {
    snprintf(err, errlen, "the secondary is not connected (link %s)",
             repl_link_state(p->repl));
    return -1;
  }
  if (mountpoint && strlen(mountpoint) >= sizeof t->mount_buf) {
    snprintf(err, errlen, "mount point path too long");
    return -1;
  }
  t->point_active = true;
  t->mountpoint = NULL;
  if (mountpoint) {
    /* (a command's arguments do not outlive it) */
    snprintf(t->mount_buf, sizeof t->mount_buf, "%s", mountpoint);
    t->mountpoint = t->mount_buf;
  }
  t->frozen_ms = 0;
  if (name && *name)
    snprintf(t->name, sizeof t->name, "%s", name);
  else
    snprintf(t->name, sizeof t->name, "point-%" PRIu64 "-%" PRIu64,
             (uint64_t)time(NULL), t->points_ok + t->points_failed + 1);
  point_start(&t->pt, &pc);
  tail_point_step(t, t->pt.action);
  return 0;
}

static void
tail_every(evutil_socket_t fd, short what, void *arg)
{
  struct tail *t = arg;
  char err[256];
  (void)fd;
  (void)what;
  if (tail_point_start(t, t->p->cfg.freeze, NULL, err, sizeof err) == -1)
    log_info("primary: no consistency point this time: %s", err);
}

int
tail_snapshot_command(struct primary *p, const char *mountpoint,
                      const char *name, bool json, struct evbuffer *out)
{
  struct tail *t = p->tail;
  char err[256];

  /* Deferred first: the point may end inside tail_point_start. */
  t->reply = control_defer(p->control);
  t->json = json;
  if (tail_point_start(t, mountpoint, name, err, sizeof err) == -1) {
    struct control_pending *r = t->reply;
    t->reply = NULL;
    tail_reply(r, false, "snapshot not taken: %s", err);
  }
  (void)out;
  return CONTROL_LATER;
}

/* ---- the agent ---- */

int
tail_start(struct primary *p, char *err, size_t errlen)
{
  struct tail *t = calloc(1, sizeof *t);
  struct trace_capture_config cfg;
  struct trace_capture_events ev = {
    .changed = tail_changed,
    .lost = tail_lost,
    .batch_done = tail_batch_done,
  };

  if (!t)
    abort();
  t->p = p;
  p->tail = t;
  if (trace_device_resolve(p->cfg.volume, &t->dev, err, errlen) == -1)
    return -1;
  if (t->dev.size != p->vol.size) {
    snprintf(err, errlen, "%s: the kernel says %" PRIu64 " bytes, the "
             "device %" PRIu64, p->cfg.volume, t->dev.size, p->vol.size);
    return -1;
  }
  memset(&cfg, 0, sizeof cfg);
  cfg.path = p->vol.path;
  cfg.dev = t->dev;
  cfg.ring_pages = p->cfg.trace_buffer_pages;
  cfg.poll_ms = TAIL_POLL_MS;
  ev.arg = t;
  t->tc = trace_capture_open(p->base, &cfg, &ev, err, errlen);
  if (!t->tc)
    return -1;
  /* Writes while the agent was not tracing are unknown. */
  t->scan_bm = bitmap_new(p->vol.size, bitmap_grain(p->oos));
  if (!t->scan_bm)
    abort();
  bitmap_set_all(t->scan_bm);
  bitmap_set_all(p->oos);
  t->scan = true;
  t->scan_reason = TAIL_SCAN_START;
  t->lag_since_ms = util_now_ms();
  t->deadline = event_new(p->base, -1, 0, tail_deadline, t);
  if (!t->deadline)
    abort();
  if (p->cfg.snapshot_every_ms) {
    struct timeval tv = { p->cfg.snapshot_every_ms / 1000,
                          (p->cfg.snapshot_every_ms % 1000) * 1000 };
    t->every = event_new(p->base, -1, EV_PERSIST, tail_every, t);
    if (!t->every || event_add(t->every, &tv) == -1)
      abort();
  }
  return 0;
}

void
tail_stop(struct primary *p)
{
  struct tail *t = p->tail;

  if (!t)
    return;
  if (t->point_active) {
    /* Thaw now (closing the watchdog's socket does); no answer. */
    snprintf(t->pt.error, sizeof t->pt.error, "the agent is stopping");
    t->pt.state = POINT_FAILED;
    tail_point_finish(t);
  }
  trace_capture_close(t->tc);
  t->tc = NULL;
  if (t->every)
    event_free(t->every);
  t->every = NULL;
}

void
tail_free(struct primary *p)
{
  struct tail *t = p->tail;
  if (!t)
    return;
  tail_stop(p);
  if (t->deadline)
    event_free(t->deadline);
  bitmap_free(t->scan_bm);
  free(t);
  p->tail = NULL;
}

const char *
tail_capture_state(const struct primary *p)
{
  const struct tail *t = p->tail;
  if (!t->tc)
    return "stopped";
  if (t->scan)
    return tail_scan_states[t->scan_reason];
  return "tracing";
}

void
tail_status_json(struct primary *p, struct json *j)
{
  struct tail *t = p->tail;
  struct trace_capture_counters c = { 0 };
  uint64_t now = util_now_ms();

  if (t->tc)
    trace_capture_get_counters(t->tc, &c);
  json_str(j, "capture_mode", "tail");
  json_str(j, "consistency", "points");
  json_obj_begin(j, "capture");
  json_str(j, "state", tail_capture_state(p));
  json_u64(j, "trace_records", c.records);
  json_u64(j, "changes", c.changes);
  json_u64(j, "bytes_changed", c.bytes_changed);
  json_u64(j, "records_lost", c.lost);
  /* Found by checking the records against the device's statistics. */
  json_u64(j, "untraced_bytes", c.untraced_sectors * 512);
  json_u64(j, "untraced_found", c.untraced_events);
  json_bool(j, "untraced_checked", c.accounting);
  json_u64(j, "lag_bytes", bitmap_dirty_bytes(p->oos) +
                               repl_inflight_bytes(p->repl));
  json_double(j, "lag_seconds",
              t->lag_since_ms ? (now - t->lag_since_ms) / 1000.0 : 0.0);
  /* Sent by runs comparing hashes (start, lost records: what the scan
   * found different) and by runs of traced changes. */
  {
    uint64_t scan, traced;
    tail_sent(t, &scan, &traced);
    json_u64(j, "scan_sent_bytes", scan);
    json_u64(j, "traced_sent_bytes", traced);
  }
  json_obj_end(j);
  json_obj_begin(j, "points");
  json_str(j, "state", t->point_active ? point_state_name(t->pt.state)
                                       : "idle");
  json_u64(j, "taken", t->points_ok);
  json_u64(j, "failed", t->points_failed);
  json_u64(j, "last_snapshot_id", t->last_snapshot_id);
  json_u64(j, "last_freeze_ms", t->last_freeze_ms);
  if (t->last_error[0])
    json_str(j, "last_error", t->last_error);
  else
    json_null(j, "last_error");
  json_obj_end(j);
}

void
tail_status_text(struct primary *p, struct evbuffer *out)
{
  struct tail *t = p->tail;
  char lag[32];
  uint64_t now = util_now_ms();

  util_format_bytes(bitmap_dirty_bytes(p->oos) +
                        repl_inflight_bytes(p->repl), lag, sizeof lag);
  evbuffer_add_printf(out,
                      "capture:      tail, %s; lag %s, %.1f s\n"
                      "consistency:  points (%" PRIu64 " taken, %" PRIu64
                      " failed%s%s)\n",
                      tail_capture_state(p), lag,
                      t->lag_since_ms ? (now - t->lag_since_ms) / 1000.0
                                      : 0.0,
                      t->points_ok, t->points_failed,
                      t->last_error[0] ? "; last: " : "", t->last_error);
}
