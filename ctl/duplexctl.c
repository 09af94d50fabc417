/* duplexctl: send one command to an agent's control socket and print the
 * answer.  The agent replies "OK\n" or "ERR\n" followed by a body, then
 * closes the connection. */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"
#include "version.h"

#define DUPLEXCTL_TIMEOUT_MS 10000
#define DEMOTE_DEFAULT_TIMEOUT_MS 60000 /* as duplex-primary's demote */
#define DUPLEXCTL_MAX_LINE 4096
#define DUPLEXCTL_MAX_REPLY (16u * 1024 * 1024)

enum { EXIT_ERR = 1, EXIT_USAGE = 2 };

static void
duplexctl_usage(FILE *out)
{
  fprintf(out,
          "Usage: duplexctl --control SOCKET COMMAND [ARGS...]\n"
          "\n"
          "Send COMMAND to a running duplex-primary or duplex-secondary\n"
          "through its control socket (its --control option).\n"
          "\n"
          "Options:\n"
          "  -c, --control SOCKET  the agent's control socket\n"
          "  -h, --help            show this help\n"
          "  -V, --version         show the version\n"
          "\n"
          "Commands:\n"
          "  status [--json]       replication state, progress and counters\n"
          "  verify [--repair]     primary: compare block hashes of both sides\n"
          "                        online; --repair resyncs what differs;\n"
          "                        progress and results in status\n"
          "  resolve --discard-local\n"
          "                        after a split brain (or to replace a replica\n"
          "                        holding other data): throw away this side's\n"
          "                        changes; the next connection resyncs it\n"
          "  resume                secondary: apply again after a replica I/O\n"
          "                        error or full disk was fixed\n"
          "  demote [--timeout DURATION]\n"
          "                        primary, planned switchover: stop serving NBD\n"
          "                        (in-flight requests are answered first), wait\n"
          "                        until the secondary has everything (default\n"
          "                        60s), mark both sides' metadata and exit; then\n"
          "                        start each node in the other role: nothing is\n"
          "                        resynced\n"
          "  restore --snapshot ID | --replica [--instant]\n"
          "          [--restore-rate BYTES_PER_S]\n"
          "                        primary: make this volume the contents of a\n"
          "                        snapshot of the replica (a before-restore\n"
          "                        snapshot is taken first: restoring that one\n"
          "                        undoes it) or of the replica itself (block\n"
          "                        hashes compared); only blocks that differ\n"
          "                        travel and the replica follows.  Returns once\n"
          "                        started; NBD clients are refused until status\n"
          "                        shows sync: in-sync, unless --instant: NBD\n"
          "                        serves throughout, reads of blocks not yet\n"
          "                        restored fetch them first, writes win.\n"
          "                        --restore-rate caps the background copy\n"
          "\n"
          "Other commands are passed to the agent as they are.\n");
}

/* How long to wait for the answer: DUPLEXCTL_TIMEOUT_MS, or for a
 * command that waits on purpose (demote --timeout D) that long and a
 * margin.  The agent checks the arguments; a bad value here just means
 * the usual wait. */
static long long
duplexctl_wait_ms(int argc, char **argv)
{
  uint64_t ms = DEMOTE_DEFAULT_TIMEOUT_MS;
  char err[128];
  int i;

  if (argc >= 1 && strcmp(argv[0], "restore") == 0)
    return 60000 + DUPLEXCTL_TIMEOUT_MS;  /* waits for in-sync at most 60 s */
  if (argc < 1 || strcmp(argv[0], "demote") != 0)
    return DUPLEXCTL_TIMEOUT_MS;
  for (i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--timeout") == 0 &&
        util_parse_duration_ms(argv[i + 1], &ms, err, sizeof err) == -1)
      ms = DEMOTE_DEFAULT_TIMEOUT_MS;
  return (long long)ms + DUPLEXCTL_TIMEOUT_MS;
}

static int
duplexctl_remaining(long long deadline)
{
  long long left = deadline - (long long)util_now_ms();
  return left > 0 ? (int)left : 0;
}

/* Wait until fd is ready for events; 1 ready, 0 timed out, -1 error. */
static int
duplexctl_wait(int fd, short events, long long deadline)
{
  struct pollfd pfd = { .fd = fd, .events = events };

  for (;;) {
    int r = poll(&pfd, 1, duplexctl_remaining(deadline));
    if (r >= 0)
      return r;
    if (errno != EINTR)
      return -1;
  }
}

static int
duplexctl_send(int fd, const char *buf, size_t len, long long deadline)
{
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (duplexctl_wait(fd, POLLOUT, deadline) == 0) {
        errno = ETIMEDOUT;
        return -1;
      }
      continue;
    }
    if (n < 0)
      return -1;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Read until the agent closes.  Returns the length, -1 with errno. */
