/* TLS transport: mutual authentication over a socketpair with certificates
 * made at test time, peer name checks on both sides, the error texts an
 * operator sees, and the stream itself: bytes arrive intact and in order
 * in both directions through tiny socket buffers (every write blocks
 * part-way), with referenced payloads, paused reading, a read limit, an
 * end of stream, and a stream freed inside its own callback. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
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
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls-stream.h"
#include "tls.h"
#include "util.h"

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


/* ---- the stream ---- */

#define XFER_MSGS 400

/* The byte at position i of what a side sends (seeded per direction). */
static uint8_t
xfer_byte(uint64_t i, unsigned seed)
{
  uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
  x ^= x >> 29;
  return (uint8_t)(x * 0xBF58476D1CE4E5B9ull >> 56);
}

struct xfer {
  struct xfer *peer;
  struct tls_stream *ts;
  uint8_t *sink;                /* tls_stream_read_into in progress */
  size_t sink_len;
  unsigned sinks;
  struct event *drain_ev, *resume_ev;
  unsigned seed_out, seed_in;
  uint64_t sent, received;
  unsigned reads, refs_out, refs_done, drained;
  bool connected, bad, eof, error;
  bool free_on_read;
};

static void
xfer_ref_done(const void *data, size_t len, void *arg)
{
  struct xfer *x = arg;

  (void)len;
  free((void *)data);
  x->refs_done++;
}

/* Queue one message: small ones copied, large ones referenced. */
static void
xfer_send_one(struct xfer *x, unsigned i)
{
  size_t len = i % 3 == 0 ? 16384 + (i * 7919) % 300000 : 1 + (i * 131) % 700;
  uint8_t *buf = malloc(len);

  assert_non_null(buf);
  for (size_t k = 0; k < len; k++)
    buf[k] = xfer_byte(x->sent + k, x->seed_out);
  x->sent += len;
  if (i % 3 == 0) {
    x->refs_out++;
    assert_int_equal(evbuffer_add_reference(tls_stream_output(x->ts), buf,
                                            len, xfer_ref_done, x), 0);
  } else {
    assert_int_equal(evbuffer_add(tls_stream_output(x->ts), buf, len), 0);
    free(buf);
  }
}

static void
xfer_check(struct xfer *x, const uint8_t *buf, size_t n)
{
  for (size_t k = 0; k < n; k++)
    if (buf[k] != xfer_byte(x->received + k, x->seed_in))
      x->bad = true;
  x->received += n;
}

static void
xfer_consume(struct xfer *x, size_t max)
{
  struct evbuffer *in = tls_stream_input(x->ts);
  uint8_t buf[4096];
  int n;

  while (max > 0 && (n = evbuffer_remove(in, buf, MIN(max, sizeof buf))) > 0) {
    xfer_check(x, buf, (size_t)n);
    max -= (size_t)n;
  }
}

/* Every 7th read: take the next bytes (as many as the peer queued, at
 * most 50000) straight into a buffer of our own. */
static void
xfer_sink(struct xfer *x)
{
  if (x->sink) {
    if (tls_stream_sink_left(x->ts) > 0)
      return;
    xfer_check(x, x->sink, x->sink_len);
    free(x->sink);
    x->sink = NULL;
    x->sinks++;
  }
  if (x->reads % 7 == 0 && x->peer->sent > x->received) {
    x->sink_len = MIN(50000, x->peer->sent - x->received);
    x->sink = malloc(x->sink_len);
    assert_non_null(x->sink);
    tls_stream_read_into(x->ts, x->sink, x->sink_len);
  }
}

static void
xfer_drain_cb(evutil_socket_t fd, short what, void *arg)
{
  struct xfer *x = arg;

  (void)fd;
  (void)what;
  if (!x->sink)                 /* else those bytes come after the sink's */
    xfer_consume(x, SIZE_MAX);
}

static void
xfer_resume_cb(evutil_socket_t fd, short what, void *arg)
{
  struct xfer *x = arg;

  (void)fd;
  (void)what;
  tls_stream_set_reading(x->ts, true);
}

