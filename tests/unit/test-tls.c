/* TLS transport: mutual authentication over a socketpair with certificates
 * made at test time, peer name checks on both sides, and the error texts
 * an operator sees. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls-stream.h"
#include "tls.h"

static char dir[] = "/tmp/duplex-tls-XXXXXX";

static void
path_of(char *out, size_t outlen, const char *name)
{
  snprintf(out, outlen, "%s/%s", dir, name);
}

static void
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
  X509V3_CTX ctx;
  X509_EXTENSION *ext;

  X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  assert_non_null(ext);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

/* Write NAME.pem and NAME.key: a CA when ca_key is NULL (self-signed),
 * else a leaf for cn (with a DNS SAN when san is set) signed by ca. */
static void
make_cert(const char *name, const char *cn, const char *san, X509 *ca,
          EVP_PKEY *ca_key, X509 **cert_out, EVP_PKEY **key_out)
{
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = X509_new();
  char path[128];
  FILE *f;

  assert_non_null(key);
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), rand());
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(cert, ca ? X509_get_subject_name(ca)
                                : X509_get_subject_name(cert));
  X509_set_pubkey(cert, key);
  if (!ca) {
    add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_ext(cert, ca, NID_basic_constraints, "CA:FALSE");
    if (san)
      add_ext(cert, ca, NID_subject_alt_name, san);
  }
  assert_true(X509_sign(cert, ca_key ? ca_key : key, EVP_sha256()) > 0);

  snprintf(path, sizeof path, "%s/%s.pem", dir, name);
  f = fopen(path, "w");
  PEM_write_X509(f, cert);
  fclose(f);
  snprintf(path, sizeof path, "%s/%s.key", dir, name);
  f = fopen(path, "w");
  PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
  fclose(f);
  *cert_out = cert;
  *key_out = key;
}

static int
setup_certs(void **state)
{
  X509 *ca, *other_ca, *c;
  EVP_PKEY *ca_key, *other_key, *k;

  (void)state;
  if (!mkdtemp(dir))
    return -1;
  make_cert("ca", "duplex test CA", NULL, NULL, NULL, &ca, &ca_key);
  make_cert("other-ca", "another CA", NULL, NULL, NULL, &other_ca,
            &other_key);
  make_cert("secondary", "secondary", "DNS:secondary.test", ca, ca_key, &c,
            &k);
  X509_free(c);
  EVP_PKEY_free(k);
  make_cert("primary", "primary.test", NULL, ca, ca_key, &c, &k);
  X509_free(c);
  EVP_PKEY_free(k);
  make_cert("rogue", "primary.test", NULL, other_ca, other_key, &c, &k);
  X509_free(c);
  EVP_PKEY_free(k);
  X509_free(ca);
  X509_free(other_ca);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(other_key);
  return 0;
}

