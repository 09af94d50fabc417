/* TLS 1.3 transport with mutual certificate authentication, behind
 * libevent's bufferevent interface so the link state machines only see a
 * byte stream.  Both sides require a peer certificate that chains to the
 * configured CA and whose name (SAN DNS entry, or CN when there is no SAN)
 * equals the configured peer name. */
#ifndef DUPLEX_TLS_H
#define DUPLEX_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/bufferevent.h>
#include <openssl/ssl.h>

struct tls_config {
  const char *cert;      /* PEM certificate (chain) of this agent */
  const char *key;       /* PEM private key */
  const char *ca;        /* PEM CA bundle the peer must chain to */
  const char *peer_name; /* expected CN / SAN of the peer */
};

/* TLS 1.3 only, peer verification mandatory.  NULL and a message naming
 * the file that failed in err. */
SSL_CTX *tls_ctx_new(const struct tls_config *cfg, bool server, char *err,
                     size_t errlen);

/* Wrap an already connected (or accepted) non-blocking fd.  Takes ownership
 * of fd (closed when the bufferevent is freed, or at once if this returns
 * NULL: the caller must not close it again).  The handshake runs inside
 * the bufferevent; the event callback sees BEV_EVENT_CONNECTED once the peer
 * is verified, or BEV_EVENT_ERROR. */
struct bufferevent *tls_bev_new(struct event_base *base, SSL_CTX *ctx, int fd,
                                bool server, const char *peer_name);

/* After BEV_EVENT_ERROR/EOF: why, e.g. "certificate verify failed: unable to
 * get local issuer certificate" or "peer name mismatch". */
void tls_describe_error(struct bufferevent *bev, char *out, size_t outlen);

/* Subject CN of the verified peer certificate, or "(none)". */
void tls_peer_cn(struct bufferevent *bev, char *out, size_t outlen);

#endif