/* Every few calls leave most input unread (the read limit must stop the
 * stream, the later drain restart it) or pause reading. */
static void
xfer_read_cb(struct tls_stream *ts, void *arg)
{
  struct xfer *x = arg;

  (void)ts;
  if (x->free_on_read) {
    tls_stream_free(x->ts);
    x->ts = NULL;
    return;
  }
  x->reads++;
  if (x->sink) {
    xfer_sink(x);
    if (x->sink)
      return;
  }
  if (x->reads % 7 == 0) {
    xfer_consume(x, SIZE_MAX);
    xfer_sink(x);
  } else if (x->reads % 3 == 0) {
    xfer_consume(x, 1000);
    event_active(x->drain_ev, 0, 0);
  } else if (x->reads % 5 == 0) {
    xfer_consume(x, SIZE_MAX);
    tls_stream_set_reading(x->ts, false);
    event_active(x->resume_ev, 0, 0);
  } else {
    xfer_consume(x, SIZE_MAX);
  }
}

static void
xfer_drained_cb(struct tls_stream *ts, void *arg)
{
  struct xfer *x = arg;

  (void)ts;
  x->drained++;
}

static void
xfer_event_cb(struct tls_stream *ts, int what, void *arg)
{
  struct xfer *x = arg;

  if (what & TLS_STREAM_CONNECTED)
    x->connected = true;
  if (what & TLS_STREAM_EOF)
    x->eof = true;
  if (what & (TLS_STREAM_ERROR | TLS_STREAM_EOF)) {
    char why[512];
    tls_stream_describe(ts, why, sizeof why);
    print_message("stream %s: %s\n", what & TLS_STREAM_EOF ? "eof" : "error",
                  why);
  }
  if (what & TLS_STREAM_ERROR)
    x->error = true;
}

/* A connected pair over a socketpair whose buffers hold a few KiB. */
static void
xfer_pair(struct event_base *base, struct xfer *c, struct xfer *s)
{
  SSL_CTX *cctx = ctx_for("primary", "ca", "secondary.test", false);
  SSL_CTX *sctx = ctx_for("secondary", "ca", "primary.test", true);
  int sv[2], small = 4096;

  memset(c, 0, sizeof *c);
  memset(s, 0, sizeof *s);
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  for (int i = 0; i < 2; i++) {
    setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  }
  c->ts = tls_stream_new(base, cctx, sv[0], false, "secondary.test");
  s->ts = tls_stream_new(base, sctx, sv[1], true, "primary.test");
  SSL_CTX_free(cctx);           /* each SSL holds its own reference */
  SSL_CTX_free(sctx);
  assert_non_null(c->ts);
  assert_non_null(s->ts);
  c->peer = s;
  s->peer = c;
  c->seed_out = s->seed_in = 1;
  s->seed_out = c->seed_in = 2;
  for (struct xfer *x = c; x; x = x == c ? s : NULL) {
    x->drain_ev = event_new(base, -1, 0, xfer_drain_cb, x);
    x->resume_ev = event_new(base, -1, 0, xfer_resume_cb, x);
    tls_stream_setcb(x->ts, xfer_read_cb, xfer_drained_cb, xfer_event_cb, x);
  }
  tls_stream_set_read_limit(s->ts, 64 * 1024);
}

static void
xfer_free(struct xfer *x)
{
  tls_stream_free(x->ts);
  free(x->sink);
  event_free(x->drain_ev);
  event_free(x->resume_ev);
}

