/* TLS 1.3 with mutual certificate authentication: contexts, the SSL object
 * of a connection, and error descriptions.  The peer name is checked by
 * OpenSSL during chain verification (X509_VERIFY_PARAM host/ip), on the
 * server as well as on the client, so a handshake only completes with a
 * correctly named peer. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "util.h"

/* The most specific reason on OpenSSL's error queue (the first one pushed)
 * in words an operator understands, then clear the queue so it does not
 * leak into the next report.  what: "certificate", "private key", ... */
static void
tls_queue_reason(const char *what, char *out, size_t outlen)
{
  unsigned long e = ERR_peek_error();
  const char *reason;

  if (e == 0) {
    snprintf(out, outlen, "unknown error");
  } else if (ERR_SYSTEM_ERROR(e)) {
    snprintf(out, outlen, "%s", strerror(ERR_GET_REASON(e)));
  } else if ((ERR_GET_LIB(e) == ERR_LIB_PEM &&
              ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ||
             (ERR_GET_LIB(e) == ERR_LIB_OSSL_DECODER &&
              ERR_GET_REASON(e) == ERR_R_UNSUPPORTED)) {
    snprintf(out, outlen, "no PEM %s found in the file", what);
  } else if ((reason = ERR_reason_error_string(e)) != NULL) {
    snprintf(out, outlen, "%s", reason);
  } else {
    ERR_error_string_n(e, out, outlen);
  }
  ERR_clear_error();
}

SSL_CTX *
tls_ctx_new(const struct tls_config *cfg, bool server, char *err,
            size_t errlen)
{
  SSL_CTX *ctx;
  char why[256];

  ERR_clear_error();
  ctx = SSL_CTX_new(TLS_method());
  if (!ctx) {
    tls_queue_reason("", why, sizeof why);
    snprintf(err, errlen, "cannot create TLS context: %s", why);
    return NULL;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
    tls_queue_reason("", why, sizeof why);
    snprintf(err, errlen, "cannot restrict TLS to version 1.3: %s", why);
    goto err;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
    tls_queue_reason("certificate", why, sizeof why);
    snprintf(err, errlen, "--tls-cert %s: cannot load certificate: %s",
             cfg->cert, why);
    goto err;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
    unsigned long e = ERR_peek_error();
    if (ERR_GET_LIB(e) == ERR_LIB_X509 &&
        ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      snprintf(err, errlen, "--tls-key %s: private key does not match the "
               "certificate in --tls-cert %s", cfg->key, cfg->cert);
      goto err;
    }
    tls_queue_reason("private key", why, sizeof why);
    snprintf(err, errlen, "--tls-key %s: cannot load private key: %s",
             cfg->key, why);
    goto err;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    snprintf(err, errlen, "--tls-key %s: private key does not match the "
             "certificate in --tls-cert %s", cfg->key, cfg->cert);
    goto err;
  }
  if (SSL_CTX_load_verify_locations(ctx, cfg->ca, NULL) != 1) {
    tls_queue_reason("CA certificate", why, sizeof why);
    snprintf(err, errlen, "--tls-ca %s: cannot load CA certificates: %s",
             cfg->ca, why);
    goto err;
  }
  if (server) {
    /* Tell clients which CAs we accept, so one with several certificates
     * picks the right one. */
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca);
    if (names)
      SSL_CTX_set_client_CA_list(ctx, names);
    ERR_clear_error();
    /* One long-lived connection per pair: resumption tickets are useless. */
    SSL_CTX_set_num_tickets(ctx, 0);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                     NULL);
  return ctx;

err:
  SSL_CTX_free(ctx);
  return NULL;
}

static bool
tls_is_ip(const char *name)
{
  unsigned char buf[sizeof(struct in6_addr)];

  return inet_pton(AF_INET, name, buf) == 1 ||
         inet_pton(AF_INET6, name, buf) == 1;
}

