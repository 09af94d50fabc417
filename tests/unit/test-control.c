/* Control socket: one command per connection, OK/ERR replies, limits. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "control.h"

struct env {
  struct event_base *base;
  struct control *c;
  char dir[64];
  char path[128];
  int calls;
  struct control_pending *pending; /* "later": answered by the test */
  struct event *answer;            /* answers it after one loop pass */
};

/* "echo a b" answers "a|b"; "fail" answers an error; anything else the
 * word count. */
static int
handler(void *opaque, int argc, char **argv, struct evbuffer *out)
{
  struct env *e = opaque;

  e->calls++;
  if (strcmp(argv[0], "fail") == 0) {
    evbuffer_add_printf(out, "unknown command: fail\n");
    return -1;
  }
  if (strcmp(argv[0], "later") == 0) {
    e->pending = control_defer(e->c);
    if (argc > 1)
      event_active(e->answer, 0, 0);
    return CONTROL_LATER;
  }
  if (strcmp(argv[0], "echo") == 0) {
    for (int i = 1; i < argc; i++)
      evbuffer_add_printf(out, "%s%s", i > 1 ? "|" : "", argv[i]);
    evbuffer_add_printf(out, "\n");
    return 0;
  }
  evbuffer_add_printf(out, "%d words\n", argc);
  return 0;
}

/* The deferred reply, from a later loop pass. */
static void
answer_cb(evutil_socket_t fd, short what, void *arg)
{
  struct env *e = arg;
  struct evbuffer *body = evbuffer_new();

  (void)fd;
  (void)what;
  evbuffer_add_printf(body, "id 7\n");
  control_finish(e->pending, true, body);
  e->pending = NULL;
  evbuffer_free(body);
}

static int
setup(void **state)
{
  struct env *e = calloc(1, sizeof *e);
  char err[256];

  strcpy(e->dir, "/tmp/duplex-ctl-XXXXXX");
  if (!mkdtemp(e->dir))
    return -1;
  snprintf(e->path, sizeof e->path, "%s/ctl.sock", e->dir);
  e->base = event_base_new();
  e->c = control_new(e->base, e->path, handler, e, err, sizeof err);
  e->answer = event_new(e->base, -1, 0, answer_cb, e);
  if (!e->c) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  *state = e;
  return 0;
}

static int
teardown(void **state)
{
  struct env *e = *state;

  control_free(e->c);
  event_free(e->answer);
  event_base_free(e->base);
  rmdir(e->dir);
  free(e);
  return 0;
}

/* Send req, run the loop until the agent closes, return the reply. */
static char *
exchange(struct env *e, const char *req, size_t reqlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  size_t len = 0, cap = 1 << 16;
  char *reply = malloc(cap);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);

  strcpy(sa.sun_path, e->path);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(send(fd, req, reqlen, MSG_NOSIGNAL), (ssize_t)reqlen);
  for (int i = 0; i < 1000; i++) {
    ssize_t n;
    event_base_loop(e->base, EVLOOP_NONBLOCK);
    n = recv(fd, reply + len, cap - len - 1, 0);
    if (n == 0)
      break;
    if (n > 0)
      len += (size_t)n;
    else if (errno != EAGAIN)
      break;
    usleep(1000);
  }
  close(fd);
  reply[len] = '\0';
  return reply;
}

static void
check(struct env *e, const char *req, const char *want)
{
  char *got = exchange(e, req, strlen(req));
  assert_string_equal(got, want);
  free(got);
}

static void
test_commands(void **state)
{
  struct env *e = *state;
  struct stat st;

  assert_int_equal(stat(e->path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  check(e, "echo a b\n", "OK\na|b\n");
  check(e, "  echo \t x   y  \r\n", "OK\nx|y\n");
  check(e, "status --json\n", "OK\n2 words\n");
  check(e, "fail\n", "ERR\nunknown command: fail\n");
  check(e, "\n", "ERR\nempty command\n");
  assert_int_equal(e->calls, 4);
}

static void
test_limits(void **state)
{
  struct env *e = *state;
  char line[8192];
  char *got;

  /* 33 words */
  strcpy(line, "x");
  for (int i = 0; i < 32; i++)
    strcat(line, " w");
  strcat(line, "\n");
  check(e, line, "ERR\ntoo many words in command\n");

  memset(line, 'a', sizeof line);
  line[sizeof line - 1] = '\n';
  got = exchange(e, line, sizeof line);
  assert_string_equal(got, "ERR\ncommand line too long\n");
  free(got);
  assert_int_equal(e->calls, 0);
}

/* A reply given after control_fn returned; a client that left before its
 * deferred reply does not break the owner's control_finish. */
static void
test_deferred(void **state)
{
  struct env *e = *state;
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd;

  check(e, "later now\n", "OK\nid 7\n");
  assert_null(e->pending);

  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  strcpy(sa.sun_path, e->path);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(send(fd, "later\n", 6, MSG_NOSIGNAL), 6);
  for (int i = 0; i < 100 && !e->pending; i++) {
    event_base_loop(e->base, EVLOOP_NONBLOCK);
    usleep(1000);
  }
  assert_non_null(e->pending);
  control_free(e->c);           /* the client goes away with the socket */
  e->c = NULL;
  control_finish(e->pending, false, NULL);
  e->pending = NULL;
  close(fd);
}

static void
test_free_unlinks(void **state)
{
  struct env *e = *state;

  control_free(e->c);
  assert_int_equal(access(e->path, F_OK), -1);
  e->c = NULL;
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_commands, setup, teardown),
    cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
    cmocka_unit_test_setup_teardown(test_free_unlinks, setup, teardown),
    cmocka_unit_test_setup_teardown(test_deferred, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
