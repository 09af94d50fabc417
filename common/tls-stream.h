/* A TLS byte stream on a non-blocking socket, driven by a libevent loop:
 * the transport between the agents.  The link state machines see two
 * evbuffers (plaintext in, plaintext out) and three callbacks, and do not
 * care that the bytes are encrypted.
 *
 * Why not libevent's OpenSSL bufferevent: it writes only from an EPOLLOUT
 * wake-up (two epoll_ctl calls and a loop pass per write, on each side of
 * every round trip), reads one record per two syscalls, and turns every
 * output segment into its own TLS record.  This stream writes as soon as
 * the current callback returns, coalesces small frames into full records,
 * and reads ahead in large chunks. */
#ifndef DUPLEX_TLS_STREAM_H
#define DUPLEX_TLS_STREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/ssl.h>

struct tls_stream;

/* What the event callback reports. */
enum {
  TLS_STREAM_CONNECTED = 1, /* handshake done, peer verified */
  TLS_STREAM_EOF = 2,       /* peer closed (with or without close_notify) */
  TLS_STREAM_ERROR = 4,     /* TLS or socket error; tls_stream_describe */
};

typedef void (*tls_stream_data_fn)(struct tls_stream *ts, void *arg);
typedef void (*tls_stream_event_fn)(struct tls_stream *ts, int what,
                                    void *arg);

/* Wrap a connected (or accepted) non-blocking fd; the handshake starts at
 * once.  Takes ownership of fd (closed by tls_stream_free, or at once when
 * this returns NULL).  peer_name: the name the peer's certificate must
 * carry (see tls_ssl_new). */
struct tls_stream *tls_stream_new(struct event_base *base, SSL_CTX *ctx,
                                  int fd, bool server, const char *peer_name);

/* read_cb: new plaintext is in the input buffer.  drained_cb: the output
 * buffer became empty (everything handed to the kernel).  event_cb: one of
 * the TLS_STREAM_* events; after EOF or ERROR the stream does nothing more
 * and the owner frees it.  Any callback may free the stream. */
void tls_stream_setcb(struct tls_stream *ts, tls_stream_data_fn read_cb,
                      tls_stream_data_fn drained_cb,
                      tls_stream_event_fn event_cb, void *arg);

struct evbuffer *tls_stream_input(struct tls_stream *ts);
/* Data added here is sent after the current callback returns (all of what
 * was added during it together).  References (evbuffer_add_reference) are
 * released once their bytes are encrypted. */
struct evbuffer *tls_stream_output(struct tls_stream *ts);

/* Stop or resume reading from the peer (backpressure).  Reading also stops
 * while the input buffer holds more than the read limit. */
void tls_stream_set_reading(struct tls_stream *ts, bool on);
void tls_stream_set_read_limit(struct tls_stream *ts, size_t bytes);

/* Deliver the next len bytes of plaintext into dst instead of the input
 * buffer (what the input buffer already holds is moved there first), so a
 * block payload is decrypted straight into its aligned buffer.  read_cb
 * runs when dst is full; until then tls_stream_sink_left says how much is
 * missing.  dst must stay valid until then or until the stream is freed. */
void tls_stream_read_into(struct tls_stream *ts, void *dst, size_t len);
size_t tls_stream_sink_left(const struct tls_stream *ts);

int tls_stream_fd(const struct tls_stream *ts);

/* Why the stream failed, for a log line: the TLS alert or verification
 * error, or the socket error. */
void tls_stream_describe(const struct tls_stream *ts, char *out,
                         size_t outlen);
/* Subject CN of the verified peer certificate, or "(none)". */
void tls_stream_peer_cn(const struct tls_stream *ts, char *out,
                        size_t outlen);

/* Frees the buffers (running the output's reference callbacks) and closes
 * the fd.  Safe inside the stream's own callbacks. */
void tls_stream_free(struct tls_stream *ts);

#endif
