/* --pre-hook / --post-hook of a consistency point (internal.h): /bin/sh -c CMD
 * in its own process group, with DUPLEX_POINT set to the point's name (the
 * snapshot's name on the secondary), its output (the first 1 KiB) kept for the log,
 * its exit seen through a pidfd on the event loop; killed, with its whole
 * group, at the time limit. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "log.h"

#define HOOK_OUTPUT 1024

struct hook {
  pid_t pid;
  int pidfd, out;
  struct event *exit_ev, *out_ev, *timer;
  hook_fn fn;
  void *arg;
  char output[HOOK_OUTPUT + 1];
  size_t have;
  bool timed_out;
};

static void
hook_read_output(struct hook *h)
{
  for (;;) {
    char scratch[512];
    ssize_t n;
    if (h->have < HOOK_OUTPUT)
      n = read(h->out, h->output + h->have, HOOK_OUTPUT - h->have);
    else
      n = read(h->out, scratch, sizeof scratch); /* drop the rest */
    if (n <= 0)
      return;
    if (h->have < HOOK_OUTPUT)
      h->have += (size_t)n;
  }
}

static void
hook_out_readable(evutil_socket_t fd, short what, void *arg)
{
  struct hook *h = arg;
  (void)fd;
  (void)what;
  hook_read_output(h);
}

static void
hook_exited(evutil_socket_t fd, short what, void *arg)
{
  struct hook *h = arg;
  siginfo_t si;
  int status;
  (void)fd;
  (void)what;

  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)h->pid, &si, WEXITED | WNOHANG) == -1 ||
      si.si_pid == 0)
    return;
  hook_read_output(h);
  h->output[h->have] = '\0';
  while (h->have > 0 && h->output[h->have - 1] == '\n')
    h->output[--h->have] = '\0';
  if (h->timed_out)
    status = HOOK_TIMED_OUT;
  else if (si.si_code == CLD_EXITED)
    status = si.si_status;
  else
    status = -si.si_status; /* killed by a signal */
  h->pid = 0;
  event_del(h->exit_ev);
  event_del(h->out_ev);
  event_del(h->timer);
  h->fn(h->arg, status, h->output);
}

static void
hook_timeout(evutil_socket_t fd, short what, void *arg)
{
  struct hook *h = arg;
  (void)fd;
  (void)what;
  h->timed_out = true;
  if (h->pid > 0)
    kill(-h->pid, SIGKILL);
}

struct hook *
hook_run(struct event_base *base, const char *cmd, const char *point,
         unsigned timeout_ms, hook_fn fn, void *arg, char *err,
         size_t errlen)
{
  struct hook *h;
  int pipefd[2];
  pid_t pid;

  if (pipe2(pipefd, O_CLOEXEC) == -1) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    return NULL;
  }
  pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork: %s", strerror(errno));
    close(pipefd[0]);
    close(pipefd[1]);
    return NULL;
  }
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDONLY);
    setpgid(0, 0);
    signal(SIGPIPE, SIG_DFL);
    if (devnull >= 0)
      dup2(devnull, 0);
    dup2(pipefd[1], 1);
    dup2(pipefd[1], 2);
    close_range(3, ~0u, 0); /* nothing of the agent's */
    setenv("DUPLEX_POINT", point, 1);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  setpgid(pid, pid); /* either side may run first */
  close(pipefd[1]);
  h = calloc(1, sizeof *h);
  if (!h)
    abort();
  h->pid = pid;
  h->out = pipefd[0];
  h->fn = fn;
  h->arg = arg;
  h->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (h->pidfd < 0) {
    snprintf(err, errlen, "pidfd_open: %s", strerror(errno));
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(h->out);
    free(h);
    return NULL;
  }
  fcntl(h->out, F_SETFL, O_NONBLOCK);
  h->exit_ev = event_new(base, h->pidfd, EV_READ | EV_PERSIST, hook_exited,
                         h);
  h->out_ev = event_new(base, h->out, EV_READ | EV_PERSIST, hook_out_readable,
                        h);
  h->timer = event_new(base, -1, 0, hook_timeout, h);
  if (!h->exit_ev || !h->out_ev || !h->timer)
    abort();
  {
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    event_add(h->exit_ev, NULL);
    event_add(h->out_ev, NULL);
    event_add(h->timer, &tv);
  }
  return h;
}

void
hook_free(struct hook *h)
{
  if (!h)
    return;
  if (h->pid > 0) {
    kill(-h->pid, SIGKILL);
    waitpid(h->pid, NULL, 0);
  }
  event_free(h->exit_ev);
  event_free(h->out_ev);
  event_free(h->timer);
  close(h->pidfd);
  close(h->out);
  free(h);
}
