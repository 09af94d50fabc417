/* The listening side of an NBD server (nbd-listen.h): listening socket,
 * accept loop, client names, and the set of connections. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/listener.h>

#include "log.h"
#include "nbd-listen.h"

struct nbd_listen {
  struct event_base *base;
  const struct nbd_listen_ops *ops;
  void *arg;
  struct evconnlistener *listener;
  struct event *retry;          /* re-enables accepting after EMFILE */
  char where[300];              /* "unix:/run/x.sock", "127.0.0.1:10809" */
  char unix_path[sizeof(((struct endpoint *)0)->path)];
  int port;                     /* -1 for a unix socket */
  TAILQ_HEAD(, nbd_listen_conn) conns;
  unsigned n_conns;
  uint64_t next_id;             /* names unix clients: "unix#1", ... */
};

static void
nbd_listen_accept_cb(struct evconnlistener *el, evutil_socket_t fd,
                     struct sockaddr *sa, int salen, void *opaque)
{
  struct nbd_listen *l = opaque;
  struct bufferevent *bev;
  char peer[100], name[200], why[200];
  int one = 1;

  (void)el;
  (void)salen;
  util_format_sockaddr(sa, peer, sizeof peer);
  if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bev = bufferevent_socket_new(l->base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (bev == NULL) {
    log_error("nbd %s: client %s refused: cannot create its buffers",
              l->where, peer);
    close(fd);
    return;
  }
  /* Unix clients have no address worth logging: they are numbered, in
   * the order they were accepted. */
  if (sa->sa_family == AF_UNIX)
    snprintf(name, sizeof name, "nbd client unix#%" PRIu64, l->next_id + 1);
  else
    snprintf(name, sizeof name, "nbd client %s", peer);
  why[0] = '\0';
  if (l->ops->accept(l->arg, bev, name, why, sizeof why) != 0) {
    log_error("nbd %s: client %s refused: %s", l->where, peer, why);
    bufferevent_free(bev);
    return;
  }
  l->next_id++;
}

static void
nbd_listen_retry_cb(evutil_socket_t fd, short what, void *opaque)
{
  struct nbd_listen *l = opaque;

  (void)fd;
  (void)what;
  evconnlistener_enable(l->listener);
}

/* accept() failed with something other than a transient error (EMFILE,
 * ENFILE, ENOMEM...): back off instead of spinning on the listener. */
static void
nbd_listen_error_cb(struct evconnlistener *el, void *opaque)
{
  struct nbd_listen *l = opaque;
  struct timeval tv = { 1, 0 };
  int err = EVUTIL_SOCKET_ERROR();

  log_warn("nbd %s: accept: %s; not accepting clients for 1 s", l->where,
           evutil_socket_error_to_string(err));
  evconnlistener_disable(el);
  evtimer_add(l->retry, &tv);
}

int
nbd_listen_new(struct event_base *base, const struct endpoint *ep,
               const struct nbd_listen_ops *ops, void *arg,
               struct nbd_listen **out, char *err, size_t errlen)
{
  struct nbd_listen *l;
  int fd = -1;

  *out = NULL;
  l = calloc(1, sizeof *l);
  if (l == NULL) {
    snprintf(err, errlen, "nbd: out of memory");
    return -1;
  }
  l->base = base;
  l->ops = ops;
  l->arg = arg;
  l->port = -1;
  TAILQ_INIT(&l->conns);

  fd = util_listen(ep, err, errlen);
  if (fd == -1)
    goto fail;
  if (ep->is_unix) {
    snprintf(l->where, sizeof l->where, "unix:%s", ep->path);
    snprintf(l->unix_path, sizeof l->unix_path, "%s", ep->path);
  } else {
    l->port = util_local_port(fd);
    snprintf(l->where, sizeof l->where, strchr(ep->host, ':') ? "[%s]:%d"
             : "%s:%d", ep->host[0] ? ep->host : "*", l->port);
  }
  l->retry = evtimer_new(base, nbd_listen_retry_cb, l);
  if (l->retry == NULL) {
    snprintf(err, errlen, "nbd %s: cannot create a timer", l->where);
    goto fail;
  }
  l->listener = evconnlistener_new(base, nbd_listen_accept_cb, l,
                                   LEV_OPT_CLOSE_ON_FREE |
                                   LEV_OPT_CLOSE_ON_EXEC, 0, fd);
  if (l->listener == NULL) {
    snprintf(err, errlen, "nbd %s: cannot create a listener", l->where);
    goto fail;
  }
  fd = -1; /* owned by the listener */
  evconnlistener_set_error_cb(l->listener, nbd_listen_error_cb);
  *out = l;
  return 0;

fail:
  if (fd != -1)
    close(fd);
  if (l->unix_path[0] != '\0')
    unlink(l->unix_path);
  if (l->retry != NULL)
    event_free(l->retry);
  free(l);
  return -1;
}

void
nbd_listen_stop(struct nbd_listen *l)
{
  if (l->listener == NULL)
    return;
  evconnlistener_free(l->listener);
  l->listener = NULL;
  evtimer_del(l->retry);
  if (l->unix_path[0] != '\0' && unlink(l->unix_path) == -1 &&
      errno != ENOENT)
    log_warn("nbd %s: cannot remove the socket: %m", l->where);
  l->unix_path[0] = '\0';
}

void
nbd_listen_foreach(struct nbd_listen *l, void (*fn)(void *conn))
{
  struct nbd_listen_conn *lc, *next;

  for (lc = TAILQ_FIRST(&l->conns); lc != NULL; lc = next) {
    next = TAILQ_NEXT(lc, link);
    fn(lc->conn);
  }
}

void
nbd_listen_free(struct nbd_listen *l)
{
  struct nbd_listen_conn *lc;
  void *conn;

  if (l == NULL)
    return;
  nbd_listen_stop(l);
  event_free(l->retry);
  /* Out of the set first: the shutdown may free the connection. */
  while ((lc = TAILQ_FIRST(&l->conns)) != NULL) {
    conn = lc->conn;
    nbd_listen_remove(lc);
    l->ops->shutdown(conn);
  }
  free(l);
}

void
nbd_listen_add(struct nbd_listen *l, struct nbd_listen_conn *lc, void *conn)
{
  lc->l = l;
  lc->conn = conn;
  TAILQ_INSERT_TAIL(&l->conns, lc, link);
  l->n_conns++;
}

void
nbd_listen_remove(struct nbd_listen_conn *lc)
{
  if (lc->l == NULL)
    return;
  TAILQ_REMOVE(&lc->l->conns, lc, link);
  lc->l->n_conns--;
  lc->l = NULL;
}

const char *
nbd_listen_where(const struct nbd_listen *l)
{
  return l->where;
}

int
nbd_listen_port(const struct nbd_listen *l)
{
  return l->port;
}

unsigned
nbd_listen_clients(const struct nbd_listen *l)
{
  return l->n_conns;
}
