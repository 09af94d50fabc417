/* Restoring this volume from a snapshot of the replica, or from the
 * replica itself (`duplexctl restore`): the way back after a disaster or a
 * bad change.  Only regions that differ travel, and the replica moves
 * along (it ends equal to the restored volume, under a new generation).
 *
 * Phases (enum rst_phase), driven by a poll timer and by the secondary's
 * answers:
 *   CHECK      (from a snapshot) the secondary can restore it: a store, a
 *              complete snapshot of this volume's size (an empty
 *              RESTORE_PLAN of the snapshot against itself); else the
 *              command fails and nothing changes.
 *   WAIT_SYNC  the replica must hold everything first, so that the safety
 *              snapshot holds this volume as it is: connected, no resync,
 *              nothing unacknowledged, the secondary in this generation.
 *   SNAPSHOT   the safety snapshot ("before-restore") is being taken on the
 *              secondary at this point of the stream (snapshot source only:
 *              the replica source restores what the replica holds, and the
 *              blocks that differ never reached it).
 *   PLAN       the record exists (restore-state.c; todo = everything) and
 *              the volume may change from here on.  The plan narrows todo:
 *              for a snapshot, the regions where it differs from the safety
 *              snapshot (RESTORE_PLAN: the store's lineage); for the
 *              replica, a comparison of block hashes over the whole volume
 *              (VERIFY, as --resync-checksums does).
 *   COPY       each region still to do is fetched (FETCH: the secondary
 *              writes the snapshot's blocks to the replica at that point of
 *              the stream and sends them), written here under its range
 *              lock, and its bit cleared; cleared bits reach the record
 *              once a second, after the volume is synced.
 *   FINISH     nothing left: the volume is synced, then an in-sync
 *              SYNC_STATE gives the secondary this side's generation; its
 *              acknowledgement ends the restore (the record is removed).
 *   DONE       status keeps the figures of the last restore.
 * A lost link fails what is in flight (the bits stay set) and the phase
 * goes on once it is back; a crash or stop resumes from the record at the
 * next start (restore_resume).  Until DONE the secondary says `restoring`
 * and counts its replica inconsistent; NBD refuses clients. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "json.h"
#include "log.h"
#include "restore-internal.h"

const char *
rst_phase_name(enum rst_phase ph)
{
  switch (ph) {
  case RST_WAIT_SYNC: return "waiting-for-sync";
  case RST_SNAPSHOT: return "safety-snapshot";
  case RST_PLAN: return "planning";
  case RST_COPY: return "copying";
  case RST_FINISH: return "finishing";
  case RST_CHECK: return "checking";
  case RST_DONE: return "done";
  case RST_NOT_STARTED: return "not-started";
  }
  return "?";
}

void
rst_source_text(const struct restore *rs, char *out, size_t len)
{
  if (rs->hdr.flags & RESTORE_F_REPLICA)
    snprintf(out, len, "the replica");
  else
    snprintf(out, len, "snapshot %" PRIu64, rs->hdr.source);
}

static void
rst_answer(struct restore *rs, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
rst_answer(struct restore *rs, bool ok, const char *fmt, ...)
{
  va_list ap;

  if (rs->reply == NULL)
    return;
  va_start(ap, fmt);
  control_finish_vprintf(rs->reply, ok, fmt, ap);
  va_end(ap);
  rs->reply = NULL;
}

bool
restore_running(const struct primary *p)
{
  return p->restore != NULL && p->restore->phase < RST_DONE;
}

bool
restore_blocks_clients(const struct primary *p)
{
  return restore_running(p) && !rst_instant(p->restore) &&
         p->restore->phase >= RST_PLAN;
}

/* Before the volume may change: the record, todo = everything. */
static int
rst_create_record(struct restore *rs)
{
  int rc;

  bitmap_set_all(rs->todo);
  rc = restore_file_create(rs->path, &rs->hdr, bitmap_words(rs->todo),
                           bitmap_word_count(rs->todo), &rs->fd);
  if (rc < 0) {
    snprintf(rs->error, sizeof rs->error, "cannot write the restore record "
             "%s: %s", rs->path, strerror(-rc));
    return -1;
  }
  /* Pages are written from here on only as bits are cleared. */
  while (bitmap_dirty_page_count(rs->todo) > 0) {
    uint64_t first, n;
    bitmap_take_dirty_pages(rs->todo, &first, &n);
  }
  return 0;
}

