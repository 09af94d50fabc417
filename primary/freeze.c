/* Freezing a file system for a consistency point (internal.h).
 *
 * The freeze is held by a watchdog child process, not by the agent: the
 * child opens the mount point, FIFREEZEs it, reports, and waits for the
 * agent to ask for the thaw.  It thaws (FITHAW) when asked, when the agent
 * dies (its end of the socket closes) and when the time limit passes,
 * whatever the agent is doing; so applications are never left frozen by a
 * crashed or stuck agent.  FIFREEZE itself (which writes back the dirty
 * data first and may take a while) blocks only the child, never the
 * agent's event loop.
 *
 * The child's messages: 'F' frozen, 'T' thawed when asked, 'X' thawed at
 * the time limit, each followed by a 4-byte errno (0: it worked). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "log.h"

struct freezer {
  char *path;
  pid_t pid;
  int sock;
  struct event *ev;
  freezer_fn fn;
  void *arg;
  bool got_f;                   /* the freeze was reported */
  bool frozen, thawed;
  char buf[5];
  size_t have;
};

static void
child_report(int sock, char what, int err)
{
  char msg[5];
  msg[0] = what;
  memcpy(msg + 1, &err, 4);
  if (write(sock, msg, sizeof msg) != (ssize_t)sizeof msg) {
    /* The agent is gone: nothing to tell. */
  }
}

static int64_t
child_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The watchdog: freeze, wait, thaw.  Never returns. */
static void __attribute__((noreturn))
child_main(int sock, const char *path, dev_t expect, unsigned timeout_ms)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  int64_t deadline;
  char what = 'T';
  int err = 0;

  if (fd < 0) {
    child_report(sock, 'F', errno);
    _exit(1);
  }
  /* Only the file system on the tailed device: an unmounted mount point
   * is a directory of its parent file system (the root, say), which must
   * never be frozen.  The open descriptor keeps it mounted from here. */
  if (fstat(fd, &st) == -1 || st.st_dev != expect) {
    child_report(sock, 'F', EXDEV);
    _exit(1);
  }
  if (ioctl(fd, FIFREEZE, 0) == -1) {
    child_report(sock, 'F', errno);
    _exit(1);
  }
  child_report(sock, 'F', 0);
  deadline = child_now_ms() + timeout_ms;
  for (;;) {
    struct pollfd pfd = { sock, POLLIN, 0 };
    int64_t left = deadline - child_now_ms();
    char c;
    int n;

    if (left <= 0) {
      what = 'X';
      break;
    }
    n = poll(&pfd, 1, (int)left);
    if (n == 0) {
      what = 'X';
      break;
    }
    if (n < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    /* A thaw request, or EOF: the agent died. */
    if (read(sock, &c, 1) <= 0 || c == 'T')
      break;
  }
  /* EINVAL: not frozen (any more): thawed all the same. */
  if (ioctl(fd, FITHAW, 0) == -1 && errno != EINVAL)
    err = errno;
  child_report(sock, what, err);
  _exit(err ? 1 : 0);
}

static void
freezer_readable(evutil_socket_t fd, short what, void *arg)
{
  struct freezer *f = arg;
  ssize_t n;
  (void)what;

  n = read(fd, f->buf + f->have, sizeof f->buf - f->have);
  if (n <= 0) {
    /* The watchdog is gone without a last word (killed): thaw here. */
    event_del(f->ev);
    if (f->frozen && !f->thawed) {
      int tfd = open(f->path, O_RDONLY | O_CLOEXEC);
      int err = 0;
      if (tfd < 0 || ioctl(tfd, FITHAW, 0) == -1)
        err = errno;
      if (tfd >= 0)
        close(tfd);
      log_warn("primary: the freeze watchdog of %s died; thawed it here%s%s",
               f->path, err ? ": " : "", err ? strerror(err) : "");
      f->thawed = true;
      f->fn(f->arg, 'T', err == EINVAL ? 0 : err);
    } else if (!f->got_f) {
      f->got_f = true;
      f->fn(f->arg, 'F', EPIPE);
    }
    return;
  }
  f->have += (size_t)n;
  if (f->have < sizeof f->buf)
    return;
  f->have = 0;
  {
    char c = f->buf[0];
    int err;
    memcpy(&err, f->buf + 1, 4);
    if (c == 'F') {
      f->got_f = true;
      f->frozen = err == 0;
    } else {
      f->thawed = true;
    }
    f->fn(f->arg, c, err);
  }
}

struct freezer *
freezer_start(struct event_base *base, const char *path, dev_t expect,
              unsigned timeout_ms, freezer_fn fn, void *arg, char *err,
              size_t errlen)
{
  struct freezer *f;
  int sv[2];
  pid_t pid;

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
    snprintf(err, errlen, "socketpair: %s", strerror(errno));
    return NULL;
  }
  pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork of the freeze watchdog: %s",
             strerror(errno));
    close(sv[0]);
    close(sv[1]);
    return NULL;
  }
  if (pid == 0) {
    /* Keep only the socket: the agent's volume (and its lock), link and
     * listeners must not outlive the agent in this process. */
    if (dup2(sv[1], 3) == -1)
      _exit(1);
    close_range(4, ~0u, 0);
    signal(SIGTERM, SIG_IGN); /* a stopping agent's group: thaw first */
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    child_main(3, path, expect, timeout_ms);
  }
  close(sv[1]);
  f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path)))
    abort();
  f->pid = pid;
  f->sock = sv[0];
  f->fn = fn;
  f->arg = arg;
  f->ev = event_new(base, f->sock, EV_READ | EV_PERSIST, freezer_readable, f);
  if (!f->ev || event_add(f->ev, NULL) == -1)
    abort();
  return f;
}

void
freezer_thaw(struct freezer *f)
{
  char c = 'T';
  if (f->thawed)
    return;
  if (write(f->sock, &c, 1) != 1)
    log_warn("primary: cannot reach the freeze watchdog of %s: %s (it "
             "thaws at its time limit)", f->path, strerror(errno));
}

bool
freezer_thawed(const struct freezer *f)
{
  return f->thawed || !f->frozen;
}

void
freezer_free(struct freezer *f)
{
  int st;

  if (!f)
    return;
  event_free(f->ev);
  /* Closing our end makes a watchdog still holding the freeze thaw. */
  close(f->sock);
  if (waitpid(f->pid, &st, 0) == -1 && errno != ECHILD)
    log_warn("primary: waiting for the freeze watchdog: %s",
             strerror(errno));
  free(f->path);
  free(f);
}
