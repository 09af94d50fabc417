/* duplex-secondary: start-up checks, daemon life cycle, and the glue between
 * the apply module and the active link.
 *
 * Everything that can be wrong with the command line or the files is
 * checked before daemonizing, so it reaches the operator's terminal with
 * exit code 2.  The daemonized child reports the rest of its start-up
 * through common/daemon.c, whose parent exits only once the child is ready
 * (the pidfile exists) or has failed. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"
#include "connector.h"

#include "control.h"
#include "daemon.h"
#include "log.h"

#define EXIT_USAGE 2

/* Absolute copies of the paths given on the command line (a daemon
 * chdirs to /). */
struct main_paths {
  char volume[PATH_MAX], meta[PATH_MAX], cert[PATH_MAX], key[PATH_MAX],
      ca[PATH_MAX], control[PATH_MAX], pidfile[PATH_MAX], portfile[PATH_MAX];
};

static struct main_paths main_paths;
static bool main_daemonized;            /* in the child, before ready */
static char main_error[1024];           /* start-up failure, for the parent */
static bool main_port_file;
static bool main_meta_created;
static bool main_running;               /* start-up succeeded */

/* A start-up failure: printed now in the foreground, else kept for
 * daemon_fail once main_run has cleaned up.  Returns code. */
static int main_fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int
main_fail(int code, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(main_error, sizeof main_error, fmt, ap);
  va_end(ap);
  if (main_daemonized)
    log_error("secondary: %s", main_error);
  else
    fprintf(stderr, "duplex-secondary: %s\n", main_error);
  return code;
}

/* Error texts from common/ often start with "... PATH: "; keep the rest. */
static const char *
main_reason(const char *err, const char *path)
{
  const char *p = strstr(err, path);

  if (p != NULL && strncmp(p + strlen(path), ": ", 2) == 0)
    return p + strlen(path) + 2;
  return err;
}

static int
main_abspath(const char *flag, const char **path, char *buf, size_t len)
{
  char cwd[PATH_MAX];
  int n;

  if ((*path)[0] == '/')
    n = snprintf(buf, len, "%s", *path);
  else if (getcwd(cwd, sizeof cwd) == NULL)
    return main_fail(EXIT_USAGE, "--%s %s: cannot resolve the current "
                     "directory: %s; give an absolute path", flag, *path,
                     strerror(errno));
  else
    n = snprintf(buf, len, "%s/%s", cwd, *path);
  if (n < 0 || (size_t)n >= len)
    return main_fail(EXIT_USAGE, "--%s %s: path too long", flag, *path);
  *path = buf;
  return 0;
}

/* Daemons chdir to /: make every path absolute first. */
static int
main_absolutize(struct config *cfg)
{
  struct main_paths *mp = &main_paths;

  if (main_abspath("volume", &cfg->volume, mp->volume, sizeof mp->volume) ||
      main_abspath("meta", &cfg->meta, mp->meta, sizeof mp->meta) ||
      main_abspath("tls-cert", &cfg->tls.cert, mp->cert, sizeof mp->cert) ||
      main_abspath("tls-key", &cfg->tls.key, mp->key, sizeof mp->key) ||
      main_abspath("tls-ca", &cfg->tls.ca, mp->ca, sizeof mp->ca))
    return EXIT_USAGE;
  if (cfg->control != NULL &&
      main_abspath("control", &cfg->control, mp->control,
                   sizeof mp->control))
    return EXIT_USAGE;
  if (cfg->pidfile != NULL &&
      main_abspath("pidfile", &cfg->pidfile, mp->pidfile,
                   sizeof mp->pidfile))
    return EXIT_USAGE;
  return 0;
}

static int
main_check_readable(const char *flag, const char *path)
{
  struct stat st;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd == -1)
    return main_fail(EXIT_USAGE, "--%s %s: %s", flag, path, strerror(errno));
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    return main_fail(EXIT_USAGE, "--%s %s: is a directory; expected a PEM "
                     "file", flag, path);
  }
  close(fd);
  return 0;
}