/* Cleared bits to the record, after what they stand for is durable. */
int
rst_flush_record(struct restore *rs)
{
  struct primary *p = rs->p;
  uint64_t first, n;
  int rc = 0;

  if (rs->fd < 0 || bitmap_dirty_page_count(rs->todo) == 0)
    return 0;
  if (fdatasync(p->vol.fd) == -1) {
    rc = -errno;
    snprintf(rs->error, sizeof rs->error, "syncing %s: %s", p->vol.path,
             strerror(-rc));
    return rc;
  }
  while (bitmap_take_dirty_pages(rs->todo, &first, &n)) {
    rc = restore_file_write_pages(rs->fd, bitmap_words(rs->todo),
                                  bitmap_word_count(rs->todo), first, n);
    if (rc < 0) {
      bitmap_mark_pages_dirty(rs->todo, first, n);
      break;
    }
  }
  if (rc == 0 && fdatasync(rs->fd) == -1)
    rc = -errno;
  if (rc < 0)
    snprintf(rs->error, sizeof rs->error, "writing the restore record %s: "
             "%s (tried again)", rs->path, strerror(-rc));
  rs->last_flush_ms = util_now_ms();
  return rc;
}

/* The plan is known: todo holds exactly what is left; persist it whole. */
void
rst_planned(struct restore *rs)
{
  struct primary *p = rs->p;
  char src[64];
  int rc;

  bitmap_recount(rs->todo);
  bitmap_mark_pages_dirty(rs->todo, 0, bitmap_page_count(rs->todo));
  rs->hdr.flags |= RESTORE_F_PLANNED;
  rs->total_bytes = bitmap_dirty_bytes(rs->todo);
  rs->planned_ms = util_now_ms();
  rst_flush_record(rs);
  if ((rc = restore_file_write_header(rs->fd, &rs->hdr)) < 0)
    snprintf(rs->error, sizeof rs->error, "writing the restore record %s: "
             "%s", rs->path, strerror(-rc));
  rst_source_text(rs, src, sizeof src);
  log_info("primary: restore from %s: %" PRIu64 " bytes differ (of %"
           PRIu64 "), copying them", src, rs->total_bytes, p->vol.size);
  rs->phase = RST_COPY;
  rs->cursor = 0;
  rst_pump(rs);
}

/* ---- FINISH ---- */

static void
rst_done_acked(struct repl_op *op, bool ok)
{
  struct restore *rs = op->opaque;
  struct primary *p = rs->p;
  char src[64];
  int rc;

  rs->op = NULL;
  free(op);
  if (!ok)
    return;                     /* sent again once connected */
  resync_in_sync_acked(p->resync);
  rc = restore_file_remove(rs->path, rs->fd);
  rs->fd = -1;
  if (rc < 0)
    log_error("primary: restore: cannot remove the restore record %s: %s; "
              "remove it by hand before the next start, or that start "
              "restores again", rs->path, strerror(-rc));
  rs->phase = RST_DONE;
  rs->finished_ms = util_now_ms();
  rst_source_text(rs, src, sizeof src);
  log_info("primary: restore from %s complete: %" PRIu64 " bytes restored "
           "(%" PRIu64 " fetched) in %.1f s; the replica equals the volume; "
           "NBD clients are accepted again", src, rs->done_bytes,
           rs->fetched_bytes, (rs->finished_ms - rs->started_ms) / 1000.0);
  bitmap_free(rs->todo);
  rs->todo = NULL;
}

void
rst_finish(struct restore *rs)
{
  struct primary *p = rs->p;
  struct repl_op *op;

  if (rs->op != NULL)
    return;
  if (!repl_connected(p->repl) || resync_active(p->resync) ||
      bitmap_dirty_bytes(p->oos) > 0)
    return;
  if (fdatasync(p->vol.fd) == -1) {
    snprintf(rs->error, sizeof rs->error, "syncing %s: %s (tried again)",
             p->vol.path, strerror(errno));
    return;
  }
  op = calloc(1, sizeof *op);
  if (op == NULL)
    abort();
  op->acked = rst_done_acked;
  op->opaque = rs;
  if (repl_send_sync_done(p->repl, op, false) == -1) {
    free(op);
    return;
  }
  rs->op = op;
}