static void
test_stream_transfer(void **state)
{
  struct event_base *base = event_base_new();
  struct xfer c, s;
  unsigned i = 0;
  int loops;

  (void)state;
  xfer_pair(base, &c, &s);
  /* Messages are queued before the handshake ends and while it runs. */
  for (loops = 0; loops < 100000; loops++) {
    if (i < XFER_MSGS && (i < 5 || (c.connected && s.connected))) {
      xfer_send_one(&c, i);
      xfer_send_one(&s, i);
      i++;
    }
    if (i == XFER_MSGS && c.received == s.sent && s.received == c.sent)
      break;
    event_base_loop(base, EVLOOP_ONCE);
  }
  assert_true(loops < 100000);
  assert_false(c.bad);
  assert_false(s.bad);
  assert_false(c.error || s.error || c.eof || s.eof);
  assert_true(c.sent > 16u * 1024 * 1024); /* each way */
  assert_int_equal(c.refs_done, c.refs_out);
  assert_int_equal(s.refs_done, s.refs_out);
  assert_true(c.drained > 0 && s.drained > 0);
  assert_true(s.reads > 10);
  assert_true(c.sinks > 3 && s.sinks > 3);
  assert_int_equal(evbuffer_get_length(tls_stream_output(c.ts)), 0);

  /* The client goes away without close_notify: the server sees EOF. */
  xfer_free(&c);
  for (loops = 0; loops < 1000 && !s.eof; loops++)
    event_base_loop(base, EVLOOP_ONCE);
  assert_true(s.eof);
  xfer_free(&s);
  event_base_free(base);
}

/* Unsent referenced payloads are released when the stream is freed, and a
 * stream may be freed inside its own read callback. */
static void
test_stream_free_inside_callback(void **state)
{
  struct event_base *base = event_base_new();
  struct xfer c, s;
  int loops;

  (void)state;
  xfer_pair(base, &c, &s);
  s.free_on_read = true;
  for (unsigned i = 0; i < 30; i++)
    xfer_send_one(&c, i);
  for (loops = 0; loops < 10000 && s.ts != NULL; loops++)
    event_base_loop(base, EVLOOP_ONCE);
  assert_null(s.ts);
  for (loops = 0; loops < 10000 && !c.eof && !c.error; loops++)
    event_base_loop(base, EVLOOP_ONCE);
  assert_true(c.eof || c.error);
  xfer_free(&c);
  assert_int_equal(c.refs_done, c.refs_out);
  event_free(s.drain_ev);
  event_free(s.resume_ev);
  event_base_free(base);
}

/* ---- input left in OpenSSL after a state change ---- */

/* The race seen on loopback, made deterministic: the server's handshake
 * starts in the stream's write callback (the first callback of a new
 * stream), and while that one SSL_do_handshake() call runs, the client's
 * whole answer arrives: Finished and the first frame right behind it, in
 * one read (read-ahead).  The socket is then empty, so epoll never wakes
 * the stream again; the frame must be delivered anyway.  The linker wraps
 * SSL_do_handshake (-Wl,--wrap) so the test's client can act inside it. */
int __real_SSL_do_handshake(SSL *ssl);
int __wrap_SSL_do_handshake(SSL *ssl);

static const char stall_frame[] = "HELLO: the first frame after Finished";

static struct {
  SSL *client;                  /* driven by hand on a non-blocking fd */
  SSL *server;                  /* the stream's; set when its wrap fires */
  bool armed, done;
  int handshakes_in_wrap;       /* server calls that completed in the wrap */
} stall;

static void
stall_client_step(bool finish)
{
  int rc = SSL_connect(stall.client);

  if (!finish) {
    assert_int_equal(SSL_get_error(stall.client, rc), SSL_ERROR_WANT_READ);
    return;
  }
  assert_int_equal(rc, 1);
  assert_int_equal(SSL_write(stall.client, stall_frame,
                             (int)sizeof stall_frame),
                   (int)sizeof stall_frame);
}

int
__wrap_SSL_do_handshake(SSL *ssl)
{
  int rc;

  if (!stall.armed || ssl == stall.client)
    return __real_SSL_do_handshake(ssl);
  stall.armed = false;
  stall.server = ssl;
  stall_client_step(false);                 /* ClientHello */
  rc = __real_SSL_do_handshake(ssl);        /* its answer; wants Finished */
  assert_int_equal(rc, -1);
  assert_int_equal(SSL_get_error(ssl, rc), SSL_ERROR_WANT_READ);
  stall_client_step(true);                  /* Finished + the frame */
  rc = __real_SSL_do_handshake(ssl);
  if (rc == 1)
    stall.handshakes_in_wrap++;
  stall.done = true;
  return rc;
}