static int
main_check_tls(struct secondary *s)
{
  const struct tls_config *t = &s->cfg.tls;
  const char *flag = "tls-cert", *path = t->cert;
  char err[512] = "";
  SSL_CTX *ctx;

  if (main_check_readable("tls-cert", t->cert) ||
      main_check_readable("tls-key", t->key) ||
      main_check_readable("tls-ca", t->ca))
    return EXIT_USAGE;
  /* Loaded once here for a clear message before daemonizing; the
   * connector loads them again for its connections. */
  ctx = tls_ctx_new(t, !s->cfg.dial, err, sizeof err);
  if (ctx != NULL) {
    SSL_CTX_free(ctx);
    return 0;
  }
  /* tls_ctx_new names the file that failed; map it back to its flag. */
  if (strstr(err, t->key) != NULL && strcmp(t->key, t->cert) != 0) {
    flag = "tls-key";
    path = t->key;
  } else if (strstr(err, t->ca) != NULL && strstr(err, t->cert) == NULL) {
    flag = "tls-ca";
    path = t->ca;
  }
  return main_fail(EXIT_USAGE, "--%s %s: %s", flag, path,
                   main_reason(err, path));
}

static int
main_check_volume(const char *path)
{
  char err[512] = "", dir[PATH_MAX];
  struct stat st;
  struct bdev b;

  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return main_fail(EXIT_USAGE, "--volume %s: is a directory; expected a "
                       "block device or an image file", path);
    if (bdev_open(path, 0, &b, err, sizeof err) == -1)
      return main_fail(EXIT_USAGE, "--volume %s: %s", path,
                       main_reason(err, path));
    bdev_close(&b);
    return 0;
  }
  if (errno != ENOENT)
    return main_fail(EXIT_USAGE, "--volume %s: %s", path, strerror(errno));
  /* Created at the primary's size on its first HELLO: the directory must
   * be there. */
  snprintf(dir, sizeof dir, "%s", path);
  if (stat(dirname(dir), &st) == -1 || !S_ISDIR(st.st_mode))
    return main_fail(EXIT_USAGE, "--volume %s: directory %s does not exist; "
                     "create it or point --volume elsewhere", path, dir);
  return 0;
}

static int
main_open_meta(struct secondary *s)
{
  const char *path = s->cfg.meta;
  char err[512] = "";

  /* A primary's metadata is fine: roles belong to the process (see
   * identity.c). */
  if (meta_open(path, &s->meta, &main_meta_created, err, sizeof err) == -1)
    return main_fail(EXIT_USAGE, "--meta %s: %s", path,
                     main_reason(err, path));
  return 0;
}

/* Running: from now on a crash is an unclean shutdown. */
static int
main_mark_running(struct secondary *s)
{
  struct meta_sb sb;
  bool was_clean, was_secondary;
  char err[512] = "";
  int r;

  was_secondary = meta_get(s->meta)->role == META_ROLE_SECONDARY;
  if (identity_start(s, err, sizeof err) == -1)
    return main_fail(EXIT_USAGE, "--meta %s: %s", s->cfg.meta, err);
  sb = *meta_get(s->meta);
  was_clean = sb.clean_shutdown;
  if (was_clean || main_meta_created) {
    sb.clean_shutdown = false;
    r = meta_write(s->meta, &sb);
    if (r < 0)
      return main_fail(EXIT_USAGE, "--meta %s: write failed: %s",
                       s->cfg.meta, strerror(-r));
  }
  if (main_meta_created)
    log_info("secondary: metadata %s: created", s->cfg.meta);
  else if (was_secondary && !was_clean)
    log_warn("secondary: metadata %s: the previous run did not shut down "
             "cleanly; the primary resends what it did not see "
             "acknowledged", s->cfg.meta);
  return 0;
}

/* Fork (the parent waits for the child's verdict), new session, cwd /,
 * syslog.  stdio is detached by daemon_ready. */
static void
main_daemonize(void)
{
  daemon_start(0);
  main_daemonized = true;
  log_init("duplex-secondary", false);
  if (chdir("/") == -1)
    log_warn("secondary: chdir /: %m");
}

/* ---- apply events, forwarded to the active link ---- */

