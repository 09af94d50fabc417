/* The listening side of an NBD server, shared by the primary's front end
 * (primary/nbd-server.c) and the read-only snapshot export
 * (store/nbd-export.c): a listening socket on a unix or TCP endpoint, the
 * accept loop with its back-off when accept() fails (EMFILE, ENFILE...),
 * a name for each client, and the set of open connections, closed when
 * the listener goes away.  What a connection does with its client (the
 * handshake, the requests) is the server's; the wire format is
 * nbd-proto.c. */
#ifndef DUPLEX_NBD_LISTEN_H
#define DUPLEX_NBD_LISTEN_H

#include <stddef.h>
#include <sys/queue.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "util.h"

struct nbd_listen;

/* A connection's entry in its listener's set, embedded in the server's
 * connection struct.  Only nbd-listen.c looks inside. */
struct nbd_listen_conn {
  struct nbd_listen *l;         /* NULL when not in a set */
  void *conn;                   /* the server's connection */
  TAILQ_ENTRY(nbd_listen_conn) link;
};

struct nbd_listen_ops {
  /* A client was accepted: bev holds its socket (closed when bev is
   * freed) and has no callbacks yet; name is what logs call the
   * connection: "nbd client 10.0.0.2:51234", "nbd client unix#3".  Set
   * the connection up, put it in the set (nbd_listen_add) and return 0;
   * or return -1 with the reason in why, bev untouched: the listener logs
   * "nbd WHERE: client PEER refused: WHY" and closes it. */
  int (*accept)(void *arg, struct bufferevent *bev, const char *name,
                char *why, size_t whylen);
  /* The listener is being freed: close conn, already out of the set.
   * The call may free conn. */
  void (*shutdown)(void *conn);
};

/* Listen on ep with base's loop, handing each client to ops->accept(arg,
 * ...).  A unix socket is removed again by nbd_listen_free.  0, or -1
 * with a message in err. */
int nbd_listen_new(struct event_base *base, const struct endpoint *ep,
                   const struct nbd_listen_ops *ops, void *arg,
                   struct nbd_listen **out, char *err, size_t errlen);
/* Stop listening, remove a unix socket, and shut down every connection
 * still in the set. */
void nbd_listen_free(struct nbd_listen *l);
/* Stop accepting and remove a unix socket; the connections stay. */
void nbd_listen_stop(struct nbd_listen *l);
/* fn(conn) for each connection in the set; fn may take its own out. */
void nbd_listen_foreach(struct nbd_listen *l, void (*fn)(void *conn));

/* Put conn, whose entry is lc, in l's set / take it out (nothing if it
 * is not in one: a connection closing after nbd_listen_free). */
void nbd_listen_add(struct nbd_listen *l, struct nbd_listen_conn *lc,
                    void *conn);
void nbd_listen_remove(struct nbd_listen_conn *lc);

/* "unix:/run/x.sock", "127.0.0.1:10809", "*:10809" (the real port when
 * ep asked for port 0). */
const char *nbd_listen_where(const struct nbd_listen *l);
/* The TCP port listened on, or -1 for a unix socket. */
int nbd_listen_port(const struct nbd_listen *l);
/* Connections in the set. */
unsigned nbd_listen_clients(const struct nbd_listen *l);

#endif
