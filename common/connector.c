/* The replication connection in either direction (see connector.h).
 *
 * Dial states: IDLE (the owner holds a stream) -> WAIT (next_attempt_ms)
 * -> DIALING (TCP connect) -> HANDSHAKE -> IDLE once the stream is handed
 * over; any failure goes back to WAIT with a longer interval.  Listening
 * keeps a list of handshaking connections instead; the socket is always
 * accepted from.  One timer checks deadlines for both. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/listener.h>

#include "connector.h"
#include "log.h"

#define CONNECTOR_TICK_MS 50u

enum dial_state { DIAL_IDLE, DIAL_WAIT, DIAL_DIALING, DIAL_HANDSHAKE };

/* A connection in its TLS handshake. */
struct pending {
  struct connector *c;
  struct tls_stream *ts;
  uint64_t since_ms;
  char addr[80];
};

struct connector {
  struct event_base *base;
  struct connector_config cfg;
  char peer_desc[300];          /* dial: "host:port" */
  SSL_CTX *ctx;
  connector_stream_fn fn;
  void *arg;
  struct event *tick;
  char last_error[512];
  /* dialling */
  enum dial_state state;
  int fd;                       /* DIALING */
  struct event *connect_ev;
  uint64_t state_since_ms;
  uint64_t next_attempt_ms;
  unsigned backoff_ms;
  bool started;
  /* listening */
  struct evconnlistener *evl;
  int port;
  struct pending *pend[CONNECTOR_MAX_PENDING];
  unsigned n_pend;
};

static void connector_dial(struct connector *c);

static void
connector_set_error(struct connector *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
connector_set_error(struct connector *c, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
  va_end(ap);
}

/* ---- pending handshakes ---- */

static void
pending_remove(struct pending *pd)
{
  struct connector *c = pd->c;
  unsigned i;

  for (i = 0; i < c->n_pend; i++) {
    if (c->pend[i] == pd) {
      c->pend[i] = c->pend[--c->n_pend];
      break;
    }
  }
  free(pd);
}

/* Dial: the attempt failed, try again later. */
static void
dial_failed(struct connector *c)
{
  uint64_t now = util_now_ms();

  c->state = DIAL_WAIT;
  c->state_since_ms = now;
  c->next_attempt_ms = now + c->backoff_ms;
  c->backoff_ms = MIN(c->backoff_ms * 2, c->cfg.retry_max_ms);
}

static void
pending_event_cb(struct tls_stream *ts, int what, void *arg)
{
  struct pending *pd = arg;
  struct connector *c = pd->c;
  char addr[80], cn[256], why[256];

  if (what & TLS_STREAM_CONNECTED) {
    snprintf(addr, sizeof addr, "%s", pd->addr);
    tls_stream_peer_cn(ts, cn, sizeof cn);
    tls_stream_setcb(ts, NULL, NULL, NULL, NULL);
    pending_remove(pd);
    if (!c->cfg.listen)
      c->state = DIAL_IDLE;
    c->last_error[0] = '\0';
    log_info("%s: %s %s (%s): TLS verified", c->cfg.who,
             c->cfg.listen ? "connection from" : "connected to", cn, addr);
    c->fn(ts, addr, cn, c->arg);
    return;
  }
  if (!(what & (TLS_STREAM_EOF | TLS_STREAM_ERROR)))
    return;
  tls_stream_describe(ts, why, sizeof why);
  if (!why[0])
    snprintf(why, sizeof why, "connection closed during the TLS handshake");
  if (c->cfg.listen) {
    log_warn("%s: connection from %s refused: %s", c->cfg.who, pd->addr,
             why);
    connector_set_error(c, "connection from %s refused: %s", pd->addr, why);
  } else {
    log_warn("%s: TLS handshake with %s failed: %s", c->cfg.who,
             c->peer_desc, why);
    connector_set_error(c, "TLS handshake with %s failed: %s", c->peer_desc,
                        why);
    dial_failed(c);
  }
  tls_stream_free(ts);
  pending_remove(pd);
}

/* Takes fd; false when it was closed (a message is logged). */
static bool
pending_new(struct connector *c, int fd, const char *addr)
{
  struct pending *pd;

  if (c->n_pend == CONNECTOR_MAX_PENDING) {
    log_warn("%s: connection from %s refused: %u TLS handshakes already in "
             "progress", c->cfg.who, addr, CONNECTOR_MAX_PENDING);
    close(fd);
    return false;
  }
  pd = calloc(1, sizeof *pd);
  if (pd == NULL) {
    close(fd);
    return false;
  }
  pd->c = c;
  pd->since_ms = util_now_ms();
  snprintf(pd->addr, sizeof pd->addr, "%s", addr);
  pd->ts = tls_stream_new(c->base, c->ctx, fd, c->cfg.listen,
                          c->cfg.tls->peer_name);
  if (pd->ts == NULL) {
    /* tls_stream_new closed fd. */
    log_warn("%s: %s: cannot set up TLS", c->cfg.who, addr);
    free(pd);
    return false;
  }
  tls_stream_setcb(pd->ts, NULL, NULL, pending_event_cb, pd);
  c->pend[c->n_pend++] = pd;
  return true;
}

static void
pending_free_all(struct connector *c)
{
  while (c->n_pend > 0) {
    struct pending *pd = c->pend[0];
    tls_stream_free(pd->ts);
    pending_remove(pd);
  }
}

/* ---- listening ---- */

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
          int salen, void *arg)
{
  struct connector *c = arg;
  char addr[80];
  int one = 1;

  (void)evl;
  (void)salen;
  util_format_sockaddr(sa, addr, sizeof addr);
  /* Acknowledgements are small and latency-bound in sync mode. */
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1)
    log_debug("%s: %s: TCP_NODELAY: %m", c->cfg.who, addr);
  if (evutil_make_socket_nonblocking(fd) == -1) {
    log_warn("%s: connection from %s: cannot make it non-blocking: %m",
             c->cfg.who, addr);
    close(fd);
    return;
  }
  log_debug("%s: connection from %s, TLS handshake", c->cfg.who, addr);
  pending_new(c, fd, addr);
}