/* ---- the state machine ---- */

static bool
rst_in_sync(struct restore *rs, char *why, size_t len)
{
  struct primary *p = rs->p;
  struct resync_counters rc;

  resync_get_counters(p->resync, &rc);
  if (!repl_connected(p->repl))
    snprintf(why, len, "the secondary to connect (link %s)",
             repl_link_state(p->repl));
  else if (resync_active(p->resync) || bitmap_dirty_bytes(p->oos) > 0)
    snprintf(why, len, "the resync to finish (%" PRIu64 " bytes out of "
             "sync)", bitmap_dirty_bytes(p->oos));
  else if (repl_inflight_bytes(p->repl) > 0)
    snprintf(why, len, "the secondary to acknowledge %" PRIu64 " bytes",
             repl_inflight_bytes(p->repl));
  else if (!rc.in_sync_confirmed)
    snprintf(why, len, "the secondary to adopt this side's generation");
  else
    return true;
  return false;
}

/* The volume may change from now on. */
static void
rst_begin(struct restore *rs)
{
  struct primary *p = rs->p;
  const char *nbd_note = rst_instant(rs)
      ? "NBD keeps serving: blocks not restored yet are fetched when read, "
        "client writes win; `status` shows the progress"
      : "NBD clients are refused until `status` shows sync: in-sync";
  char src[64];

  rst_source_text(rs, src, sizeof src);
  if (rst_create_record(rs) == -1 || primary_new_generation(p) == -1) {
    if (rs->error[0] == '\0')
      snprintf(rs->error, sizeof rs->error, "%s", p->meta_error);
    if (rs->fd >= 0)
      restore_file_remove(rs->path, rs->fd);
    rs->fd = -1;
    rst_not_started(rs);
    return;
  }
  resync_unconfirm(p->resync);
  repl_send_restore_state(p->repl, rs->hdr.source, p->vol.size, 0);
  rs->phase = RST_PLAN;
  rst_wake(rs);                 /* held writes: the client's from now on */
  if (rs->hdr.flags & RESTORE_F_REPLICA) {
    log_info("primary: restore from the replica started: comparing block "
             "hashes of the whole volume; %s", nbd_note);
    rst_answer(rs, true, "restore from the replica started: block hashes "
               "of the whole volume are compared and only the blocks that "
               "differ are copied; %s", nbd_note);
  } else {
    log_info("primary: restore from %s started (safety snapshot %" PRIu64
             " holds the volume as it was); %s", src, rs->hdr.safety,
             nbd_note);
    rst_answer(rs, true, "restore from %s started; snapshot %" PRIu64
               " holds the volume as it was (restore --snapshot %" PRIu64
               " undoes it). %s", src, rs->hdr.safety, rs->hdr.safety,
               nbd_note);
  }
}

static void rst_step(struct restore *rs);

void
rst_not_started(struct restore *rs)
{
  char src[64];

  rst_source_text(rs, src, sizeof src);
  log_error("primary: restore from %s not started: %s", src, rs->error);
  rst_answer(rs, false, "restore from %s not started: %s; nothing was "
             "changed", src, rs->error);
  rs->phase = RST_NOT_STARTED;
  rs->finished_ms = util_now_ms();
  rst_wake(rs);                 /* held writes go on */
}

/* CHECK: the answer to the empty plan of the snapshot against itself. */
static void
rst_check_part(struct repl_op *op, const Duplex__RestorePlanPart *m,
               const uint8_t *payload)
{
  struct restore *rs = op->opaque;

  (void)payload;
  if (m->error != NULL && m->error[0] != '\0')
    snprintf(rs->error, sizeof rs->error, "the secondary cannot restore "
             "it: %s", m->error);
}

static void
rst_check_acked(struct repl_op *op, bool ok)
{
  struct restore *rs = op->opaque;

  rs->op = NULL;
  free(op);
  if (!ok)
    return;                     /* asked again once connected */
  if (rs->error[0] != '\0') {
    rst_not_started(rs);
    return;
  }
  rs->phase = RST_WAIT_SYNC;
  rst_step(rs);
}