SSL *
tls_ssl_new(SSL_CTX *ctx, bool server, const char *peer_name)
{
  SSL *ssl = peer_name ? SSL_new(ctx) : NULL;
  int ok;

  if (!ssl)
    goto err;
  /* The name is checked against the peer certificate during verification:
   * DNS SAN entries, or the CN when the certificate has none; an IP
   * address is matched against IP SAN entries. */
  SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (tls_is_ip(peer_name))
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), peer_name);
  else
    ok = SSL_set1_host(ssl, peer_name);
  if (!ok)
    goto err;
  if (!server && !tls_is_ip(peer_name) &&
      !SSL_set_tlsext_host_name(ssl, peer_name))
    goto err;
  return ssl;

err:
  ERR_clear_error();
  SSL_free(ssl);
  return NULL;
}

static void
tls_append(char *out, size_t outlen, size_t *pos, const char *s)
{
  int n;

  if (!s || *pos + 1 >= outlen)
    return;
  n = snprintf(out + *pos, outlen - *pos, "%s%s", *pos ? ": " : "", s);
  if (n > 0)
    *pos = MIN(*pos + (size_t)n, outlen - 1);
}

/* What an OpenSSL reason means for the operator: an alert about our
 * certificate reads like a local problem otherwise, and OpenSSL 3 reports
 * a peer that closed without close_notify as an error, not as EOF. */
static const char *
tls_alert_hint(int reason)
{
  switch (reason) {
  case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
  case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    return "the peer rejected our certificate (check its --tls-ca and "
           "--peer-name)";
  case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    return "the peer requires a client certificate";
  case SSL_R_UNEXPECTED_EOF_WHILE_READING:
    return "the peer closed the connection";
  default:
    return NULL;
  }
}

void
tls_describe(SSL *ssl, const unsigned long *errs, unsigned nerrs,
             int sys_err, char *out, size_t outlen)
{
  unsigned long last = 0;
  size_t pos = 0;
  char buf[256];
  long v;

  if (outlen == 0)
    return;
  out[0] = '\0';
  for (unsigned i = 0; i < nerrs; i++) {
    unsigned long e = errs[i];
    const char *reason = ERR_reason_error_string(e);
    if (ERR_GET_LIB(e) == 0 || (last && ERR_GET_REASON(e) ==
                                            ERR_GET_REASON(last)))
      continue;
    last = e;
    if (!reason) {
      ERR_error_string_n(e, buf, sizeof buf);
      reason = buf;
    }
    tls_append(out, outlen, &pos, reason);
    if (ERR_GET_LIB(e) == ERR_LIB_SSL)
      tls_append(out, outlen, &pos, tls_alert_hint(ERR_GET_REASON(e)));
  }
  v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
    const X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    const char *want = X509_VERIFY_PARAM_get0_host((X509_VERIFY_PARAM *)param,
                                                   0);
    char *ip = want ? NULL : X509_VERIFY_PARAM_get1_ip_asc(
                                 (X509_VERIFY_PARAM *)param);
    snprintf(buf, sizeof buf, "peer name mismatch: the certificate is not "
             "for \"%s\"", want ? want : ip ? ip : "?");
    OPENSSL_free(ip);
    tls_append(out, outlen, &pos, buf);
  } else if (v != X509_V_OK) {
    tls_append(out, outlen, &pos, X509_verify_cert_error_string(v));
  }
  if (pos == 0)
    tls_append(out, outlen, &pos, sys_err ? strerror(sys_err)
                                          : "connection closed by peer");
}

void
tls_peer_cn(SSL *ssl, char *out, size_t outlen)
{
  X509 *cert = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
  X509_NAME *name = cert ? X509_get_subject_name(cert) : NULL;
  int n;

  if (outlen == 0)
    return;
  n = name ? X509_NAME_get_text_by_NID(name, NID_commonName, out,
                                       (int)MIN(outlen, (size_t)INT_MAX))
           : -1;
  if (n < 0) {
    snprintf(out, outlen, "(none)");
    return;
  }
  /* It goes into log lines: keep it printable. */
  for (char *p = out; *p; p++)
    if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
      *p = '?';
}
