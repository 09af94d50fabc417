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
static struct control *control;
static struct event *stop_timer;
static uint64_t stop_started_ms;

/* Open or create the metadata beside the volume: a new file gets a fresh
 * volume identity. */
static void
main_open_meta(struct primary *p)
{
  char err[512];
  bool created;
  struct meta_sb sb;

  if (meta_open(p->cfg.meta, &p->meta, &created, err, sizeof err) == -1)
    daemon_fail(2, "duplex-primary: --meta %s: %s", p->cfg.meta, err);
  sb = *meta_get(p->meta);
  if (created || sb.role == META_ROLE_NONE) {
    memset(&sb, 0, sizeof sb);
    util_uuid_generate(sb.volume_uuid);
    sb.size_bytes = p->vol.size;
    sb.block_size = BDEV_ALIGN;
    sb.role = META_ROLE_PRIMARY;
  } else if (sb.size_bytes != p->vol.size) {
    daemon_fail(2, "duplex-primary: --meta %s: metadata is for a volume of "
                "%llu bytes but %s is %llu bytes; use the matching metadata "
                "file or a new one", p->cfg.meta,
                (unsigned long long)sb.size_bytes, p->vol.path,
                (unsigned long long)p->vol.size);
  }
  sb.role = META_ROLE_PRIMARY;
  sb.clean_shutdown = false;
  if (meta_write(p->meta, &sb) < 0)
    daemon_fail(2, "duplex-primary: --meta %s: cannot write: %s",
                p->cfg.meta, strerror(errno));
}

static void
main_stop_poll(evutil_socket_t fd, short what, void *opaque)
{
  struct primary *p = opaque;
  (void)fd;
  (void)what;
  /* Let local I/O in flight finish so nothing is left half-submitted. */
  if (aio_inflight(p->aio) == 0 ||
      util_now_ms() - stop_started_ms > STOP_DEADLINE_MS)
    event_base_loopbreak(p->base);
}

static void
main_signal(evutil_socket_t sig, short what, void *opaque)
{
  struct primary *p = opaque;
  struct timeval tv = { 0, 20 * 1000 };
  int i;

  (void)what;
  if (p->stopping)
    return;
  log_info("primary: %s received, stopping", strsignal((int)sig));
  p->stopping = true;
  stop_started_ms = util_now_ms();
  for (i = 0; i < p->n_nbd; i++) {
    nbd_server_free(p->nbd[i]);
    p->nbd[i] = NULL;
  }
  p->n_nbd = 0;
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
  bool clean;
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

  daemon_start(p->cfg.foreground);

  if (bdev_open(p->cfg.volume, 0, &p->vol, err, sizeof err) == -1)
    daemon_fail(2, "duplex-primary: --volume %s: %s", p->cfg.volume, err);
  main_open_meta(p);

  p->base = event_base_new();
  if (!p->base)
    daemon_fail(1, "duplex-primary: cannot create event loop");
  p->aio = aio_ctx_new(p->base, 256, err, sizeof err);
  if (!p->aio)
    daemon_fail(1, "duplex-primary: %s", err);
  p->oos = bitmap_new(p->vol.size, BDEV_ALIGN);
  if (!p->oos)
    daemon_fail(1, "duplex-primary: cannot allocate the bitmap for %llu "
                "bytes", (unsigned long long)p->vol.size);
  p->locks = lock_set_new();
  TAILQ_INIT(&p->waiting);
  p->repl = repl_new(p, err, sizeof err);
  if (!p->repl)
    daemon_fail(2, "duplex-primary: %s", err);
  p->resync = resync_new(p);
  /* Until the secondary has been synced, everything is out of sync. */
  bitmap_set_all(p->oos);

  for (i = 0; i < p->cfg.n_nbd; i++) {
    if (nbd_server_new(p, &p->cfg.nbd[i], &p->nbd[i], err, sizeof err) == -1)
      daemon_fail(2, "duplex-primary: --nbd: %s", err);
    p->n_nbd++;
  }
  if (p->cfg.control) {
    control = control_new(p->base, p->cfg.control, status_control, p, err,
                          sizeof err);
    if (!control)
      daemon_fail(2, "duplex-primary: --control %s: %s", p->cfg.control, err);
  }
  sigterm = evsignal_new(p->base, SIGTERM, main_signal, p);
  sigint = evsignal_new(p->base, SIGINT, main_signal, p);
  event_add(sigterm, NULL);
  event_add(sigint, NULL);

  repl_start(p->repl);
  if (p->cfg.pidfile && util_write_pidfile(p->cfg.pidfile) == -1)
    daemon_fail(2, "duplex-primary: --pidfile %s: %s", p->cfg.pidfile,
                strerror(errno));
  log_info("primary: serving %s (%llu bytes) over NBD, replicating to %s:%s "
           "in %s mode", p->vol.path, (unsigned long long)p->vol.size,
           p->cfg.peer.host, p->cfg.peer.port,
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
  if (control)
    control_free(control);
  sb = *meta_get(p->meta);
  sb.clean_shutdown = clean;
  meta_write(p->meta, &sb);
  meta_close(p->meta);
  if (p->cfg.pidfile)
    unlink(p->cfg.pidfile);
  if (clean) {
    /* Everything is idle: free it, so leak checkers see a clean exit. */
    resync_free(p->resync);
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
