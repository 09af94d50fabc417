/* The TCP listener the primary connects to.  Each accepted connection gets a
 * TLS stream and a link in LINK_TLS_HANDSHAKE; link.c takes it from
 * there.  Unverified connections are bounded so a port scanner or a
 * misconfigured peer cannot pile them up. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/listener.h>

#include "internal.h"

#include "log.h"

struct listener {
  struct secondary *s;
  struct evconnlistener *evl;
};

/* "192.0.2.1:4242" or "[2001:db8::1]:4242". */
static void
listener_format_addr(const struct sockaddr *sa, char *out, size_t outlen)
{
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;

  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
    snprintf(out, outlen, "%s:%u", host, port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
    snprintf(out, outlen, "[%s]:%u", host, port);
  } else {
    snprintf(out, outlen, "(unknown address)");
  }
}

static void
listener_accept_cb(struct evconnlistener *evl, evutil_socket_t fd,
                   struct sockaddr *sa, int salen, void *arg)
{
  struct listener *ls = arg;
  struct secondary *s = ls->s;
  struct tls_stream *ts;
  char addr[INET6_ADDRSTRLEN + 16];
  int one = 1;

  (void)evl;
  (void)salen;
  listener_format_addr(sa, addr, sizeof addr);
  if (s->stopping) {
    close(fd);
    return;
  }
  if (link_count(s, LINK_TLS_HANDSHAKE) >= SEC_MAX_HANDSHAKES) {
    log_warn("secondary: connection from %s refused: %u TLS handshakes "
             "already in progress", addr, SEC_MAX_HANDSHAKES);
    close(fd);
    return;
  }
  /* ACKs are small and latency-bound in sync mode. */
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1)
    log_debug("secondary: %s: TCP_NODELAY: %m", addr);
  if (evutil_make_socket_nonblocking(fd) == -1) {
    log_warn("secondary: connection from %s: cannot make it non-blocking: "
             "%m", addr);
    close(fd);
    return;
  }
  ts = tls_stream_new(s->base, s->tls, fd, true, s->cfg.tls.peer_name);
  if (ts == NULL) {
    log_warn("secondary: connection from %s: cannot set up TLS; dropped",
             addr);
    close(fd);
    return;
  }
  log_debug("secondary: connection from %s, TLS handshake", addr);
  if (link_new(s, ts, addr) == NULL) {
    log_warn("secondary: connection from %s: out of memory; dropped", addr);
    tls_stream_free(ts);
  }
}

static void
listener_error_cb(struct evconnlistener *evl, void *arg)
{
  struct listener *ls = arg;
  int err = EVUTIL_SOCKET_ERROR();

  (void)evl;
  (void)ls;
  /* EMFILE and friends: keep listening, the next accept may work. */
  log_warn("secondary: accept on port %d: %s", ls->s->listen_port,
           strerror(err));
}

int
listener_new(struct secondary *s, int fd, struct listener **out, char *err,
             size_t errlen)
{
  struct listener *ls = calloc(1, sizeof *ls);

  if (ls == NULL) {
    snprintf(err, errlen, "out of memory");
    close(fd);
    return -1;
  }
  ls->s = s;
  ls->evl = evconnlistener_new(s->base, listener_accept_cb, ls,
                               LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                               0 /* util_listen called listen */, fd);
  if (ls->evl == NULL) {
    snprintf(err, errlen, "cannot listen on port %d", s->listen_port);
    close(fd);
    free(ls);
    return -1;
  }
  evconnlistener_set_error_cb(ls->evl, listener_error_cb);
  *out = ls;
  return 0;
}

void
listener_free(struct listener *ls)
{
  if (ls == NULL)
    return;
  evconnlistener_free(ls->evl);
  free(ls);
}
