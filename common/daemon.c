/* Daemonising with a status pipe back to the waiting parent. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"

static int daemon_pipe = -1;

void
daemon_start(int foreground)
{
  int fds[2];
  pid_t pid;

  if (foreground)
    return;
  if (pipe2(fds, O_CLOEXEC) == -1) {
    fprintf(stderr, "cannot create pipe: %s\n", strerror(errno));
    exit(1);
  }
  pid = fork();
  if (pid == -1) {
    fprintf(stderr, "cannot fork: %s\n", strerror(errno));
    exit(1);
  }
  if (pid > 0) {
    /* Parent: first byte is the exit code, the rest a message. */
    char buf[1024];
    ssize_t n, total = 0;
    close(fds[1]);
    while (total < (ssize_t)sizeof buf - 1 &&
           (n = read(fds[0], buf + total, sizeof buf - 1 - total)) != 0) {
      if (n == -1) {
        if (errno == EINTR)
          continue;
        break;
      }
      total += n;
    }
    if (total == 0) {
      int st;
      waitpid(pid, &st, 0);
      fprintf(stderr, "agent exited during startup\n");
      exit(1);
    }
    buf[total] = '\0';
    if (buf[0] == 0)
      exit(0);
    if (total > 1)
      fputs(buf + 1, stderr);
    exit((unsigned char)buf[0]);
  }
  close(fds[0]);
  daemon_pipe = fds[1];
  if (setsid() == -1)
    exit(1);
}

static void
daemon_detach_stdio(void)
{
  int fd = open("/dev/null", O_RDWR);
  if (fd >= 0) {
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2)
      close(fd);
  }
}

void
daemon_ready(void)
{
  char ok = 0;
  if (daemon_pipe < 0)
    return;
  if (write(daemon_pipe, &ok, 1) != 1) {
    /* The parent is gone; nothing to tell. */
  }
  close(daemon_pipe);
  daemon_pipe = -1;
  daemon_detach_stdio();
}

void
daemon_fail(int code, const char *fmt, ...)
{
  char buf[1024];
  va_list ap;
  int n;

  buf[0] = (char)code;
  va_start(ap, fmt);
  n = vsnprintf(buf + 1, sizeof buf - 2, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  if (n > (int)sizeof buf - 3)
    n = (int)sizeof buf - 3;
  buf[1 + n] = '\n';
  if (daemon_pipe < 0) {
    fwrite(buf + 1, 1, (size_t)n + 1, stderr);
    exit(code);
  }
  if (write(daemon_pipe, buf, (size_t)n + 2) < 0) {
    /* Parent gone. */
  }
  exit(code);
}