void
rst_send_plan(struct restore *rs, uint64_t to, repl_acked_fn acked,
              void (*part)(struct repl_op *op,
                           const Duplex__RestorePlanPart *m,
                           const uint8_t *payload))
{
  struct repl_op *op;

  if (rs->op != NULL)
    return;
  op = calloc(1, sizeof *op);
  if (op == NULL)
    abort();
  op->acked = acked;
  op->opaque = rs;
  op->plan_part = part;
  if (repl_send_restore_plan(rs->p->repl, op, rs->hdr.source, to) == -1) {
    free(op);
    return;
  }
  rs->op = op;
}

static void
rst_snapshot_acked(struct repl_op *op, bool ok)
{
  struct restore *rs = op->opaque;
  const Duplex__SnapshotDone *sd = op->snapshot_done;
  char src[64];

  rs->op = NULL;
  if (!ok) {
    free(op);
    rs->phase = RST_WAIT_SYNC;  /* the link dropped: again once in sync */
    rst_wake(rs);               /* held writes go on */
    return;
  }
  rst_source_text(rs, src, sizeof src);
  if (sd == NULL || sd->id == 0) {
    snprintf(rs->error, sizeof rs->error, "the secondary took no safety "
             "snapshot: %s", sd && sd->error ? sd->error : "no answer");
    free(op);
    rst_not_started(rs);
    return;
  }
  rs->hdr.safety = sd->id;
  free(op);
  rst_begin(rs);
}

static void
rst_step(struct restore *rs)
{
  struct primary *p = rs->p;
  char why[256];
  uint64_t now = util_now_ms();

  if (p->stopping)
    return;
  switch (rs->phase) {
  case RST_CHECK:
    if (rs->reply != NULL && now >= rs->reply_deadline_ms)
      rst_answer(rs, false, "restore not started after %.0f s: the "
                 "secondary did not answer whether it can restore the "
                 "snapshot; it goes on once it does (`status` shows it), "
                 "nothing was changed", (now - rs->started_ms) / 1000.0);
    /* An empty plan of the snapshot against itself. */
    rst_send_plan(rs, rs->hdr.source, rst_check_acked, rst_check_part);
    return;
  case RST_WAIT_SYNC:
    if (!rst_in_sync(rs, why, sizeof why)) {
      if (rs->reply != NULL && now >= rs->reply_deadline_ms)
        rst_answer(rs, false, "restore not started after %.0f s: waiting "
                   "for %s; it starts once the pair is in sync (`status` "
                   "shows it), nothing was changed",
                   (now - rs->started_ms) / 1000.0, why);
      return;
    }
    if (rs->hdr.flags & RESTORE_F_REPLICA) {
      rst_begin(rs);
      return;
    }
    rs->op = calloc(1, sizeof *rs->op);
    if (rs->op == NULL)
      abort();
    rs->op->acked = rst_snapshot_acked;
    rs->op->opaque = rs;
    if (repl_send_snapshot(p->repl, rs->op, "before-restore",
                           4 /* SNAP_BEFORE_RESTORE */) == -1) {
      free(rs->op);
      rs->op = NULL;
      return;
    }
    rs->phase = RST_SNAPSHOT;
    return;
  case RST_SNAPSHOT:
    return;
  case RST_PLAN:
    if (rs->hdr.flags & RESTORE_F_REPLICA)
      rst_plan_replica(rs);
    else
      rst_plan_snapshot(rs);
    break;
  case RST_COPY:
    rst_copy(rs);
    break;
  case RST_FINISH:
    rst_finish(rs);
    return;
  case RST_DONE:
  case RST_NOT_STARTED:
    return;
  }
  if (rs->phase >= RST_DONE)
    return;
  if (repl_connected(p->repl) &&
      (!TAILQ_EMPTY(&rs->holds) || !TAILQ_EMPTY(&rs->reads)))
    rst_wake(rs);
  if (now - rs->last_flush_ms >= RST_FLUSH_MS)
    rst_flush_record(rs);
  if (now - rs->last_report_ms >= RST_REPORT_MS) {
    rs->last_report_ms = now;
    repl_send_restore_state(p->repl, rs->hdr.source,
                            rs->total_bytes ? rs->total_bytes : p->vol.size,
                            rs->done_bytes);
  }
}

