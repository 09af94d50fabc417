/* The replication connection, made the same way whichever role an agent
 * plays: dial the peer (retrying) or listen for it, run the TLS 1.3
 * handshake (mutual authentication, the peer's name checked: tls.c) and
 * hand the owner verified streams only.  Which side dials is a deployment
 * choice, not a role: sites behind NAT dial out, primary or secondary.
 * The agents' protocol (the primary's HELLO first) starts after this.
 *
 * Dialling: one attempt at a time.  connector_start dials at once; after
 * an attempt fails, or the owner lost the stream it was given
 * (connector_redial), the next attempt follows CONNECTOR_RETRY_FIRST_MS
 * later, then at doubling intervals up to retry_max_ms while attempts keep
 * failing; connector_reset_backoff (the owner's session worked) starts the
 * doubling again from the first interval.
 *
 * Listening: every connection is accepted and handshaken, at most
 * CONNECTOR_MAX_PENDING at once (more are closed at once), each within
 * handshake_timeout_ms; the owner gets every verified one and decides
 * whether it replaces the one it has. */
#ifndef DUPLEX_CONNECTOR_H
#define DUPLEX_CONNECTOR_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "tls-stream.h"
#include "tls.h"
#include "util.h"

#define CONNECTOR_RETRY_FIRST_MS 100u
#define CONNECTOR_MAX_PENDING 8u

struct connector;

struct connector_config {
  bool listen;                  /* listen for the peer, else dial it */
  struct endpoint peer;         /* dial: the peer's HOST:PORT */
  int listen_fd;                /* listen: a listening socket (util_listen),
                                   owned by the connector from here */
  const struct tls_config *tls; /* certificates; tls->peer_name is checked */
  const char *who;              /* this agent, first word of log lines */
  unsigned handshake_timeout_ms; /* TCP connect + TLS handshake */
  unsigned retry_max_ms;        /* dial: longest wait between attempts */
};

/* A verified stream (handshake done, the peer's certificate checked): the
 * owner sets its callbacks and owns it from here.  addr: the peer's
 * address for log lines; cn: the verified name. */
typedef void (*connector_stream_fn)(struct tls_stream *ts, const char *addr,
                                    const char *cn, void *arg);

/* 0, or -1 with a message in err (a TLS file that does not load); the
 * listening socket is closed on failure too. */
int connector_new(struct event_base *base, const struct connector_config *cfg,
                  connector_stream_fn fn, void *arg, struct connector **out,
                  char *err, size_t errlen);
void connector_free(struct connector *c); /* closes pending connections */

/* Dial now, or start accepting. */
void connector_start(struct connector *c);
/* Dial: the owner lost its stream; dial again after the backoff, and at
 * least min_delay_ms from now (a peer that refused us).  Listen: nothing
 * to do, the peer dials again. */
void connector_redial(struct connector *c, unsigned min_delay_ms);
/* Dial: waiting to dial again: dial at the next tick (the reason to wait,
 * e.g. a refusal, is gone). */
void connector_redial_now(struct connector *c);
/* The owner's session got going: the next loss retries quickly. */
void connector_reset_backoff(struct connector *c);

/* "dialing", "tls-handshake", "waiting" (to dial again), "listening",
 * "idle" (dial: the owner holds the stream). */
const char *connector_state(const struct connector *c);
/* Why the last attempt or handshake failed, or NULL. */
const char *connector_last_error(const struct connector *c);
/* Listen: the TCP port (useful with port 0); dial: -1. */
int connector_port(const struct connector *c);
bool connector_listening(const struct connector *c);

#endif
