/* duplex-primary: serves a volume over NBD and replicates it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "control.h"
#include "daemon.h"
#include "internal.h"
#include "log.h"

#define STOP_DEADLINE_MS 4000

static struct primary primary;
static struct event *tick;

static struct control *control;
static struct event *stop_timer;
static uint64_t stop_started_ms;

/* Open or create the metadata beside the volume: a new file gets a fresh
 * volume identity and a first data generation.  Metadata last used by a
 * secondary is fine: roles belong to the process, identity to the data. */
static void
main_open_meta(struct primary *p)
{
  char err[512];
  bool created;
  struct meta_sb sb;
  uint64_t bits;
  int rc;

  if (meta_open(p->cfg.meta, &p->meta, &created, err, sizeof err) == -1)
    daemon_fail(2, "duplex-primary: --meta %s: %s", p->cfg.meta, err);
  sb = *meta_get(p->meta);
  if (created || sb.role == META_ROLE_NONE) {
    memset(&sb, 0, sizeof sb);
    util_uuid_generate(sb.volume_uuid);
    sb.size_bytes = p->vol.size;
    sb.block_size = BDEV_ALIGN;
    sb.bitmap_grain = p->cfg.bitmap_grain;
    sb.gen.current = primary_random_id();
  } else {
    if (sb.size_bytes != p->vol.size)
      daemon_fail(2, "duplex-primary: --meta %s: metadata is for a volume of "
                  "%llu bytes but %s is %llu bytes; use the matching "
                  "metadata file or a new one", p->cfg.meta,
                  (unsigned long long)sb.size_bytes, p->vol.path,
                  (unsigned long long)p->vol.size);
    /* Metadata written by a secondary has no bitmap of its own yet. */
    if (sb.bitmap_grain == 0)
      sb.bitmap_grain = p->cfg.bitmap_grain;
    if (sb.bitmap_grain != p->cfg.bitmap_grain)
      daemon_fail(2, "duplex-primary: --bitmap-grain %u: metadata %s was "
                  "created with %u bytes per bit; use that or a new "
                  "metadata file (a full resync follows)",
                  p->cfg.bitmap_grain, p->cfg.meta, sb.bitmap_grain);
    if (sb.handover && sb.role == META_ROLE_SECONDARY)
      log_info("primary: promoted after a planned switchover: metadata %s "
               "holds everything the old primary had when it handed over; "
               "start the old primary as duplex-secondary (nothing will be "
               "resynced)", p->cfg.meta);
    else if (sb.handover)
      log_warn("primary: metadata %s: this node handed over (demote) and "
               "serves again as primary; if the other node was promoted "
               "meanwhile, both will have written: their next connection is "
               "refused as a split brain, nothing is overwritten",
               p->cfg.meta);
    else if (sb.role == META_ROLE_SECONDARY)
      log_info("primary: metadata %s was last used by a secondary; serving "
               "its data as primary", p->cfg.meta);
    sb.handover = false;
    if (sb.gen.current == 0)
      sb.gen.current = primary_random_id();
  }
  sb.role = META_ROLE_PRIMARY;
  sb.clean_shutdown = false;
  if ((rc = meta_write(p->meta, &sb)) < 0)
    daemon_fail(2, "duplex-primary: --meta %s: cannot write: %s",
                p->cfg.meta, strerror(-rc));
  bits = (p->vol.size + sb.bitmap_grain - 1) / sb.bitmap_grain;
  if (meta_get(p->meta)->bitmap_bits != bits &&
      (rc = meta_bitmap_resize(p->meta, bits)) < 0)
    daemon_fail(2, "duplex-primary: --meta %s: cannot size the bitmap: %s",
                p->cfg.meta, strerror(-rc));
  p->gen = meta_get(p->meta)->gen;
}

/* The out-of-sync bitmap from disk, plus the regions of the activity log
 * (writes that may have been in flight when the primary last stopped). */