void
rst_pump(struct restore *rs)
{
  if (rs->phase == RST_COPY)
    rst_copy(rs);
  else if (rs->phase == RST_PLAN && (rs->hdr.flags & RESTORE_F_REPLICA))
    rst_plan_replica(rs);
  if (rs->phase == RST_FINISH)
    rst_finish(rs);
}

static void
rst_poll_cb(evutil_socket_t fd, short what, void *arg)
{
  (void)fd;
  (void)what;
  rst_step(arg);
}

static struct restore *
rst_new(struct primary *p)
{
  struct timeval tv = { 0, RST_POLL_MS * 1000 };
  struct restore *rs = calloc(1, sizeof *rs);

  if (rs == NULL)
    abort();
  rs->p = p;
  rs->fd = -1;
  snprintf(rs->path, sizeof rs->path, "%s.restore", p->cfg.meta);
  rs->todo = bitmap_new(p->vol.size, bitmap_grain(p->oos));
  if (rs->todo == NULL)
    abort();
  rs->hdr.size = p->vol.size;
  rs->hdr.grain = bitmap_grain(p->oos);
  rs->started_ms = util_now_ms();
  TAILQ_INIT(&rs->fetches);
  TAILQ_INIT(&rs->reads);
  TAILQ_INIT(&rs->holds);
  rs->poll = event_new(p->base, -1, EV_PERSIST, rst_poll_cb, rs);
  if (rs->poll == NULL || event_add(rs->poll, &tv) == -1)
    abort();
  return rs;
}

static void
rst_free(struct restore *rs)
{
  if (rs == NULL)
    return;
  if (rs->reply != NULL)
    rst_answer(rs, false, "the agent stopped before the restore started; "
               "nothing was changed");
  event_free(rs->poll);
  if (rs->fd >= 0) {
    rst_flush_record(rs);
    close(rs->fd);
  }
  bitmap_free(rs->todo);
  free(rs->plan_img);
  free(rs);
}

/* `restore --snapshot ID | --replica`. */
int
restore_command(struct primary *p, int argc, char **argv,
                struct evbuffer *out)
{
  struct restore *rs;
  uint64_t source = 0, rate = 0;
  bool replica = false, have = false, instant = false;
  char sub[128];
  unsigned clients = 0;
  char *end;
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--snapshot") == 0 && i + 1 < argc && !have) {
      errno = 0;
      source = strtoull(argv[++i], &end, 10);
      if (errno || *end || source == 0) {
        evbuffer_add_printf(out, "restore --snapshot %s: not a snapshot id "
                            "(see snapshot list)\n", argv[i]);
        return -1;
      }
      have = true;
    } else if (strcmp(argv[i], "--replica") == 0 && !have) {
      replica = have = true;
    } else if (strcmp(argv[i], "--instant") == 0) {
      instant = true;
    } else if (strcmp(argv[i], "--restore-rate") == 0 && i + 1 < argc) {
      if (util_parse_size(argv[++i], &rate, sub, sizeof sub) == -1 ||
          rate < 4096) {
        evbuffer_add_printf(out, "restore --restore-rate %s: %s\n", argv[i],
                            rate < 4096 ? "at least 4096 bytes/s" : sub);
        return -1;
      }
    } else {
      evbuffer_add_printf(out, "restore: unexpected argument %s (usage: "
                          "%s)\n", argv[i], RST_USAGE);
      return -1;
    }
  }
  if (!have) {
    evbuffer_add_printf(out, "usage: %s\n", RST_USAGE);
    return -1;
  }
  if (restore_running(p)) {
    char src[64];
    rst_source_text(p->restore, src, sizeof src);
    evbuffer_add_printf(out, "restore: a restore from %s is in progress "
                        "(%s); nothing was changed\n", src,
                        rst_phase_name(p->restore->phase));
    return -1;
  }
  if (p->demote != NULL) {
    evbuffer_add_printf(out, "restore: this primary is being demoted\n");
    return -1;
  }
  if (verify_state(p->verify) == VERIFY_RUNNING) {
    evbuffer_add_printf(out, "restore: a verify is running; restore once "
                        "it is done (status shows it)\n");
    return -1;
  }
  if (!repl_connected(p->repl)) {
    evbuffer_add_printf(out, "restore: the secondary is not connected "
                        "(link %s); a restore reads from it. Wait for "
                        "`connection: connected`; nothing was changed\n",
                        repl_link_state(p->repl));
    return -1;
  }
  for (i = 0; i < p->n_nbd; i++)
    clients += nbd_server_clients(p->nbd[i]);
  if (clients > 0 && !instant) {
    evbuffer_add_printf(out, "restore: %u NBD client%s connected; the "
                        "volume changes under them. Unmount and disconnect "
                        "them first, or restore --instant (they keep "
                        "working and see the restored volume); nothing was "
                        "changed\n", clients,
                        clients == 1 ? " is" : "s are");
    return -1;
  }
  rst_free(p->restore);
  p->restore = rs = rst_new(p);
  rs->hdr.source = source;
  rs->hdr.flags = (replica ? RESTORE_F_REPLICA : 0) |
                  (instant ? RESTORE_F_INSTANT : 0);
  rs->hdr.rate = rate;
  rs->phase = replica ? RST_WAIT_SYNC : RST_CHECK;
  rs->hdr.started_wall_ms = util_wall_ns() / 1000000;
  rs->reply = control_defer_for(p->control, RST_START_TIMEOUT_MS / 1000 + 5);
  rs->reply_deadline_ms = rs->started_ms + RST_START_TIMEOUT_MS;
  rst_step(rs);
  return CONTROL_LATER;
}

