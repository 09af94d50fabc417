/* TLS byte stream on a libevent loop (see tls-stream.h for why it exists).
 *
 * States: HANDSHAKE -> OPEN -> CLOSED.  Three events drive it: the socket's
 * EV_READ (persistent, armed while reading is wanted), its EV_WRITE (armed
 * only while OpenSSL waits for room in the socket) and a "kick" (no fd),
 * activated when the owner adds output, so the write happens in the same
 * loop pass, after the owner's callback returns, without asking epoll
 * first.
 *
 * Reads: one rule, in stream_update_read, after every state change
 * (handshake done, reading resumed, read limit raised or input consumed,
 * a sink set): while the owner wants input and the last read pass did not
 * end with OpenSSL waiting for the socket, another pass is scheduled.
 * OpenSSL reads ahead, so records (even the peer's first frame, arriving
 * with its Finished inside a handshake call) can sit decrypted or
 * buffered in it while the socket is empty and epoll has nothing to say.
 *
 * Writes: a first output segment shorter than a record is coalesced with
 * what follows into a staging buffer of one full record (16 KiB), so small
 * frames share records; longer segments (block payloads referenced by the
 * owner) are encrypted from where they are.  OpenSSL requires a write that
 * returned WANT_WRITE to be retried with the same bytes: the staging
 * buffer keeps them, and a long segment stays at the head of the output
 * until it is written. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>

#include "tls-stream.h"
#include "tls.h"
#include "util.h"

#define TLS_RECORD 16384u              /* TLS plaintext record maximum */
#define TLS_WRITE_MAX (1024u * 1024)   /* plaintext per SSL_write call */
#define TLS_READ_CHUNK (64u * 1024)    /* input space reserved per read */
#define TLS_READ_AHEAD (128u * 1024)   /* ciphertext per read syscall */
#define TLS_READ_PASS (256u * 1024)    /* plaintext per wake-up, then the
                                          owner parses it */
#define TLS_MAX_ERRS 8

enum tls_stream_state { TS_HANDSHAKE, TS_OPEN, TS_CLOSED };

struct tls_stream {
  enum tls_stream_state state;
  int fd;
  SSL *ssl;
  struct event *rev, *wev, *kick;
  struct evbuffer *in, *out;
  bool reading;          /* the owner wants input */
  bool rev_armed;
  bool kick_pending;
  bool write_wants_read; /* SSL_write said WANT_READ */
  bool read_wants_write; /* SSL_read said WANT_WRITE */
  bool read_blocked;     /* the last read pass (or handshake step) ended
                            with OpenSSL waiting for the socket: only
                            epoll (or EV_WRITE) can make progress */
  size_t read_limit;
  char *sink;            /* tls_stream_read_into's destination */
  size_t sink_left;
  char *stage;           /* TLS_RECORD bytes */
  size_t stage_len;
  size_t retry_len;      /* a long segment's length that got WANT_WRITE */
  tls_stream_data_fn read_cb, drained_cb;
  tls_stream_event_fn event_cb;
  void *arg;
  unsigned depth;        /* entries from the loop in progress */
  bool freed;            /* tls_stream_free called inside a callback */
  unsigned long errs[TLS_MAX_ERRS];
  unsigned nerrs;
  int sys_err;
};

static void tls_stream_destroy(struct tls_stream *ts);

/* ---- bookkeeping ---- */

static void
stream_enter(struct tls_stream *ts)
{
  ts->depth++;
}

/* false: the stream is gone (freed by a callback), touch nothing. */
static bool
stream_leave(struct tls_stream *ts)
{
  if (--ts->depth == 0 && ts->freed) {
    tls_stream_destroy(ts);
    return false;
  }
  return true;
}

/* The one place that decides about reading, after any state change: arm
 * the socket's EV_READ while input is wanted, and when the last pass did
 * not end waiting for the socket, run a pass now: what OpenSSL holds is
 * invisible to epoll. */