static ssize_t
duplexctl_recv(int fd, char **out, long long deadline)
{
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap + 1);

  if (!buf)
    return -1;
  for (;;) {
    ssize_t n;
    int r = duplexctl_wait(fd, POLLIN, deadline);
    if (r <= 0) {
      if (r == 0)
        errno = ETIMEDOUT;
      goto err;
    }
    if (len == cap) {
      char *nb;
      if (cap >= DUPLEXCTL_MAX_REPLY) {
        errno = EMSGSIZE;
        goto err;
      }
      cap *= 2;
      nb = realloc(buf, cap + 1);
      if (!nb)
        goto err;
      buf = nb;
    }
    n = recv(fd, buf + len, cap - len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (n < 0)
      goto err;
    if (n == 0)
      break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  *out = buf;
  return (ssize_t)len;

err:
  free(buf);
  return -1;
}

/* The words joined by single spaces plus "\n", or NULL with a message. */
static char *
duplexctl_join(int argc, char **argv)
{
  size_t len = 1;
  char *line, *p;

  for (int i = 0; i < argc; i++) {
    if (!argv[i][0] || strpbrk(argv[i], " \t\r\n")) {
      fprintf(stderr, "duplexctl: argument \"%s\" is empty or contains "
              "whitespace, which the control protocol cannot carry\n",
              argv[i]);
      return NULL;
    }
    len += strlen(argv[i]) + 1;
  }
  if (len > DUPLEXCTL_MAX_LINE) {
    fprintf(stderr, "duplexctl: command longer than %d bytes\n",
            DUPLEXCTL_MAX_LINE);
    return NULL;
  }
  line = p = malloc(len);
  if (!line) {
    fprintf(stderr, "duplexctl: out of memory\n");
    return NULL;
  }
  for (int i = 0; i < argc; i++)
    p += sprintf(p, "%s%s", i ? " " : "", argv[i]);
  strcpy(p, "\n");
  return line;
}

static int
duplexctl_connect(const char *path, long long deadline)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd, r;

  if (strlen(path) >= sizeof sa.sun_path) {
    fprintf(stderr, "duplexctl: control socket path %s is too long (at most "
            "%zu bytes)\n", path, sizeof sa.sun_path - 1);
    exit(EXIT_USAGE);
  }
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    fprintf(stderr, "duplexctl: socket: %m\n");
    exit(EXIT_ERR);
  }
  /* A non-blocking Unix connect fails with EAGAIN while the agent's accept
   * backlog is full: try again until the deadline. */
  while ((r = connect(fd, (struct sockaddr *)&sa, sizeof sa)) == -1 &&
         (errno == EAGAIN || errno == EINTR) && duplexctl_remaining(deadline))
    usleep(20000);
  if (r == -1) {
    fprintf(stderr, "duplexctl: cannot connect to control socket %s: %m; is "
            "the agent running?\n", path);
    exit(EXIT_ERR);
  }
  return fd;
}

static int
duplexctl_print(const char *path, char *reply, size_t len)
{
  char *nl = memchr(reply, '\n', len);
  char *body;
  size_t blen;
  bool ok;

  if (!nl) {
    fprintf(stderr, "duplexctl: no answer from %s (the agent closed the "
            "connection); check its log\n", path);
    return EXIT_ERR;
  }
  *nl = '\0';
  if (strcmp(reply, "OK") != 0 && strcmp(reply, "ERR") != 0) {
    fprintf(stderr, "duplexctl: unexpected answer from %s: \"%.80s\"; is "
            "this a duplex control socket?\n", path, reply);
    return EXIT_ERR;
  }
  ok = strcmp(reply, "OK") == 0;
  body = nl + 1;
  blen = len - (size_t)(body - reply);
  if (ok) {
    fwrite(body, 1, blen, stdout);
    if (blen && body[blen - 1] != '\n')
      putchar('\n');
    return fflush(stdout) == 0 ? 0 : EXIT_ERR;
  }
  while (blen && body[blen - 1] == '\n')
    blen--;
  fprintf(stderr, "duplexctl: %.*s\n", (int)blen, body);
  return EXIT_ERR;
}

int
main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "control", required_argument, NULL, 'c' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *control = NULL;
  long long deadline, wait_ms;
  char *line, *reply;
  ssize_t n;
  int c, fd, rc;

  /* "+": stop at the command, so "status --json" reaches the agent. */
  opterr = 0; /* our own messages, prefixed "duplexctl:" */
  while ((c = getopt_long(argc, argv, "+:c:hV", opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      control = optarg;
      break;
    case 'h':
      duplexctl_usage(stdout);
      return 0;
    case 'V':
      printf("duplexctl %s\n", DUPLEX_VERSION_TEXT);
      return 0;
    case ':':
      fprintf(stderr, "duplexctl: option %s needs an argument\n"
              "Try 'duplexctl --help' for more information.\n",
              argv[optind - 1]);
      return EXIT_USAGE;
    default:
      fprintf(stderr, "duplexctl: unknown option %s\n"
              "Try 'duplexctl --help' for more information.\n",
              argv[optind - 1]);
      return EXIT_USAGE;
    }
  }
  if (!control) {
    fprintf(stderr, "duplexctl: --control SOCKET is required\n"
            "Try 'duplexctl --help' for more information.\n");
    return EXIT_USAGE;
  }
  if (optind >= argc) {
    fprintf(stderr, "duplexctl: no command given (e.g. status)\n"
            "Try 'duplexctl --help' for more information.\n");
    return EXIT_USAGE;
  }
  line = duplexctl_join(argc - optind, argv + optind);
  if (!line)
    return EXIT_USAGE;

  wait_ms = duplexctl_wait_ms(argc - optind, argv + optind);
  deadline = (long long)util_now_ms() + wait_ms;
  fd = duplexctl_connect(control, deadline);
  if (duplexctl_send(fd, line, strlen(line), deadline) == -1 ||
      (n = duplexctl_recv(fd, &reply, deadline)) < 0) {
    if (errno == ETIMEDOUT)
      fprintf(stderr, "duplexctl: no answer from %s within %d s; the agent "
              "may be stuck, check its log\n", control,
              (int)(wait_ms / 1000));
    else
      fprintf(stderr, "duplexctl: talking to %s: %m\n", control);
    free(line);
    close(fd);
    return EXIT_ERR;
  }
  close(fd);
  free(line);
  rc = duplexctl_print(control, reply, (size_t)n);
  free(reply);
  return rc;
}