int
restore_resume(struct primary *p, char *err, size_t errlen)
{
  struct restore_hdr h;
  struct restore *rs;
  char sub[256], src[64];
  int fd, rc;

  snprintf(sub, sizeof sub, "%s.restore", p->cfg.meta);
  rc = restore_file_open(sub, &h, &fd, err, errlen);
  if (rc != 0)
    return rc == 1 ? 0 : -1;
  if (h.size != p->vol.size || h.grain != bitmap_grain(p->oos)) {
    snprintf(err, errlen, "restore record %s is for %llu bytes at grain %u, "
             "the volume is %llu bytes at grain %u", sub,
             (unsigned long long)h.size, h.grain,
             (unsigned long long)p->vol.size, bitmap_grain(p->oos));
    close(fd);
    return -1;
  }
  p->restore = rs = rst_new(p);
  rs->hdr = h;
  rs->fd = fd;
  rs->resumed = true;
  rc = restore_file_read_words(fd, bitmap_words(rs->todo),
                               bitmap_word_count(rs->todo));
  if (rc < 0) {
    snprintf(err, errlen, "restore record %s: %s", sub, strerror(-rc));
    return -1;
  }
  bitmap_recount(rs->todo);
  rst_source_text(rs, src, sizeof src);
  if (h.flags & RESTORE_F_PLANNED) {
    rs->phase = RST_COPY;
    rs->total_bytes = bitmap_dirty_bytes(rs->todo);
    log_info("primary: resuming the %srestore from %s: %" PRIu64 " bytes "
             "still to restore", rst_instant(rs) ? "instant " : "", src,
             rs->total_bytes);
  } else {
    rs->phase = RST_PLAN;
    log_info("primary: resuming the %srestore from %s: planning again",
             rst_instant(rs) ? "instant " : "", src);
  }
  return 0;
}

void
restore_free(struct primary *p)
{
  rst_free(p->restore);
  p->restore = NULL;
}

void
restore_status(const struct primary *p, uint64_t *remaining,
               double *percent)
{
  const struct restore *rs = p->restore;
  uint64_t left = rs->todo ? bitmap_dirty_bytes(rs->todo) : 0;

  if (rs->phase < RST_COPY) {
    *remaining = p->vol.size;
    *percent = 0.0;
    return;
  }
  *remaining = left;
  *percent = rs->total_bytes ? 100.0 * (double)(rs->total_bytes - MIN(left,
                               rs->total_bytes)) / (double)rs->total_bytes
                             : 100.0;
}