static void
main_apply_done(void *opaque, const struct apply_op *op)
{
  struct secondary *s = opaque;

  /* A snapshot MARK was answered when it was taken (snap.c). */
  if (op->type == APPLY_MARK && op->tag == SNAP_MARK_TAG)
    return;
  if (s->link != NULL)
    link_apply_done(s->link, op);
}

static void
main_apply_failed(void *opaque, const struct apply_op *op, int err)
{
  struct secondary *s = opaque;
  char what[96];

  switch (op->type) {
  case APPLY_WRITE:
  case APPLY_ZERO:
    snprintf(what, sizeof what, "%s%s at %llu",
             op->io == APPLY_IO_SYNC ? "sync after " : "",
             op->type == APPLY_WRITE ? "write" : "zero",
             (unsigned long long)op->offset);
    break;
  case APPLY_FLUSH:
  case APPLY_MARK:
    snprintf(what, sizeof what, "flush");
    break;
  case APPLY_VERIFY:
    snprintf(what, sizeof what, "read for verify at %llu",
             (unsigned long long)op->offset);
    break;
  }
  snprintf(s->st.pause_reason, sizeof s->st.pause_reason, "%s: %s", what,
           strerror(err));
  status_error(s, "secondary: replica %s: %s; replication paused, primary "
               "is tracking changes; fix the disk, then run `duplexctl "
               "--control %s resume` or restart duplex-secondary",
               replica_path(s->replica), s->st.pause_reason,
               s->cfg.control != NULL ? s->cfg.control : "SOCKET");
  if (s->link != NULL)
    link_apply_failed(s->link, err, s->st.last_error);
}

/* Stopping: nothing the kernel may still write into (apply's writes, the
 * snapshot copier's reads)?  Their buffers must outlive them. */
static bool
main_io_idle(const struct secondary *s)
{
  return !apply_busy(s->apply) && !snap_reading(s->snap);
}

static void
main_apply_idle(void *opaque)
{
  struct secondary *s = opaque;

  if (s->stopping) {
    if (main_io_idle(s))
      event_base_loopexit(s->base, NULL);
  } else if (s->link != NULL) {
    link_kick(s->link);
  }
}

/* ---- life cycle ---- */

static void
main_tick_cb(evutil_socket_t fd, short what, void *arg)
{
  struct secondary *s = arg;

  (void)fd;
  (void)what;
  if (s->stopping) {
    if (main_io_idle(s))
      event_base_loopexit(s->base, NULL);
    return;
  }
  link_tick_all(s);
  snap_tick(s->snap);
}

static void
main_stop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
  struct secondary *s = arg;

  (void)fd;
  (void)what;
  log_warn("secondary: replica %s: I/O still in flight after %u s; "
           "stopping without marking a clean shutdown",
           replica_path(s->replica), SEC_STOP_TIMEOUT_MS / 1000);
  event_base_loopbreak(s->base);
}

static void
main_signal_cb(evutil_socket_t sig, short what, void *arg)
{
  struct secondary *s = arg;
  struct timeval tv = { SEC_STOP_TIMEOUT_MS / 1000, 0 };

  (void)what;
  if (s->stopping) {
    event_base_loopbreak(s->base);
    return;
  }
  s->stopping = true;
  log_info("secondary: %s received, stopping", strsignal((int)sig));
  connector_free(s->conn);
  s->conn = NULL;
  link_free_all(s);             /* aborts the apply queue */
  if (main_io_idle(s)) {
    event_base_loopexit(s->base, NULL);
    return;
  }
  /* In-flight writes and copier reads finish (their buffers must outlive
   * them); then main_apply_idle or the tick ends the loop. */
  event_base_once(s->base, -1, EV_TIMEOUT, main_stop_timeout_cb, s, &tv);
}