static void
accept_error_cb(struct evconnlistener *evl, void *arg)
{
  struct connector *c = arg;
  int err = EVUTIL_SOCKET_ERROR();

  (void)evl;
  /* EMFILE and friends: keep listening, the next accept may work. */
  log_warn("%s: accept on port %d: %s", c->cfg.who, c->port, strerror(err));
}

/* ---- dialling ---- */

static void
dial_close(struct connector *c)
{
  if (c->connect_ev != NULL) {
    event_free(c->connect_ev);
    c->connect_ev = NULL;
  }
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
}

static void
dial_connected_cb(evutil_socket_t fd, short what, void *arg)
{
  struct connector *c = arg;
  int soerr = 0;
  socklen_t sl = sizeof soerr;

  (void)what;
  event_free(c->connect_ev);
  c->connect_ev = NULL;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == -1)
    soerr = errno;
  if (soerr != 0) {
    connector_set_error(c, "connect to %s: %s", c->peer_desc,
                        strerror(soerr));
    log_debug("%s: %s", c->cfg.who, c->last_error);
    dial_close(c);
    dial_failed(c);
    return;
  }
  c->fd = -1; /* the stream's from here */
  if (!pending_new(c, fd, c->peer_desc)) {
    connector_set_error(c, "%s: cannot set up TLS", c->peer_desc);
    dial_failed(c);
    return;
  }
  c->state = DIAL_HANDSHAKE;
  c->state_since_ms = util_now_ms();
}

static void
connector_dial(struct connector *c)
{
  char err[256];
  int fd = util_connect_start(&c->cfg.peer, err, sizeof err);

  c->state_since_ms = util_now_ms();
  if (fd == -1) {
    connector_set_error(c, "connect: %s", err);
    log_debug("%s: %s", c->cfg.who, c->last_error);
    dial_failed(c);
    return;
  }
  c->fd = fd;
  c->connect_ev = event_new(c->base, fd, EV_WRITE, dial_connected_cb, c);
  if (c->connect_ev == NULL)
    abort();
  event_add(c->connect_ev, NULL);
  c->state = DIAL_DIALING;
}

/* ---- deadlines ---- */

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
  struct connector *c = arg;
  uint64_t now = util_now_ms();
  unsigned i;

  (void)fd;
  (void)what;
  for (i = 0; i < c->n_pend;) {
    struct pending *pd = c->pend[i];
    if (now - pd->since_ms <= c->cfg.handshake_timeout_ms) {
      i++;
      continue;
    }
    log_warn("%s: %s %s: no TLS handshake in %u ms; closed", c->cfg.who,
             c->cfg.listen ? "connection from" : "connection to", pd->addr,
             c->cfg.handshake_timeout_ms);
    connector_set_error(c, "%s: no TLS handshake in %u ms", pd->addr,
                        c->cfg.handshake_timeout_ms);
    tls_stream_free(pd->ts);
    pending_remove(pd);
    if (!c->cfg.listen)
      dial_failed(c);
  }
  if (c->cfg.listen || !c->started)
    return;
  if (c->state == DIAL_DIALING &&
      now - c->state_since_ms > c->cfg.handshake_timeout_ms) {
    connector_set_error(c, "connect to %s: no answer in %u ms", c->peer_desc,
                        c->cfg.handshake_timeout_ms);
    log_debug("%s: %s", c->cfg.who, c->last_error);
    dial_close(c);
    dial_failed(c);
  }
  if (c->state == DIAL_WAIT && now >= c->next_attempt_ms)
    connector_dial(c);
}