static double
rst_rate(const struct restore *rs, uint64_t now)
{
  uint64_t since = rs->planned_ms ? rs->planned_ms : rs->started_ms;
  uint64_t until = rs->phase >= RST_DONE ? rs->finished_ms : now;

  return until > since ? rs->done_bytes * 1000.0 / (double)(until - since)
                       : 0.0;
}

void
restore_status_json(const struct primary *p, struct json *j)
{
  const struct restore *rs = p->restore;
  uint64_t now = util_now_ms(), left = 0;
  double pct = 0, rate;

  if (rs == NULL) {
    json_null(j, "restore");
    return;
  }
  if (rs->phase < RST_DONE)
    restore_status(p, &left, &pct);
  rate = rst_rate(rs, now);
  json_obj_begin(j, "restore");
  json_str(j, "state", rst_phase_name(rs->phase));
  json_str(j, "source", rs->hdr.flags & RESTORE_F_REPLICA ? "replica"
                                                          : "snapshot");
  json_u64(j, "snapshot", rs->hdr.source);
  json_u64(j, "safety_snapshot", rs->hdr.safety);
  json_u64(j, "total_bytes", rs->total_bytes);
  json_u64(j, "done_bytes", rs->done_bytes);
  json_u64(j, "remaining_bytes", left);
  json_u64(j, "fetched_bytes", rs->fetched_bytes);
  json_u64(j, "same_bytes", rs->same_bytes);
  json_bool(j, "instant", rst_instant(rs));
  json_u64(j, "on_demand_bytes", rs->demand_bytes);
  json_u64(j, "on_demand_fetches", rs->demand_fetches);
  json_u64(j, "rate_limit_bytes_per_sec", rs->hdr.rate);
  json_double(j, "done_percent", rs->phase == RST_DONE ? 100.0 : pct);
  json_double(j, "rate_bytes_per_sec", rate);
  if (rs->phase >= RST_DONE)
    json_double(j, "eta_seconds", 0.0);
  else if (rs->phase == RST_COPY && rate > 0)
    json_double(j, "eta_seconds", (double)left / rate);
  else
    json_null(j, "eta_seconds");
  json_double(j, "seconds", ((rs->phase >= RST_DONE ? rs->finished_ms
                                                    : now) -
                             rs->started_ms) / 1000.0);
  json_bool(j, "resumed", rs->resumed);
  if (rs->error[0])
    json_str(j, "error", rs->error);
  else
    json_null(j, "error");
  json_obj_end(j);
}

void
restore_status_text(const struct primary *p, struct evbuffer *out)
{
  const struct restore *rs = p->restore;
  uint64_t now = util_now_ms(), left = 0;
  double pct = 0, rate;
  char src[64], done[32], total[32];

  if (rs == NULL)
    return;
  rst_source_text(rs, src, sizeof src);
  rate = rst_rate(rs, now);
  util_format_bytes(rs->done_bytes, done, sizeof done);
  util_format_bytes(rs->total_bytes, total, sizeof total);
  if (rs->phase == RST_DONE) {
    evbuffer_add_printf(out, "restore:      from %s done: %s in %.1f s\n",
                        src, done,
                        (rs->finished_ms - rs->started_ms) / 1000.0);
    return;
  }
  if (rs->phase == RST_NOT_STARTED) {
    evbuffer_add_printf(out, "restore:      from %s not started: %s\n", src,
                        rs->error);
    return;
  }
  restore_status(p, &left, &pct);
  evbuffer_add_printf(out, "restore:      from %s, %s: %s of %s (%.1f%%)",
                      src, rst_phase_name(rs->phase), done, total, pct);
  if (rs->phase == RST_COPY && rate > 0)
    evbuffer_add_printf(out, ", ETA %.0f s", (double)left / rate);
  if (rst_instant(rs))
    evbuffer_add_printf(out, "; instant: NBD serves, %" PRIu64 " bytes "
                        "fetched on demand\n", rs->demand_bytes);
  else
    evbuffer_add_printf(out, "; NBD clients refused\n");
  if (rs->error[0])
    evbuffer_add_printf(out, "restore error: %s\n", rs->error);
}