static void
stream_update_read(struct tls_stream *ts)
{
  bool want = ts->state == TS_HANDSHAKE ||
              (ts->state == TS_OPEN && ts->reading &&
               evbuffer_get_length(ts->in) < ts->read_limit);

  if (want != ts->rev_armed) {
    ts->rev_armed = want;
    if (want)
      event_add(ts->rev, NULL);
    else
      event_del(ts->rev);
  }
  if (want && !ts->read_blocked)
    event_active(ts->rev, EV_READ, 0);
}

/* Record why the stream stopped, stop it, tell the owner. */
static void
stream_fail(struct tls_stream *ts, int what, int sys_err)
{
  unsigned long e;

  ts->sys_err = sys_err;
  while ((e = ERR_get_error()) != 0)
    if (ts->nerrs < TLS_MAX_ERRS)
      ts->errs[ts->nerrs++] = e;
  ts->state = TS_CLOSED;
  event_del(ts->rev);
  event_del(ts->wev);
  ts->rev_armed = false;
  if (ts->event_cb)
    ts->event_cb(ts, what, ts->arg);
}

/* After a failed SSL call: 0 to try again later (the wait is armed), or
 * the TLS_STREAM_* event that ends the stream, with *sys_err set. */
static int
stream_ssl_error(struct tls_stream *ts, int rc, int *sys_err)
{
  int saved = errno;
  unsigned long e;

  *sys_err = 0;
  switch (SSL_get_error(ts->ssl, rc)) {
  case SSL_ERROR_WANT_READ:
    return 0;
  case SSL_ERROR_WANT_WRITE:
    event_add(ts->wev, NULL);
    return 0;
  case SSL_ERROR_ZERO_RETURN:
    return TLS_STREAM_EOF;
  case SSL_ERROR_SYSCALL:
    *sys_err = saved;
    /* Nothing on the queue and no errno: the peer closed the TCP
     * connection without close_notify (killed, link cut). */
    if (ERR_peek_error() == 0 &&
        (saved == 0 || saved == ECONNRESET || saved == EPIPE))
      return TLS_STREAM_EOF;
    return TLS_STREAM_ERROR;
  default:
    e = ERR_peek_error();
    /* OpenSSL 3 reports a close without close_notify as an error. */
    if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
        ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
      return TLS_STREAM_EOF;
    return TLS_STREAM_ERROR;
  }
}

/* ---- writing ---- */

/* One SSL_write of the head of the output: >0 bytes taken, 0 blocked,
 * -1 failed (owner told). */
static int
stream_wait_or_fail(struct tls_stream *ts, int rc)
{
  int sys_err, what = stream_ssl_error(ts, rc, &sys_err);

  if (what == 0)
    return 0;
  stream_fail(ts, what, sys_err);
  return -1;
}

static int
stream_write_once(struct tls_stream *ts)
{
  struct evbuffer_iovec v;
  size_t len;
  int rc;

  if (ts->stage_len == 0 && ts->retry_len == 0) {
    if (evbuffer_peek(ts->out, -1, NULL, &v, 1) < 1)
      return 0;
    if (v.iov_len < TLS_RECORD) {
      int n = evbuffer_remove(ts->out, ts->stage, TLS_RECORD);
      if (n <= 0)
        return 0;
      ts->stage_len = (size_t)n;
    }
  }
  ERR_clear_error();
  if (ts->stage_len) {
    rc = SSL_write(ts->ssl, ts->stage, (int)ts->stage_len);
    if (rc <= 0)
      return stream_wait_or_fail(ts, rc);
    /* Partial writes end on record boundaries; the stage is one record. */
    ts->stage_len -= (size_t)rc;
    if (ts->stage_len)
      memmove(ts->stage, ts->stage + rc, ts->stage_len);
    return rc;
  }
  if (evbuffer_peek(ts->out, -1, NULL, &v, 1) < 1)
    return 0;
  /* A retry must offer at least the bytes offered before: the head
   * segment never shrinks until it is drained, it may only grow. */
  len = v.iov_len < TLS_WRITE_MAX ? v.iov_len : TLS_WRITE_MAX;
  if (len < ts->retry_len)
    len = ts->retry_len;
  rc = SSL_write(ts->ssl, v.iov_base, (int)len);
  if (rc <= 0) {
    ts->retry_len = len;
    return stream_wait_or_fail(ts, rc);
  }
  ts->retry_len = 0;
  evbuffer_drain(ts->out, (size_t)rc);
  return rc;
}

