/* The listening side of the NBD servers: where, client names, refusals,
 * the set of connections and its shutdown, the unix socket's removal. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#include "nbd-listen.h"

#define MAX_CONNS 8

struct conn {
  struct nbd_listen_conn lc;
  struct bufferevent *bev;
  char name[200];
  bool shut;
};

struct env {
  struct event_base *base;
  struct nbd_listen *l;
  char dir[64];
  char path[128];
  struct conn conns[MAX_CONNS];
  int n_conns;
  int accepts;      /* calls of the accept hook */
  int shutdowns;
  bool refuse;      /* the next accept fails */
};

static int
accept_hook(void *arg, struct bufferevent *bev, const char *name, char *why,
            size_t whylen)
{
  struct env *e = arg;
  struct conn *c;

  e->accepts++;
  if (e->refuse) {
    e->refuse = false;
    snprintf(why, whylen, "test says no");
    return -1;
  }
  assert_true(e->n_conns < MAX_CONNS);
  c = &e->conns[e->n_conns++];
  c->bev = bev;
  snprintf(c->name, sizeof c->name, "%s", name);
  nbd_listen_add(e->l, &c->lc, c);
  return 0;
}

static void
shutdown_hook(void *conn)
{
  struct conn *c = conn;

  /* Already out of the set. */
  assert_null(c->lc.l);
  c->shut = true;
  bufferevent_free(c->bev);
  c->bev = NULL;
}

static const struct nbd_listen_ops ops = {
  .accept = accept_hook,
  .shutdown = shutdown_hook,
};

static void
env_shutdowns(struct env *e)
{
  e->shutdowns = 0;
  for (int i = 0; i < e->n_conns; i++)
    e->shutdowns += e->conns[i].shut;
}

static int
setup(void **state)
{
  struct env *e = calloc(1, sizeof *e);

  if (e == NULL)
    return -1;
  strcpy(e->dir, "/tmp/duplex-nbdl-XXXXXX");
  if (!mkdtemp(e->dir))
    return -1;
  snprintf(e->path, sizeof e->path, "%s/nbd.sock", e->dir);
  e->base = event_base_new();
  if (e->base == NULL)
    return -1;
  *state = e;
  return 0;
}

static int
teardown(void **state)
{
  struct env *e = *state;

  nbd_listen_free(e->l);
  for (int i = 0; i < e->n_conns; i++)
    if (e->conns[i].bev != NULL)
      bufferevent_free(e->conns[i].bev);
  event_base_free(e->base);
  unlink(e->path);
  rmdir(e->dir);
  free(e);
  return 0;
}

static void
env_listen(struct env *e, const char *where)
{
  struct endpoint ep;
  char err[256];

  assert_int_equal(util_parse_endpoint(where, &ep, err, sizeof err), 0);
  assert_int_equal(nbd_listen_new(e->base, &ep, &ops, e, &e->l, err,
                                  sizeof err), 0);
}

/* Run the loop until the accept hook has been called `n` times in all. */
static void
env_wait_accepts(struct env *e, int n)
{
  for (int i = 0; i < 1000 && e->accepts < n; i++)
    event_base_loop(e->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
  assert_int_equal(e->accepts, n);
}

static int
connect_unix(const char *path)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);

  assert_true(fd >= 0);
  assert_true(strlen(path) < sizeof sun.sun_path);
  memcpy(sun.sun_path, path, strlen(path) + 1);
  assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
  return fd;
}

/* Unix clients are numbered in the order they were accepted; a refused
 * one gets no number and its socket is closed. */
static void
test_unix(void **state)
{
  struct env *e = *state;
  char where[200], buf[1];
  int fd1, fd2, fd3;

  snprintf(where, sizeof where, "unix:%s", e->path);
  env_listen(e, where);
  assert_string_equal(nbd_listen_where(e->l), where);
  assert_int_equal(nbd_listen_port(e->l), -1);
  assert_int_equal(nbd_listen_clients(e->l), 0);

  fd1 = connect_unix(e->path);
  env_wait_accepts(e, 1);
  assert_string_equal(e->conns[0].name, "nbd client unix#1");
  assert_int_equal(nbd_listen_clients(e->l), 1);

  e->refuse = true;
  fd2 = connect_unix(e->path);
  env_wait_accepts(e, 2);
  assert_int_equal(nbd_listen_clients(e->l), 1);
  assert_int_equal(recv(fd2, buf, sizeof buf, 0), 0);

  fd3 = connect_unix(e->path);
  env_wait_accepts(e, 3);
  assert_string_equal(e->conns[1].name, "nbd client unix#2");
  assert_int_equal(nbd_listen_clients(e->l), 2);

  /* A connection that closes leaves the set, once. */
  nbd_listen_remove(&e->conns[0].lc);
  nbd_listen_remove(&e->conns[0].lc);
  assert_int_equal(nbd_listen_clients(e->l), 1);

  /* Freeing the listener shuts down what is left and removes the
   * socket. */
  nbd_listen_free(e->l);
  e->l = NULL;
  env_shutdowns(e);
  assert_int_equal(e->shutdowns, 1);
  assert_false(e->conns[0].shut);
  assert_true(e->conns[1].shut);
  assert_int_equal(access(e->path, F_OK), -1);
  assert_int_equal(errno, ENOENT);
  /* The connection removed before, closed by its server now. */
  nbd_listen_remove(&e->conns[0].lc);
  close(fd1);
  close(fd2);
  close(fd3);
}

/* TCP: the real port for port 0, clients named by address, no Nagle. */
static void
test_tcp(void **state)
{
  struct env *e = *state;
  struct sockaddr_in sin = { .sin_family = AF_INET };
  socklen_t len = sizeof sin;
  char want[200];
  int fd, port, nodelay = 0;
  socklen_t optlen = sizeof nodelay;

  env_listen(e, "127.0.0.1:0");
  port = nbd_listen_port(e->l);
  assert_true(port > 0);
  snprintf(want, sizeof want, "127.0.0.1:%d", port);
  assert_string_equal(nbd_listen_where(e->l), want);

  fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  sin.sin_port = htons((uint16_t)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
  env_wait_accepts(e, 1);
  snprintf(want, sizeof want, "nbd client 127.0.0.1:%u",
           ntohs(sin.sin_port));
  assert_string_equal(e->conns[0].name, want);
  assert_int_equal(getsockopt(bufferevent_getfd(e->conns[0].bev),
                              IPPROTO_TCP, TCP_NODELAY, &nodelay, &optlen),
                   0);
  assert_int_not_equal(nodelay, 0);
  close(fd);
}

/* A socket that cannot be created: an error, nothing left behind. */
static void
test_listen_fails(void **state)
{
  struct env *e = *state;
  struct endpoint ep;
  char where[200], err[256];

  snprintf(where, sizeof where, "unix:%s/missing/nbd.sock", e->dir);
  assert_int_equal(util_parse_endpoint(where, &ep, err, sizeof err), 0);
  err[0] = '\0';
  assert_int_equal(nbd_listen_new(e->base, &ep, &ops, e, &e->l, err,
                                  sizeof err), -1);
  assert_null(e->l);
  assert_true(err[0] != '\0');
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_unix, setup, teardown),
    cmocka_unit_test_setup_teardown(test_tcp, setup, teardown),
    cmocka_unit_test_setup_teardown(test_listen_fails, setup, teardown),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