static int
teardown_certs(void **state)
{
  char cmd[128];

  (void)state;
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static SSL_CTX *
ctx_for(const char *name, const char *ca, const char *peer, bool server)
{
  char cert[128], key[128], cafile[128], err[512];
  struct tls_config cfg = { cert, key, cafile, peer };
  SSL_CTX *ctx;

  snprintf(cert, sizeof cert, "%s/%s.pem", dir, name);
  snprintf(key, sizeof key, "%s/%s.key", dir, name);
  snprintf(cafile, sizeof cafile, "%s/%s.pem", dir, ca);
  ctx = tls_ctx_new(&cfg, server, err, sizeof err);
  if (!ctx)
    fail_msg("tls_ctx_new: %s", err);
  return ctx;
}

struct side {
  struct tls_stream *ts;
  int events;
  char why[512];
  char cn[128];
};

static void
event_cb(struct tls_stream *ts, int what, void *arg)
{
  struct side *s = arg;

  s->events |= what;
  if (what & TLS_STREAM_CONNECTED)
    tls_stream_peer_cn(ts, s->cn, sizeof s->cn);
  if (what & (TLS_STREAM_ERROR | TLS_STREAM_EOF))
    tls_stream_describe(ts, s->why, sizeof s->why);
}

/* Handshake a client (as primary) with cctx against a server (as
 * secondary); frees cctx. */
static void
handshake_ctx(SSL_CTX *cctx, const char *client_expects,
              const char *server_cert, const char *server_ca,
              const char *server_expects, struct side *c, struct side *s)
{
  struct event_base *base = event_base_new();
  SSL_CTX *sctx = ctx_for(server_cert, server_ca, server_expects, true);
  int sv[2];

  memset(c, 0, sizeof *c);
  memset(s, 0, sizeof *s);
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  c->ts = tls_stream_new(base, cctx, sv[0], false, client_expects);
  s->ts = tls_stream_new(base, sctx, sv[1], true, server_expects);
  assert_non_null(c->ts);
  assert_non_null(s->ts);
  tls_stream_setcb(c->ts, NULL, NULL, event_cb, c);
  tls_stream_setcb(s->ts, NULL, NULL, event_cb, s);
  for (int i = 0; i < 200 && !(c->events && s->events); i++)
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
  /* One side failing closes the socket; let the other notice. */
  for (int i = 0; i < 200 && !(c->events && s->events); i++)
    event_base_loop(base, EVLOOP_ONCE);
  tls_stream_free(c->ts);
  tls_stream_free(s->ts);
  SSL_CTX_free(cctx);
  SSL_CTX_free(sctx);
  event_base_free(base);
}

static void
handshake(const char *client_cert, const char *client_ca,
          const char *client_expects, const char *server_cert,
          const char *server_ca, const char *server_expects,
          struct side *c, struct side *s)
{
  handshake_ctx(ctx_for(client_cert, client_ca, client_expects, false),
                client_expects, server_cert, server_ca, server_expects, c, s);
}

static void
test_mutual_auth_ok(void **state)
{
  struct side c, s;

  (void)state;
  handshake("primary", "ca", "secondary.test", "secondary", "ca",
            "primary.test", &c, &s);
  assert_true(c.events & TLS_STREAM_CONNECTED);
  assert_true(s.events & TLS_STREAM_CONNECTED);
  assert_string_equal(c.cn, "secondary");
  assert_string_equal(s.cn, "primary.test");
}

static void
test_server_name_mismatch(void **state)
{
  struct side c, s;

  (void)state;
  /* The secondary's certificate is not for "backup.test". */
  handshake("primary", "ca", "backup.test", "secondary", "ca",
            "primary.test", &c, &s);
  assert_false(c.events & TLS_STREAM_CONNECTED);
  assert_false(s.events & TLS_STREAM_CONNECTED);
  if (!strstr(c.why, "peer name mismatch"))
    fail_msg("client: %s", c.why);
  assert_non_null(strstr(c.why, "backup.test"));
}

static void
test_client_name_mismatch(void **state)
{
  struct side c, s;

  (void)state;
  /* The server checks the client's name too. */
  handshake("primary", "ca", "secondary.test", "secondary", "ca",
            "someone-else", &c, &s);
  assert_false(s.events & TLS_STREAM_CONNECTED);
  if (!strstr(s.why, "peer name mismatch"))
    fail_msg("server: %s", s.why);
}

static void
test_client_from_other_ca(void **state)
{
  struct side c, s;

  (void)state;
  handshake("rogue", "ca", "secondary.test", "secondary", "ca",
            "primary.test", &c, &s);
  assert_false(s.events & TLS_STREAM_CONNECTED);
  if (!strstr(s.why, "certificate verify failed"))
    fail_msg("server: %s", s.why);
  assert_non_null(strstr(s.why, "unable to get local issuer certificate"));
}

static void
test_server_from_other_ca(void **state)
{
  struct side c, s;

  (void)state;
  handshake("primary", "other-ca", "secondary.test", "secondary", "ca",
            "primary.test", &c, &s);
  assert_false(c.events & TLS_STREAM_CONNECTED);
  if (!strstr(c.why, "certificate verify failed"))
    fail_msg("client: %s", c.why);
  /* The server learns why from the client's alert. */
  assert_false(s.events & TLS_STREAM_CONNECTED);
  assert_true(s.why[0] != '\0');
}

static void
test_client_without_certificate(void **state)
{
  SSL_CTX *bare = SSL_CTX_new(TLS_method());
  struct side c, s;

  (void)state;
  SSL_CTX_set_verify(bare, SSL_VERIFY_NONE, NULL);
  handshake_ctx(bare, "secondary.test", "secondary", "ca", "primary.test", &c,
                &s);
  assert_false(s.events & TLS_STREAM_CONNECTED);
  if (!strstr(s.why, "peer did not return a certificate"))
    fail_msg("server: %s", s.why);
}

static void
test_ctx_errors_name_the_file(void **state)
{
  char cert[128], key[128], ca[128], other_key[128], err[512];
  struct tls_config cfg = { cert, key, ca, "x" };

  (void)state;
  path_of(cert, sizeof cert, "primary.pem");
  path_of(key, sizeof key, "primary.key");
  path_of(ca, sizeof ca, "ca.pem");
  path_of(other_key, sizeof other_key, "secondary.key");

  cfg.cert = "/nonexistent/cert.pem";
  assert_null(tls_ctx_new(&cfg, false, err, sizeof err));
  assert_string_equal(err, "--tls-cert /nonexistent/cert.pem: cannot load "
                           "certificate: No such file or directory");
  cfg.cert = key;
  assert_null(tls_ctx_new(&cfg, false, err, sizeof err));
  assert_non_null(strstr(err, "no PEM certificate found"));
  cfg.cert = cert;

  cfg.key = ca; /* a certificate is not a key */
  assert_null(tls_ctx_new(&cfg, false, err, sizeof err));
  assert_non_null(strstr(err, "--tls-key"));
  assert_non_null(strstr(err, ca));
  assert_non_null(strstr(err, "no PEM private key found"));

  cfg.key = other_key;
  assert_null(tls_ctx_new(&cfg, true, err, sizeof err));
  assert_non_null(strstr(err, "does not match"));
  cfg.key = key;

  cfg.ca = "/nonexistent/ca.pem";
  assert_null(tls_ctx_new(&cfg, true, err, sizeof err));
  assert_non_null(strstr(err, "--tls-ca /nonexistent/ca.pem"));
  assert_non_null(strstr(err, "No such file or directory"));
  cfg.ca = key;
  assert_null(tls_ctx_new(&cfg, true, err, sizeof err));
  assert_non_null(strstr(err, "--tls-ca"));
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_mutual_auth_ok),
    cmocka_unit_test(test_server_name_mismatch),
    cmocka_unit_test(test_client_name_mismatch),
    cmocka_unit_test(test_client_from_other_ca),
    cmocka_unit_test(test_server_from_other_ca),
    cmocka_unit_test(test_client_without_certificate),
    cmocka_unit_test(test_ctx_errors_name_the_file),
  };
  return cmocka_run_group_tests(tests, setup_certs, teardown_certs);
}