static void
main_load_bitmap(struct primary *p)
{
  int rc;

  p->oos = bitmap_new(p->vol.size, p->cfg.bitmap_grain);
  if (!p->oos)
    daemon_fail(1, "duplex-primary: cannot allocate the bitmap for %llu "
                "bytes", (unsigned long long)p->vol.size);
  rc = meta_bitmap_read(p->meta, bitmap_words(p->oos),
                        bitmap_word_count(p->oos) * sizeof(uint64_t));
  if (rc < 0)
    daemon_fail(2, "duplex-primary: --meta %s: cannot read the bitmap: %s",
                p->cfg.meta, strerror(-rc));
  bitmap_recount(p->oos);
  p->al = al_new(p, AL_EXTENT_SHIFT);
  if ((rc = al_recover(p->al)) < 0)
    daemon_fail(2, "duplex-primary: --meta %s: activity log: %s",
                p->cfg.meta, strerror(-rc));
  if (bitmap_dirty_bytes(p->oos))
    log_info("primary: %llu bytes are marked out of sync from before",
             (unsigned long long)bitmap_dirty_bytes(p->oos));
}

/* The link's events, dispatched to the modules that use it. */
static void
main_link_connected(void *arg, bool full)
{
  struct primary *p = arg;

  resync_begin(p->resync, full);
  vol_kick(p);
}

static void
main_link_lost(void *arg)
{
  struct primary *p = arg;

  resync_abort(p->resync);
  verify_link_lost(p->verify);
  tail_link_lost(p);
}

static void
main_link_progress(void *arg)
{
  struct primary *p = arg;

  resync_kick(p->resync);
  vol_kick(p);
  tail_progress(p);
}

/* What the resync asks of the agent. */
static bool
main_crash_recovery(void *arg)
{
  struct primary *p = arg;
  /* (asked as every run begins) */
  if (p->tail)
    tail_run_begins(p);
  return p->crash_recovery;
}

static bool
main_compare_range(void *arg, uint64_t off, uint64_t len)
{
  return tail_compare_range(arg, off, len);
}

static void
main_in_sync(void *arg)
{
  struct primary *p = arg;
  primary_in_sync(p);
  if (p->tail)
    tail_in_sync(p);
}

static bool
main_hold_in_sync(void *arg)
{
  struct primary *p = arg;
  /* In tail mode only consistency points tell the secondary it is in
   * sync (tail.c). */
  return restore_running(p) || p->tail != NULL;
}

/* Once a second: retire idle activity-log extents, flush bitmap pages. */
/* --listen: the port the secondary dials, as text for the start line;
 * with --pidfile also in PIDFILE.port (for port 0), removed at exit. */
static char main_port_text[16];
static char main_port_path[4096];

static void
main_write_port_file(struct primary *p)
{
  if (!p->cfg.listen)
    return;
  snprintf(main_port_text, sizeof main_port_text, "%d",
           repl_listen_port(p->repl));
  if (!p->cfg.pidfile || strcmp(p->cfg.peer.port, "0") != 0)
    return;
  char text[32];
  snprintf(main_port_path, sizeof main_port_path, "%s.port", p->cfg.pidfile);
  snprintf(text, sizeof text, "%s\n", main_port_text);
  if (util_write_file_atomic(main_port_path, text) == -1)
    daemon_fail(2, "duplex-primary: --pidfile %s: cannot write %s: %s",
                p->cfg.pidfile, main_port_path, strerror(errno));
}

static void
main_tick(evutil_socket_t fd, short what, void *opaque)
{
  struct primary *p = opaque;
  (void)fd;
  (void)what;
  al_tick(p->al);
  al_flush_bitmap(p->al);
}

static void
main_stop_poll(evutil_socket_t fd, short what, void *opaque)
{
  struct primary *p = opaque;
  (void)fd;
  (void)what;
  /* Let local I/O in flight finish so nothing is left half-submitted,
   * and a last control reply (demote's) reach its client. */
  if ((aio_inflight(p->aio) == 0 &&
       (control == NULL || !control_flushing(control))) ||
      util_now_ms() - stop_started_ms > STOP_DEADLINE_MS)
    event_base_loopbreak(p->base);
}

static void
main_signal(evutil_socket_t sig, short what, void *opaque)
{
  struct primary *p = opaque;

  (void)what;
  if (p->stopping)
    return;
  log_info("primary: %s received, stopping", strsignal((int)sig));
  primary_stop(p);
}