static void
main_cleanup(struct secondary *s, struct aio_ctx *aio, struct event **sigs,
             size_t nsigs)
{
  struct meta_sb sb;
  bool idle, clean;
  size_t i;
  int r;

  connector_free(s->conn);
  s->conn = NULL;
  link_free_all(s);
  if (s->control != NULL)
    control_free(s->control);
  s->control = NULL;
  for (i = 0; i < nsigs; i++)
    if (sigs[i] != NULL)
      event_free(sigs[i]);
  if (s->tick != NULL)
    event_free(s->tick);

  idle = s->apply == NULL || main_io_idle(s);
  clean = idle;
  if (clean && s->replica != NULL) {
    r = replica_sync(s->replica);
    if (r < 0) {
      log_error("secondary: replica %s: fdatasync: %s; not marking a clean "
                "shutdown", replica_path(s->replica), strerror(-r));
      clean = false;
    }
  }
  if (clean && s->meta != NULL) {
    sb = *meta_get(s->meta);
    sb.clean_shutdown = true;
    r = meta_write(s->meta, &sb);
    if (r < 0)
      log_error("secondary: metadata %s: write failed: %s; the next start "
                "will see an unclean shutdown", s->cfg.meta, strerror(-r));
  }
  if (s->cfg.pidfile != NULL) {
    unlink(s->cfg.pidfile);
    if (main_port_file)
      unlink(main_paths.portfile);
  }
  /* With I/O still in flight the kernel may yet touch its buffers: leave
   * them (and the aio context) to process exit. */
  if (idle) {
    snap_free(s->snap);         /* copying snapshots are reported lost */
    apply_free(s->apply);
    replica_free(s->replica);
    if (aio != NULL)
      aio_ctx_free(aio);
  }
  if (s->meta != NULL)
    meta_close(s->meta);
  if (idle && s->base != NULL)
    event_base_free(s->base);
  if (main_running)
    log_info("secondary: stopped%s", clean ? "" : " (unclean)");
}