/* Write until the output is empty or the socket is full. */
static void
stream_flush(struct tls_stream *ts)
{
  bool wrote = false;
  int rc;

  if (ts->state != TS_OPEN)
    return;
  ts->write_wants_read = false;
  while ((rc = stream_write_once(ts)) > 0)
    wrote = true;
  if (rc < 0)
    return;
  if (ts->stage_len || evbuffer_get_length(ts->out)) {
    if (SSL_want_read(ts->ssl))
      ts->write_wants_read = true;
    return;
  }
  if (wrote && ts->drained_cb)
    ts->drained_cb(ts, ts->arg);
}

/* ---- reading ---- */

/* stream_ssl_error for SSL_read, remembering a read that has to wait for
 * the socket to take a write (post-handshake messages), so that only then
 * the EV_WRITE wake-up retries reading. */
static int
stream_read_failed(struct tls_stream *ts, int rc, int *sys_err)
{
  int what = stream_ssl_error(ts, rc, sys_err);

  ts->read_wants_write = what == 0 && SSL_want_write(ts->ssl);
  ts->read_blocked = what == 0;
  return what;
}

/* Decrypt into the input buffer until the socket is empty, the owner has
 * enough, or one pass worth arrived (then the owner parses it and the next
 * pass follows in the same loop iteration, so input does not pile up
 * unparsed); hand over what arrived before reporting an end. */
static void
stream_read(struct tls_stream *ts)
{
  bool got = false;
  size_t pass = 0;
  int what = 0, sys_err = 0;

  /* Each way out of the loop says whether OpenSSL waits for the socket
   * (read_blocked) or a pass should follow when input is wanted again. */
  ts->read_blocked = false;
  while (ts->state == TS_OPEN && ts->reading &&
         evbuffer_get_length(ts->in) < ts->read_limit) {
    if (pass >= TLS_READ_PASS)
      break;
    struct evbuffer_iovec v;
    int rc;

    if (ts->sink_left) {
      ERR_clear_error();
      rc = SSL_read(ts->ssl, ts->sink, (int)MIN(ts->sink_left,
                                                 (size_t)INT_MAX));
      if (rc <= 0) {
        what = stream_read_failed(ts, rc, &sys_err);
        break;
      }
      ts->sink += rc;
      ts->sink_left -= (size_t)rc;
      pass += (size_t)rc;
      got = true;
      if (ts->sink_left == 0) {
        /* The owner takes it from here; then reading goes on. */
        ts->sink = NULL;
        break;
      }
      if (!SSL_has_pending(ts->ssl)) {
        ts->read_blocked = true;
        break;
      }
      continue;
    }
    if (evbuffer_reserve_space(ts->in, TLS_READ_CHUNK, &v, 1) < 1)
      abort();
    ERR_clear_error();
    rc = SSL_read(ts->ssl, v.iov_base, (int)MIN(v.iov_len, (size_t)INT_MAX));
    if (rc <= 0) {
      what = stream_read_failed(ts, rc, &sys_err);
      break;
    }
    v.iov_len = (size_t)rc;
    evbuffer_commit_space(ts->in, &v, 1);
    pass += (size_t)rc;
    got = true;
    /* Nothing buffered in OpenSSL: epoll says when the socket has more,
     * which saves a read() that would say EAGAIN after every record. */
    if (!SSL_has_pending(ts->ssl)) {
      ts->read_blocked = true;
      break;
    }
  }
  if (what == 0)
    stream_update_read(ts);
  if (got && ts->read_cb) {
    ts->read_cb(ts, ts->arg);
    if (ts->freed)
      return;
  }
  if (what != 0 && ts->state != TS_CLOSED)
    stream_fail(ts, what, sys_err);
}