/* ---- public ---- */

int
connector_new(struct event_base *base, const struct connector_config *cfg,
              connector_stream_fn fn, void *arg, struct connector **out,
              char *err, size_t errlen)
{
  struct connector *c = calloc(1, sizeof *c);
  struct timeval tv = { 0, CONNECTOR_TICK_MS * 1000 };

  if (c == NULL)
    abort();
  c->base = base;
  c->cfg = *cfg;
  c->fn = fn;
  c->arg = arg;
  c->fd = -1;
  c->port = -1;
  c->backoff_ms = CONNECTOR_RETRY_FIRST_MS;
  c->ctx = tls_ctx_new(cfg->tls, cfg->listen, err, errlen);
  if (c->ctx == NULL)
    goto fail;
  if (cfg->listen) {
    c->port = util_local_port(cfg->listen_fd);
    c->evl = evconnlistener_new(base, accept_cb, c,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                                    LEV_OPT_DISABLED,
                                0 /* util_listen called listen */,
                                cfg->listen_fd);
    if (c->evl == NULL) {
      snprintf(err, errlen, "cannot listen on port %d", c->port);
      goto fail;
    }
    evconnlistener_set_error_cb(c->evl, accept_error_cb);
  } else {
    util_endpoint_str(&cfg->peer, c->peer_desc, sizeof c->peer_desc);
  }
  c->tick = event_new(base, -1, EV_PERSIST, tick_cb, c);
  if (c->tick == NULL || event_add(c->tick, &tv) == -1)
    abort();
  *out = c;
  return 0;

fail:
  if (cfg->listen && c->evl == NULL)
    close(cfg->listen_fd);
  if (c->ctx != NULL)
    SSL_CTX_free(c->ctx);
  free(c);
  return -1;
}

void
connector_free(struct connector *c)
{
  if (c == NULL)
    return;
  pending_free_all(c);
  dial_close(c);
  if (c->evl != NULL)
    evconnlistener_free(c->evl);
  if (c->tick != NULL)
    event_free(c->tick);
  SSL_CTX_free(c->ctx);
  free(c);
}

void
connector_start(struct connector *c)
{
  c->started = true;
  if (c->cfg.listen) {
    evconnlistener_enable(c->evl);
    return;
  }
  c->backoff_ms = CONNECTOR_RETRY_FIRST_MS;
  connector_dial(c);
}

void
connector_redial(struct connector *c, unsigned min_delay_ms)
{
  uint64_t now = util_now_ms();

  if (c->cfg.listen || !c->started || c->state != DIAL_IDLE)
    return;
  c->state = DIAL_WAIT;
  c->state_since_ms = now;
  c->next_attempt_ms = now + MAX(c->backoff_ms, min_delay_ms);
  c->backoff_ms = MIN(c->backoff_ms * 2, c->cfg.retry_max_ms);
}

void
connector_redial_now(struct connector *c)
{
  if (!c->cfg.listen && c->started && c->state == DIAL_WAIT)
    c->next_attempt_ms = util_now_ms();
}

void
connector_reset_backoff(struct connector *c)
{
  c->backoff_ms = CONNECTOR_RETRY_FIRST_MS;
}

const char *
connector_state(const struct connector *c)
{
  if (c->cfg.listen)
    return c->n_pend > 0 ? "tls-handshake" : "listening";
  switch (c->state) {
  case DIAL_IDLE: return "idle";
  case DIAL_WAIT: return "waiting";
  case DIAL_DIALING: return "dialing";
  case DIAL_HANDSHAKE: return "tls-handshake";
  }
  return "?";
}

const char *
connector_last_error(const struct connector *c)
{
  return c->last_error[0] ? c->last_error : NULL;
}

int
connector_port(const struct connector *c)
{
  return c->port;
}

bool
connector_listening(const struct connector *c)
{
  return c->cfg.listen;
}