/* Everything after daemonizing: the event loop and its parts. */
static int
main_run(struct secondary *s, int listen_fd)
{
  static const int signals[] = { SIGTERM, SIGINT };
  struct event *sigs[ARRAY_SIZE(signals)] = { NULL };
  struct apply_backend be;
  struct apply_events ev = { main_apply_done, main_apply_failed,
                             main_apply_idle, s };
  struct timeval tick = { 0, SEC_TICK_MS * 1000 };
  struct aio_ctx *aio = NULL;
  char err[512] = "", port[32];
  int code = 1;
  size_t i;

  s->base = event_base_new();
  if (s->base == NULL) {
    code = main_fail(1, "cannot create the event loop");
    goto out;
  }
  aio = aio_ctx_new(s->base, SEC_AIO_DEPTH, err, sizeof err);
  if (aio == NULL) {
    code = main_fail(1, "libaio: %s", err);
    goto out;
  }
  s->replica = replica_new(s->base, aio, s->cfg.volume);
  if (s->replica == NULL) {
    code = main_fail(1, "out of memory");
    goto out;
  }
  if (access(s->cfg.volume, F_OK) == 0 &&
      replica_open_existing(s->replica, err, sizeof err) == -1) {
    code = main_fail(EXIT_USAGE, "--volume %s: %s", s->cfg.volume, err);
    goto out;
  }
  if (snap_new(s, aio, &s->snap, err, sizeof err) < 0) {
    code = main_fail(EXIT_USAGE, "--snapshot-store %s: %s",
                     s->cfg.snapshot_store, err);
    goto out;
  }
  if (replica_is_open(s->replica))
    snap_replica_ready(s->snap);
  /* Copy-before-write sits in front of the replica. */
  be.start = snap_backend_start;
  be.opaque = s->snap;
  s->apply = apply_new(&be, &ev, SEC_MAX_INFLIGHT);
  if (s->apply == NULL) {
    code = main_fail(1, "out of memory");
    goto out;
  }
  if (conn_new(s, listen_fd, err, sizeof err) == -1) {
    code = main_fail(EXIT_USAGE, "--%s %s: %s",
                     s->cfg.dial ? "peer" : "listen", s->cfg.listen_arg, err);
    goto out;
  }
  if (s->cfg.control != NULL) {
    s->control = control_new(s->base, s->cfg.control, status_control, s,
                             err, sizeof err);
    if (s->control == NULL) {
      code = main_fail(EXIT_USAGE, "--control %s: %s", s->cfg.control,
                       main_reason(err, s->cfg.control));
      goto out;
    }
  }
  for (i = 0; i < ARRAY_SIZE(signals); i++) {
    sigs[i] = evsignal_new(s->base, signals[i], main_signal_cb, s);
    if (sigs[i] == NULL || event_add(sigs[i], NULL) == -1) {
      code = main_fail(1, "cannot install signal handlers");
      goto out;
    }
  }
  s->tick = event_new(s->base, -1, EV_PERSIST, main_tick_cb, s);
  if (s->tick == NULL || event_add(s->tick, &tick) == -1) {
    code = main_fail(1, "cannot create the timer");
    goto out;
  }

  if (s->cfg.pidfile != NULL) {
    if (!s->cfg.dial && strcmp(s->cfg.listen.port, "0") == 0) {
      snprintf(main_paths.portfile, sizeof main_paths.portfile, "%s.port",
               s->cfg.pidfile);
      snprintf(port, sizeof port, "%d\n", s->listen_port);
      if (util_write_file_atomic(main_paths.portfile, port) == -1) {
        code = main_fail(EXIT_USAGE, "--pidfile %s: cannot write %s: %s",
                         s->cfg.pidfile, main_paths.portfile,
                         strerror(errno));
        goto out;
      }
      main_port_file = true;
    }
    if (util_write_pidfile(s->cfg.pidfile) == -1) {
      code = main_fail(EXIT_USAGE, "--pidfile %s: %s", s->cfg.pidfile,
                       strerror(errno));
      goto out;
    }
  }
  if (main_mark_running(s) != 0) {
    code = EXIT_USAGE;
    goto out;
  }
  if (main_daemonized) {
    daemon_ready();
    main_daemonized = false;
  }
  if (s->cfg.dial)
    log_info("secondary: dialling primary %s at %s; replica %s",
             s->cfg.tls.peer_name, s->cfg.listen_arg, s->cfg.volume);
  else
    log_info("secondary: listening on %s port %d for primary %s; replica %s",
             s->cfg.listen.host[0] != '\0' ? s->cfg.listen.host : "*",
             s->listen_port, s->cfg.tls.peer_name, s->cfg.volume);
  main_running = true;
  connector_start(s->conn);

  event_base_dispatch(s->base);
  code = 0;

out:
  main_cleanup(s, aio, sigs, ARRAY_SIZE(sigs));
  if (code != 0 && main_daemonized)
    daemon_fail(code, "duplex-secondary: %s", main_error);
  return code;
}

int
main(int argc, char **argv)
{
  struct secondary s;
  char err[512] = "";
  int r, fd;

  memset(&s, 0, sizeof s);
  TAILQ_INIT(&s.links);
  r = config_parse(argc, argv, &s.cfg, stdout, err, sizeof err);
  if (r == 1)
    return 0;
  if (r == -1) {
    fprintf(stderr, "duplex-secondary: %s\n", err);
    return EXIT_USAGE;
  }
  log_init("duplex-secondary", true);
  if (s.cfg.verbose)
    log_set_level(LOG_LVL_DEBUG);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  util_tune_malloc();

  if (!s.cfg.foreground && (r = main_absolutize(&s.cfg)) != 0)
    return r;
  if ((r = main_check_tls(&s)) != 0 ||
      (r = main_check_volume(s.cfg.volume)) != 0 ||
      (r = main_open_meta(&s)) != 0)
    return r;
  fd = -1;
  s.listen_port = -1;
  if (!s.cfg.dial) {
    fd = util_listen(&s.cfg.listen, err, sizeof err);
    if (fd == -1)
      return main_fail(EXIT_USAGE, "--listen %s: %s", s.cfg.listen_arg,
                       main_reason(err, s.cfg.listen_arg));
    s.listen_port = util_local_port(fd);
  }
  if (gethostname(s.node_name, sizeof s.node_name - 1) == -1)
    snprintf(s.node_name, sizeof s.node_name, "unknown");

  if (!s.cfg.foreground)
    main_daemonize();
  return main_run(&s, fd);
}