struct stall_side {
  size_t got;
  char buf[256];
  bool connected, failed;
};

static void
stall_read_cb(struct tls_stream *ts, void *arg)
{
  struct stall_side *s = arg;
  int n = evbuffer_remove(tls_stream_input(ts), s->buf + s->got,
                          sizeof s->buf - s->got);

  if (n > 0)
    s->got += (size_t)n;
}

static void
stall_event_cb(struct tls_stream *ts, int what, void *arg)
{
  struct stall_side *s = arg;

  (void)ts;
  if (what & TLS_STREAM_CONNECTED)
    s->connected = true;
  if (what & (TLS_STREAM_EOF | TLS_STREAM_ERROR))
    s->failed = true;
}

static void
test_stream_handshake_in_write_callback(void **state)
{
  struct event_base *base = event_base_new();
  SSL_CTX *cctx = ctx_for("primary", "ca", "secondary.test", false);
  SSL_CTX *sctx = ctx_for("secondary", "ca", "primary.test", true);
  struct stall_side s = { 0 };
  struct tls_stream *ts;
  int sv[2], passes;

  (void)state;
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  memset(&stall, 0, sizeof stall);
  stall.client = tls_ssl_new(cctx, false, "secondary.test");
  assert_non_null(stall.client);
  assert_int_equal(SSL_set_fd(stall.client, sv[0]), 1);
  SSL_set_connect_state(stall.client);
  ts = tls_stream_new(base, sctx, sv[1], true, "primary.test");
  assert_non_null(ts);
  tls_stream_setcb(ts, stall_read_cb, NULL, stall_event_cb, &s);
  stall.armed = true;
  /* Loop passes that never block: nothing else will arrive. */
  for (passes = 0; passes < 50 && s.got < sizeof stall_frame; passes++)
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
  assert_true(stall.done);
  assert_int_equal(stall.handshakes_in_wrap, 1);
  assert_true(s.connected);
  assert_false(s.failed);
  /* The frame was read from the socket inside the handshake: nothing is
   * left for epoll to report, yet it must reach the owner. */
  assert_int_equal(s.got, sizeof stall_frame);
  assert_memory_equal(s.buf, stall_frame, sizeof stall_frame);
  assert_true(passes <= 3);

  /* The same holds after reading is paused and resumed, and after a read
   * limit is raised, with the next frame already buffered in OpenSSL. */
  s.got = 0;
  tls_stream_set_reading(ts, false);
  assert_int_equal(SSL_write(stall.client, stall_frame,
                             (int)sizeof stall_frame),
                   (int)sizeof stall_frame);
  assert_int_equal(SSL_write(stall.client, stall_frame,
                             (int)sizeof stall_frame),
                   (int)sizeof stall_frame);
  for (passes = 0; passes < 5; passes++)
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
  assert_int_equal(s.got, 0);
  tls_stream_set_reading(ts, true);
  for (passes = 0; passes < 50 && s.got < 2 * sizeof stall_frame; passes++)
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
  assert_int_equal(s.got, 2 * sizeof stall_frame);

  tls_stream_free(ts);
  SSL_free(stall.client);
  close(sv[0]);
  SSL_CTX_free(cctx);
  SSL_CTX_free(sctx);
  event_base_free(base);
}

int
main(void)
{
  /* As in the agents: a write to a closed peer is an error, not a signal. */
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_mutual_auth_ok),
    cmocka_unit_test(test_server_name_mismatch),
    cmocka_unit_test(test_client_name_mismatch),
    cmocka_unit_test(test_client_from_other_ca),
    cmocka_unit_test(test_server_from_other_ca),
    cmocka_unit_test(test_client_without_certificate),
    cmocka_unit_test(test_ctx_errors_name_the_file),
    cmocka_unit_test(test_stream_transfer),
    cmocka_unit_test(test_stream_free_inside_callback),
    cmocka_unit_test(test_stream_handshake_in_write_callback),
  };
  return cmocka_run_group_tests(tests, setup_certs, teardown_certs);
}