/* ---- handshake ---- */

static void
stream_handshake(struct tls_stream *ts)
{
  int rc;

  ERR_clear_error();
  rc = SSL_do_handshake(ts->ssl);
  if (rc != 1) {
    ts->read_blocked = true;
    (void)stream_wait_or_fail(ts, rc);
    return;
  }
  /* The handshake may have read application data behind the peer's
   * Finished (read-ahead): it is OpenSSL's now, not the socket's. */
  ts->state = TS_OPEN;
  ts->read_blocked = false;
  stream_update_read(ts);
  if (evbuffer_get_length(ts->out) && !ts->kick_pending) {
    ts->kick_pending = true;
    event_active(ts->kick, 0, 0);
  }
  if (ts->event_cb)
    ts->event_cb(ts, TLS_STREAM_CONNECTED, ts->arg);
}

/* ---- event callbacks ---- */

static void
stream_rev_cb(evutil_socket_t fd, short what, void *arg)
{
  struct tls_stream *ts = arg;

  (void)fd;
  (void)what;
  stream_enter(ts);
  if (ts->state == TS_HANDSHAKE)
    stream_handshake(ts);
  else if (ts->write_wants_read)
    stream_flush(ts);
  if (!ts->freed && ts->state == TS_OPEN)
    stream_read(ts);
  stream_leave(ts);
}

static void
stream_wev_cb(evutil_socket_t fd, short what, void *arg)
{
  struct tls_stream *ts = arg;

  (void)fd;
  (void)what;
  stream_enter(ts);
  if (ts->state == TS_HANDSHAKE)
    stream_handshake(ts);
  else
    stream_flush(ts);
  /* A read that wanted to write (post-handshake messages) resumes too. */
  if (!ts->freed && ts->state == TS_OPEN && ts->read_wants_write) {
    ts->read_wants_write = false;
    ts->read_blocked = false;
    stream_update_read(ts);
  }
  stream_leave(ts);
}

static void
stream_kick_cb(evutil_socket_t fd, short what, void *arg)
{
  struct tls_stream *ts = arg;

  (void)fd;
  (void)what;
  ts->kick_pending = false;
  stream_enter(ts);
  stream_flush(ts);
  stream_leave(ts);
}

/* The owner added output: write once its callback returns. */
static void
stream_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
              void *arg)
{
  struct tls_stream *ts = arg;

  (void)buf;
  /* While the socket is full, the EV_WRITE wake-up writes it all. */
  if (info->n_added && !ts->kick_pending && ts->state == TS_OPEN &&
      !event_pending(ts->wev, EV_WRITE, NULL)) {
    ts->kick_pending = true;
    event_active(ts->kick, 0, 0);
  }
}

/* The owner consumed input: reading may resume. */
static void
stream_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
             void *arg)
{
  struct tls_stream *ts = arg;

  (void)buf;
  if (info->n_deleted)
    stream_update_read(ts);
}

/* ---- public ---- */

