/* TLS 1.3 with mutual certificate authentication: contexts, per-connection
 * peer-name checks and error descriptions (the byte stream itself is
 * tls-stream.h).  Both sides require a peer certificate that chains to the
 * configured CA and whose name (SAN DNS entry, or CN when there is no SAN)
 * equals the configured peer name. */
#ifndef DUPLEX_TLS_H
#define DUPLEX_TLS_H

#include <stdbool.h>
#include <stddef.h>

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

/* A connection's SSL object that accepts only a peer certificate naming
 * peer_name (DNS SAN entries, or the CN when there are none; an IP address
 * is matched against IP SAN entries).  NULL on failure. */
SSL *tls_ssl_new(SSL_CTX *ctx, bool server, const char *peer_name);

/* Why a connection failed, for a log line, e.g. "certificate verify
 * failed: unable to get local issuer certificate" or "peer name mismatch":
 * from the OpenSSL error codes recorded at the failure, the verification
 * result and the socket error (sys_err, 0 if none). */
void tls_describe(SSL *ssl, const unsigned long *errs, unsigned nerrs,
                  int sys_err, char *out, size_t outlen);

/* Subject CN of the verified peer certificate, or "(none)". */
void tls_peer_cn(SSL *ssl, char *out, size_t outlen);

#endif