void
primary_stop(struct primary *p)
{
  struct timeval tv = { 0, 20 * 1000 };
  int i;

  if (p->stopping)
    return;
  p->stopping = true;
  stop_started_ms = util_now_ms();
  for (i = 0; i < p->n_nbd; i++) {
    nbd_server_free(p->nbd[i]);
    p->nbd[i] = NULL;
  }
  p->n_nbd = 0;
  /* A consistency point in progress is abandoned, its file system thawed. */
  tail_stop(p);
  /* No new resync reads or replication from here; pending ops fail. */
  repl_shutdown(p->repl);
  stop_timer = event_new(p->base, -1, EV_PERSIST, main_stop_poll, p);
  event_add(stop_timer, &tv);
}

int
main(int argc, char **argv)
{
  struct primary *p = &primary;
  char err[512];
  struct event *sigterm, *sigint;
  struct meta_sb sb;
  bool clean, stale_gen;
  int rc, i;

  rc = config_parse(argc, argv, &p->cfg, err, sizeof err);
  if (rc == 1)
    return 0;
  if (rc == -1) {
    fprintf(stderr, "duplex-primary: %s\n", err);
    return 2;
  }
  log_init("duplex-primary", p->cfg.foreground);
  if (p->cfg.verbose)
    log_set_level(LOG_LVL_DEBUG);
  signal(SIGPIPE, SIG_IGN);
  util_tune_malloc();

  daemon_start(p->cfg.foreground);

  /* Tail capture only reads the device others write. */
  if ((p->cfg.capture == CAPTURE_TAIL
           ? bdev_open_readonly(p->cfg.volume, &p->vol, err, sizeof err)
           : bdev_open(p->cfg.volume, 0, &p->vol, err, sizeof err)) == -1)
    daemon_fail(2, "duplex-primary: --volume %s: %s", p->cfg.volume, err);
  if (p->cfg.capture == CAPTURE_TAIL && !p->vol.is_blockdev)
    daemon_fail(2, "duplex-primary: --capture tail --volume %s: not a block "
                "device; tail capture traces a block device's requests (put "
                "an image file on a loop device, or use --capture nbd)",
                p->cfg.volume);
  main_open_meta(p);

  p->base = event_base_new();
  if (!p->base)
    daemon_fail(1, "duplex-primary: cannot create event loop");
  p->aio = aio_ctx_new(p->base, 256, err, sizeof err);
  if (!p->aio)
    daemon_fail(1, "duplex-primary: %s", err);
  main_load_bitmap(p);
  p->need_new_gen = true;
  p->locks = lock_set_new();
  TAILQ_INIT(&p->waiting);
  {
    static const struct repl_events ev = {
      .connected = main_link_connected,
      .lost = main_link_lost,
      .progress = main_link_progress,
    };
    struct repl_events e = ev;
    e.arg = p;
    p->repl = repl_new(p, &e, err, sizeof err);
  }
  if (!p->repl)
    daemon_fail(2, "duplex-primary: %s", err);
  {
    struct resync_env env = {
      .aio = p->aio,
      .vol = &p->vol,
      .oos = p->oos,
      .locks = p->locks,
      .repl = p->repl,
      .checksums = p->cfg.resync_checksums,
      .quiet = p->cfg.capture == CAPTURE_TAIL,
      /* Tail capture sends everything through the resync: its window is
       * the async buffer. */
      .window = p->cfg.capture == CAPTURE_TAIL ? p->cfg.async_buffer : 0,
      .crash_recovery = main_crash_recovery,
      .in_sync = main_in_sync,
      .hold_in_sync = main_hold_in_sync,
      .compare_range = p->cfg.capture == CAPTURE_TAIL ? main_compare_range
                                                      : NULL,
      .arg = p,
    };
    p->resync = resync_new(&env);
  }
  p->verify = verify_new(p);
  if (p->cfg.capture == CAPTURE_TAIL &&
      tail_start(p, err, sizeof err) == -1)
    daemon_fail(2, "duplex-primary: --capture tail: %s", err);
  if (p->tail) {
    char rec[4096];
    snprintf(rec, sizeof rec, "%s.restore", p->cfg.meta);
    if (access(rec, F_OK) == 0)
      daemon_fail(2, "duplex-primary: --capture tail: a restore of %s is "
                  "unfinished (%s): the device is partly restored; finish "
                  "it with --capture nbd first (applications stopped)",
                  p->vol.path, rec);
  } else if (restore_resume(p, err, sizeof err) == -1)
    daemon_fail(2, "duplex-primary: %s; a restore of %s was interrupted "
                "and cannot go on: the volume is partly restored. Move the "
                "record away and restore again (duplexctl restore)", err,
                p->vol.path);

  for (i = 0; i < p->cfg.n_nbd; i++) {
    if (nbd_server_new(p, &p->cfg.nbd[i], &p->nbd[i], err, sizeof err) == -1)
      daemon_fail(2, "duplex-primary: --nbd: %s", err);
    p->n_nbd++;
  }
  if (p->cfg.control) {
    control = control_new(p->base, p->cfg.control, status_control, p, err,
                          sizeof err);
    p->control = control;
    if (!control)
      daemon_fail(2, "duplex-primary: --control %s: %s", p->cfg.control, err);
  }
  sigterm = evsignal_new(p->base, SIGTERM, main_signal, p);
  sigint = evsignal_new(p->base, SIGINT, main_signal, p);
  event_add(sigterm, NULL);
  event_add(sigint, NULL);
  {
    struct timeval one = { 1, 0 };
    tick = event_new(p->base, -1, EV_PERSIST, main_tick, p);
    event_add(tick, &one);
  }

  repl_start(p->repl);
  main_write_port_file(p);
  if (p->cfg.pidfile && util_write_pidfile(p->cfg.pidfile) == -1)
    daemon_fail(2, "duplex-primary: --pidfile %s: %s", p->cfg.pidfile,
                strerror(errno));
  log_info("primary: %s %s (%llu bytes)%s, replicating %s %s:%s "
           "in %s mode", p->tail ? "tailing" : "serving", p->vol.path,
           (unsigned long long)p->vol.size, p->tail ? "" : " over NBD",
           p->cfg.listen ? "to the secondary that dials" : "to",
           p->cfg.peer.host,
           p->cfg.listen ? main_port_text : p->cfg.peer.port,
           p->cfg.mode == REPL_SYNC ? "sync" : "async");
  daemon_ready();

  event_base_dispatch(p->base);

  /* Shutdown: run what completions are still queued (answers to requests
   * whose clients are gone), then record a clean shutdown only if no local
   * I/O was abandoned. */
  for (i = 0; i < 16; i++)
    event_base_loop(p->base, EVLOOP_NONBLOCK);
  clean = aio_inflight(p->aio) == 0;
  repl_free(p->repl);
  p->repl = NULL;
  demote_free(p->demote);
  p->demote = NULL;
  restore_free(p);
  tail_free(p);
  if (control)
    control_free(control);
  if (clean)
    al_shutdown(p->al);
  else
    al_flush_bitmap(p->al);
  sb = *meta_get(p->meta);
  stale_gen = memcmp(&sb.gen, &p->gen, sizeof sb.gen) != 0;
  sb.gen = p->gen;
  sb.clean_shutdown = clean;
  /* A failure leaves the superblock written last, not marked clean: what a
   * crash would have left (the activity log, not this flag, decides what
   * the next start resyncs). */
  if ((rc = meta_write(p->meta, &sb)) < 0)
    log_error("primary: metadata %s: cannot record the shutdown: %s; the "
              "file keeps the superblock written last%s; check the disk or "
              "file system holding the metadata before the next start",
              p->cfg.meta, strerror(-rc),
              stale_gen ? ", whose generation identifiers are out of date "
              "(the next connect may resync more than needed)" : "");
  meta_close(p->meta);
  if (p->cfg.pidfile)
    unlink(p->cfg.pidfile);
  if (main_port_path[0])
    unlink(main_port_path);
  if (clean) {
    /* Everything is idle: free it, so leak checkers see a clean exit. */
    resync_free(p->resync);
    verify_free(p->verify);
    al_free(p->al);
    event_free(tick);
    lock_set_free(p->locks);
    bitmap_free(p->oos);
    aio_ctx_free(p->aio);
    event_free(sigterm);
    event_free(sigint);
    if (stop_timer)
      event_free(stop_timer);
    event_base_free(p->base);
  }
  bdev_close(&p->vol);
  log_info("primary: stopped");
  return 0;
}