struct tls_stream *
tls_stream_new(struct event_base *base, SSL_CTX *ctx, int fd, bool server,
               const char *peer_name)
{
  struct tls_stream *ts = calloc(1, sizeof *ts);

  if (!ts) {
    close(fd);
    return NULL;
  }
  ts->fd = fd;
  ts->reading = true;
  ts->read_limit = SIZE_MAX;
  ts->ssl = tls_ssl_new(ctx, server, peer_name);
  ts->rev = event_new(base, fd, EV_READ | EV_PERSIST, stream_rev_cb, ts);
  ts->wev = event_new(base, fd, EV_WRITE, stream_wev_cb, ts);
  ts->kick = event_new(base, -1, 0, stream_kick_cb, ts);
  ts->in = evbuffer_new();
  ts->out = evbuffer_new();
  ts->stage = malloc(TLS_RECORD);
  if (!ts->ssl || !ts->rev || !ts->wev || !ts->kick || !ts->in ||
      !ts->out || !ts->stage || SSL_set_fd(ts->ssl, fd) != 1) {
    ERR_clear_error();
    tls_stream_destroy(ts);
    return NULL;
  }
  SSL_set_mode(ts->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  /* Pull many records per read syscall. */
  SSL_set_read_ahead(ts->ssl, 1);
  SSL_set_default_read_buffer_len(ts->ssl, TLS_READ_AHEAD);
  if (server)
    SSL_set_accept_state(ts->ssl);
  else
    SSL_set_connect_state(ts->ssl);
  evbuffer_add_cb(ts->out, stream_out_cb, ts);
  evbuffer_add_cb(ts->in, stream_in_cb, ts);
  ts->state = TS_HANDSHAKE;
  ts->rev_armed = true;
  ts->read_blocked = true;      /* the EV_WRITE below starts the handshake */
  event_add(ts->rev, NULL);
  /* The client speaks first; either way, start from the loop. */
  event_active(ts->wev, EV_WRITE, 0);
  return ts;
}

void
tls_stream_setcb(struct tls_stream *ts, tls_stream_data_fn read_cb,
                 tls_stream_data_fn drained_cb, tls_stream_event_fn event_cb,
                 void *arg)
{
  ts->read_cb = read_cb;
  ts->drained_cb = drained_cb;
  ts->event_cb = event_cb;
  ts->arg = arg;
}

struct evbuffer *
tls_stream_input(struct tls_stream *ts)
{
  return ts->in;
}

struct evbuffer *
tls_stream_output(struct tls_stream *ts)
{
  return ts->out;
}

void
tls_stream_set_reading(struct tls_stream *ts, bool on)
{
  ts->reading = on;
  stream_update_read(ts);
}

void
tls_stream_set_read_limit(struct tls_stream *ts, size_t bytes)
{
  ts->read_limit = bytes ? bytes : SIZE_MAX;
  stream_update_read(ts);
}

void
tls_stream_read_into(struct tls_stream *ts, void *dst, size_t len)
{
  int n = evbuffer_remove(ts->in, dst, len);

  if (n > 0) {
    dst = (char *)dst + n;
    len -= (size_t)n;
  }
  ts->sink = len ? dst : NULL;
  ts->sink_left = len;
  stream_update_read(ts);
}

size_t
tls_stream_sink_left(const struct tls_stream *ts)
{
  return ts->sink_left;
}

int
tls_stream_fd(const struct tls_stream *ts)
{
  return ts->fd;
}

void
tls_stream_describe(const struct tls_stream *ts, char *out, size_t outlen)
{
  tls_describe(ts->ssl, ts->errs, ts->nerrs, ts->sys_err, out, outlen);
}

void
tls_stream_peer_cn(const struct tls_stream *ts, char *out, size_t outlen)
{
  tls_peer_cn(ts->ssl, out, outlen);
}

static void
tls_stream_destroy(struct tls_stream *ts)
{
  if (ts->rev)
    event_free(ts->rev);
  if (ts->wev)
    event_free(ts->wev);
  if (ts->kick)
    event_free(ts->kick);
  if (ts->out) {
    evbuffer_remove_cb(ts->out, stream_out_cb, ts);
    evbuffer_free(ts->out);     /* runs the owner's reference callbacks */
  }
  if (ts->in) {
    evbuffer_remove_cb(ts->in, stream_in_cb, ts);
    evbuffer_free(ts->in);
  }
  if (ts->ssl)
    SSL_free(ts->ssl);
  free(ts->stage);
  if (ts->fd >= 0)
    close(ts->fd);
  free(ts);
}

void
tls_stream_free(struct tls_stream *ts)
{
  if (!ts)
    return;
  ts->read_cb = NULL;
  ts->drained_cb = NULL;
  ts->event_cb = NULL;
  if (ts->depth > 0) {
    /* Inside one of our own callbacks: finish when it unwinds. */
    ts->freed = true;
    ts->state = TS_CLOSED;
    event_del(ts->rev);
    event_del(ts->wev);
    event_del(ts->kick);
    return;
  }
  tls_stream_destroy(ts);
}
