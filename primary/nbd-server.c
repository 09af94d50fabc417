/* The NBD front end of duplex-primary: one connection per client (the
 * listening socket and the accept loop are common/nbd-listen.c).  Each
 * connection is an explicit state machine (enum nbd_conn_state) advanced
 * by nbd_conn_run() over a plain libevent bufferevent until it would
 * block; nbd_conn_update() then decides whether to read more.  The wire
 * format lives in nbd-proto.c; requests go to the engine (vol.c) and are
 * answered from its done callback, possibly out of order, matched by
 * cookie.
 *
 * Memory per connection is bounded: request data in the engine (READ and
 * WRITE buffers) plus replies not yet written to the socket stay within
 * NBD_CONN_MAX_HELD; a request whose data would not fit waits, unread,
 * until older ones are answered and sent (one request of up to
 * NBD_BLOCK_MAX always fits into an idle connection).  Besides that: an
 * input buffer of NBD_CONN_READ_CHUNK, and WRITE payloads copied into their
 * request buffer as they arrive (rejected ones are skipped, never
 * buffered).  So 16 clients with 64 MiB writes queued hold 1 GiB, not
 * 16 x their queue depth.  A connection whose client went away stays
 * allocated until the engine has finished every request it was given. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

#include "evbuf.h"
#include "internal.h"
#include "log.h"
#include "nbd-listen.h"
#include "nbd-proto.h"

#define NBD_CONN_MAX_HELD (64u * 1024 * 1024)
#define NBD_CONN_READ_CHUNK (256u * 1024)
/* Invalid requests logged at warn level per connection, then at debug. */
#define NBD_CONN_MAX_WARNINGS 10u

enum nbd_conn_state {
  NBD_CONN_CLIENT_FLAGS, /* greeting sent, waiting for the client flags */
  NBD_CONN_OPT_HDR,      /* waiting for an option header */
  NBD_CONN_OPT_DATA,     /* waiting for the whole option payload */
  NBD_CONN_OPT_DISCARD,  /* skipping an oversized option payload */
  NBD_CONN_REQ_HDR,      /* transmission: waiting for a request header */
  NBD_CONN_REQ_DATA,     /* copying a WRITE payload into cur->buf */
  NBD_CONN_REQ_DISCARD,  /* skipping the payload of a rejected WRITE */
  NBD_CONN_DRAINING,     /* no more input: answer in-flight, flush, close */
  NBD_CONN_CLOSED,       /* socket gone, waiting for in-flight requests */
};

/* What a state step achieved. */
enum nbd_step {
  NBD_STEP_AGAIN,      /* progressed; run the next state */
  NBD_STEP_NEED_INPUT, /* needs more bytes from the client */
  NBD_STEP_WAIT,       /* needs capacity (in-flight or output) or is done */
};

struct nbd_conn;

struct nbd_server {
  struct primary *p;
  struct nbd_listen *l;         /* "unix:/run/duplex.sock", "[::]:10809" */
  struct nbd_export exp;
  char exp_name[256];
  char exp_desc[NBD_MAX_STRING];
  bool quiescing;               /* nbd_server_quiesce: no new requests */
};

struct nbd_conn {
  struct nbd_server *srv;       /* NULL once closed */
  struct primary *p;
  struct bufferevent *bev;      /* NULL once closed */
  enum nbd_conn_state state;
  char name[200];               /* for logs: "nbd client 10.0.0.2:51234" */
  struct nbd_session sess;      /* client flags; nothing else is offered */
  struct nbd_opt_hdr opt;       /* option being received */
  uint64_t discard;             /* payload bytes still to skip */
  struct evbuffer *held;        /* reply sent once the skip is done */
  struct evbuffer *wbuf;        /* replies not yet handed to the socket */
  struct event *flush;          /* writes wbuf once per loop iteration */
  struct req *cur;              /* WRITE whose payload is arriving */
  uint32_t cur_done;
  unsigned inflight;            /* submitted, done() not called yet */
  uint64_t inflight_bytes;      /* data bytes of those (and of cur) */
  bool blocked;                 /* the next message waits for capacity */
  uint64_t n_requests;
  unsigned n_warnings;
  const char *drain_reason;     /* why DRAINING: "NBD_CMD_DISC", ... */
  bool eof;                     /* the client closed its side */
  struct nbd_listen_conn lc;    /* in the server's set until closed */
};

static void nbd_conn_kick(struct nbd_conn *c);

static const char *
nbd_conn_state_name(enum nbd_conn_state s)
{
  switch (s) {
  case NBD_CONN_CLIENT_FLAGS: return "client-flags";
  case NBD_CONN_OPT_HDR: return "option-header";
  case NBD_CONN_OPT_DATA: return "option-data";
  case NBD_CONN_OPT_DISCARD: return "option-discard";
  case NBD_CONN_REQ_HDR: return "request-header";
  case NBD_CONN_REQ_DATA: return "write-data";
  case NBD_CONN_REQ_DISCARD: return "write-discard";
  case NBD_CONN_DRAINING: return "draining";
  case NBD_CONN_CLOSED: return "closed";
  }
  return "?";
}

static bool
nbd_conn_transmission(const struct nbd_conn *c)
{
  return c->state >= NBD_CONN_REQ_HDR;
}

/* Bytes of replies not yet written to the socket. */
static size_t
nbd_conn_output_len(const struct nbd_conn *c)
{
  return evbuffer_get_length(bufferevent_get_output(c->bev)) +
         evbuffer_get_length(c->wbuf);
}

/* Data this connection holds: READ and WRITE buffers in the engine, and
 * replies (READ data included) not yet taken by the socket.  A READ's
 * buffer moves from the first to the second when it completes. */
static uint64_t
nbd_conn_held(const struct nbd_conn *c)
{
  return c->inflight_bytes + nbd_conn_output_len(c);
}

/* May a message bringing `bytes` of request data start now?  Within
 * NBD_CONN_MAX_HELD, or alone: an idle connection takes any valid
 * request.  Otherwise the connection reads nothing more until older
 * requests are answered and their replies sent. */
static bool
nbd_conn_fits(const struct nbd_conn *c, uint64_t bytes)
{
  uint64_t held = nbd_conn_held(c);

  return held == 0 ||
         (held < NBD_CONN_MAX_HELD && bytes <= NBD_CONN_MAX_HELD - held);
}

/* Drop the socket.  The connection itself is freed by nbd_conn_settle once
 * the engine has finished every request it holds. */
static void
nbd_conn_close(struct nbd_conn *c, enum log_level level, const char *reason)
{
  if (c->state == NBD_CONN_CLOSED)
    return;
  log_msg(level, "%s: disconnected: %s (%" PRIu64 " requests%s)", c->name,
          reason, c->n_requests,
          c->inflight ? ", replies to requests in flight dropped" : "");
  c->state = NBD_CONN_CLOSED;
  bufferevent_free(c->bev);
  c->bev = NULL;
  evbuffer_free(c->held);
  c->held = NULL;
  evbuffer_free(c->wbuf);
  c->wbuf = NULL;
  event_free(c->flush);
  c->flush = NULL;
  if (c->cur != NULL) {
    c->inflight_bytes -= c->cur->length;
    vol_req_free(c->cur);
    c->cur = NULL;
  }
  nbd_listen_remove(&c->lc);
  c->srv = NULL;
}

/* Free a closed connection with nothing in flight.  Every entry point
 * (bufferevent callbacks, request completion, server teardown) ends here
 * and must not touch c afterwards. */
static void
nbd_conn_settle(struct nbd_conn *c)
{
  if (c->state == NBD_CONN_CLOSED && c->inflight == 0)
    free(c);
}

static void
nbd_conn_warn(struct nbd_conn *c, const char *what, const char *why)
{
  enum log_level level = LOG_LVL_WARN;

  if (c->n_warnings >= NBD_CONN_MAX_WARNINGS)
    level = LOG_LVL_DEBUG;
  else if (++c->n_warnings == NBD_CONN_MAX_WARNINGS)
    log_warn("%s: further invalid requests are logged at debug level",
             c->name);
  if (log_enabled(level))
    log_msg(level, "%s: %s: %s", c->name, what, why);
}

static void
nbd_conn_reply(struct evbuffer *out, uint32_t error, uint64_t cookie)
{
  uint8_t hdr[NBD_SIMPLE_REPLY_LEN];

  nbd_proto_build_simple_reply(hdr, error, cookie);
  /* Behind the previous read reply's referenced data. */
  evbuf_add_small(out, hdr, sizeof hdr);
}

static const char *
nbd_conn_req_name(enum req_type t)
{
  switch (t) {
  case REQ_READ: return "NBD_CMD_READ";
  case REQ_WRITE: return "NBD_CMD_WRITE";
  case REQ_FLUSH: return "NBD_CMD_FLUSH";
  case REQ_TRIM: return "NBD_CMD_TRIM";
  case REQ_ZERO: return "NBD_CMD_WRITE_ZEROES";
  }
  return "?";
}

static void
nbd_conn_free_data(const void *data, size_t len, void *extra)
{
  (void)len;
  (void)extra;
  free((void *)data);
}

/* The engine finished a request: answer it (unless the client is gone),
 * release its memory, and see whether the connection can go on.  A READ's
 * buffer is handed to the output buffer as is (it came from
 * util_alloc_aligned, so free() releases it once sent): no copy of up to
 * NBD_BLOCK_MAX per reply. */
static void
nbd_conn_done(struct req *r, int err)
{
  struct nbd_conn *c = r->opaque;
  bool data = r->type == REQ_READ || r->type == REQ_WRITE;
  struct evbuffer *out;

  c->inflight--;
  if (data)
    c->inflight_bytes -= r->length;
  if (err != 0)
    log_debug("%s: %s at offset %" PRIu64 " length %" PRIu32 " failed: %s",
              c->name, nbd_conn_req_name(r->type), r->offset, r->length,
              strerror(err));
  if (c->state != NBD_CONN_CLOSED) {
    out = c->wbuf;
    nbd_conn_reply(out, nbd_proto_errno(err), r->cookie);
    if (err == 0 && r->type == REQ_READ) {
      if (evbuffer_add_reference(out, r->buf, r->length, nbd_conn_free_data,
                                 NULL) == 0)
        r->buf = NULL;
      else if (evbuffer_add(out, r->buf, r->length) != 0)
        /* The header promised data: the stream cannot recover. */
        nbd_conn_close(c, LOG_LVL_ERROR, "out of memory queueing a read "
                       "reply");
    }
  }
  vol_req_free(r);
  if (c->state == NBD_CONN_CLOSED)
    nbd_conn_settle(c);
  else
    nbd_conn_kick(c);
}

static void
nbd_conn_submit(struct nbd_conn *c, struct req *r)
{
  c->inflight++;
  vol_submit(r);
}

/* ---- state steps ---- */

static enum nbd_step
nbd_conn_client_flags(struct nbd_conn *c, struct evbuffer *in)
{
  uint8_t buf[NBD_CLIENT_FLAGS_LEN];
  char why[200];

  if (evbuffer_get_length(in) < sizeof buf)
    return NBD_STEP_NEED_INPUT;
  evbuffer_remove(in, buf, sizeof buf);
  if (nbd_proto_parse_client_flags(buf, &c->sess.cflags, why,
                                   sizeof why) != 0) {
    nbd_conn_close(c, LOG_LVL_WARN, why);
    return NBD_STEP_WAIT;
  }
  if (!(c->sess.cflags & NBD_FLAG_C_FIXED_NEWSTYLE))
    log_debug("%s: client without fixed newstyle negotiation (flags "
              "0x%08" PRIx32 "): only NBD_OPT_EXPORT_NAME is possible",
              c->name, c->sess.cflags);
  c->state = NBD_CONN_OPT_HDR;
  return NBD_STEP_AGAIN;
}

static enum nbd_step
nbd_conn_opt_hdr(struct nbd_conn *c, struct evbuffer *in)
{
  uint8_t buf[NBD_OPT_HDR_LEN];
  char why[200];

  /* Replies the client does not read: stop reading its options. */
  c->blocked = !nbd_conn_fits(c, 0);
  if (c->blocked)
    return NBD_STEP_WAIT;
  if (evbuffer_get_length(in) < sizeof buf)
    return NBD_STEP_NEED_INPUT;
  evbuffer_remove(in, buf, sizeof buf);
  if (nbd_proto_parse_opt_hdr(buf, &c->opt, why, sizeof why) != 0) {
    nbd_conn_close(c, LOG_LVL_WARN, why);
    return NBD_STEP_WAIT;
  }
  if (c->opt.length <= NBD_MAX_OPTION) {
    c->state = NBD_CONN_OPT_DATA;
    return NBD_STEP_AGAIN;
  }
  /* Too long to buffer: skip the payload as it arrives, then answer. */
  if (nbd_proto_option_too_big(&c->opt, &c->sess, c->held, why,
                               sizeof why) == NBD_OPT_CLOSE) {
    nbd_conn_close(c, LOG_LVL_WARN, why);
    return NBD_STEP_WAIT;
  }
  nbd_conn_warn(c, "option refused", why);
  c->discard = c->opt.length;
  c->state = NBD_CONN_OPT_DISCARD;
  return NBD_STEP_AGAIN;
}

static enum nbd_step
nbd_conn_opt_data(struct nbd_conn *c, struct evbuffer *in)
{
  static const uint8_t empty[1];
  const uint8_t *payload = empty;
  enum nbd_opt_result res;
  char why[300];

  if (evbuffer_get_length(in) < c->opt.length)
    return NBD_STEP_NEED_INPUT;
  if (c->opt.length > 0)
    payload = evbuffer_pullup(in, c->opt.length);
  res = nbd_proto_option(&c->srv->exp, &c->sess, &c->opt, payload,
                         c->wbuf, why, sizeof why);
  evbuffer_drain(in, c->opt.length);
  if (res == NBD_OPT_CLOSE && why[0] != '\0') {
    /* Closing without a reply (none can be sent to this client). */
    nbd_conn_close(c, LOG_LVL_WARN, why);
    return NBD_STEP_WAIT;
  }
  if (why[0] != '\0')
    nbd_conn_warn(c, "option refused", why);
  else
    log_debug("%s: %s answered", c->name, nbd_proto_opt_name(c->opt.option));

  switch (res) {
  case NBD_OPT_NEXT:
    c->state = NBD_CONN_OPT_HDR;
    return NBD_STEP_AGAIN;
  case NBD_OPT_TRANSMISSION:
    log_debug("%s: transmission phase (%s)", c->name,
              nbd_proto_opt_name(c->opt.option));
    c->state = NBD_CONN_REQ_HDR;
    return NBD_STEP_AGAIN;
  case NBD_OPT_CLOSE:
    c->drain_reason = nbd_proto_opt_name(c->opt.option);
    c->state = NBD_CONN_DRAINING;
    return NBD_STEP_WAIT;
  }
  return NBD_STEP_WAIT;
}

static enum nbd_step
nbd_conn_discard(struct nbd_conn *c, struct evbuffer *in)
{
  size_t n = evbuffer_get_length(in);

  if (n > c->discard)
    n = (size_t)c->discard;
  evbuffer_drain(in, n);
  c->discard -= n;
  if (c->discard > 0)
    return NBD_STEP_NEED_INPUT;
  evbuffer_add_buffer(c->wbuf, c->held);
  c->state = c->state == NBD_CONN_OPT_DISCARD ? NBD_CONN_OPT_HDR
                                              : NBD_CONN_REQ_HDR;
  return NBD_STEP_AGAIN;
}

static enum req_type
nbd_conn_req_type(uint16_t cmd)
{
  switch (cmd) {
  case NBD_CMD_READ: return REQ_READ;
  case NBD_CMD_WRITE: return REQ_WRITE;
  case NBD_CMD_FLUSH: return REQ_FLUSH;
  case NBD_CMD_TRIM: return REQ_TRIM;
  default: return REQ_ZERO;  /* NBD_CMD_WRITE_ZEROES, validated before */
  }
}

/* A request was rejected before reaching the engine: skip its payload, so
 * the stream stays in sync and the connection usable, and answer.  The
 * answer waits until the payload is consumed: a client (libnbd) may not
 * expect a reply to a request it has not finished sending.  A payload
 * beyond NBD_MAX_SKIP is not worth reading: close instead (nbdkit does the
 * same). */
static enum nbd_step
nbd_conn_reject(struct nbd_conn *c, const struct nbd_request *req,
                uint32_t error)
{
  char why[200];

  c->discard = nbd_proto_request_payload(req);
  if (c->discard > NBD_MAX_SKIP) {
    snprintf(why, sizeof why, "%s of %" PRIu64 " bytes refused and too "
             "large to skip (limit %u)", nbd_proto_cmd_name(req->type),
             c->discard, NBD_MAX_SKIP);
    nbd_conn_close(c, LOG_LVL_WARN, why);
    return NBD_STEP_WAIT;
  }
  if (c->discard > 0) {
    nbd_conn_reply(c->held, error, req->cookie);
    c->state = NBD_CONN_REQ_DISCARD;
  } else {
    nbd_conn_reply(c->wbuf, error, req->cookie);
    c->state = NBD_CONN_REQ_HDR;
  }
  return NBD_STEP_AGAIN;
}

static enum nbd_step
nbd_conn_req_hdr(struct nbd_conn *c, struct evbuffer *in)
{
  uint8_t buf[NBD_REQUEST_LEN];
  struct nbd_request req;
  struct req *r;
  uint32_t error;
  char why[300];

  c->blocked = !nbd_conn_fits(c, 0);
  if (c->blocked)
    return NBD_STEP_WAIT;
  if (evbuffer_get_length(in) < sizeof buf)
    return NBD_STEP_NEED_INPUT;
  /* Looked at, not taken yet: a request whose data does not fit stays in
   * the input buffer until it does. */
  evbuffer_copyout(in, buf, sizeof buf);
  if (nbd_proto_parse_request(buf, &req, why, sizeof why) != 0) {
    nbd_conn_close(c, LOG_LVL_WARN, why);
    return NBD_STEP_WAIT;
  }
  error = nbd_proto_validate_request(&req, &c->srv->exp, &c->sess, why,
                                     sizeof why);
  if (error == 0 && (req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE) &&
      !nbd_conn_fits(c, req.length)) {
    c->blocked = true;
    return NBD_STEP_WAIT;
  }
  evbuffer_drain(in, sizeof buf);
  if (req.type == NBD_CMD_DISC) {
    /* Answer what is in flight, then close; nothing may follow. */
    log_debug("%s: NBD_CMD_DISC with %u requests in flight", c->name,
              c->inflight);
    c->drain_reason = "NBD_CMD_DISC";
    c->state = NBD_CONN_DRAINING;
    return NBD_STEP_WAIT;
  }
  c->n_requests++;

  if (error != 0) {
    nbd_conn_warn(c, "invalid request", why);
    return nbd_conn_reject(c, &req, error);
  }
  if (c->p->stopping)
    return nbd_conn_reject(c, &req, NBD_ESHUTDOWN);

  r = vol_req_new(c->p);
  r->type = nbd_conn_req_type(req.type);
  r->offset = req.offset;
  r->length = req.length;
  r->fua = (req.flags & NBD_CMD_FLAG_FUA) != 0;
  r->no_hole = (req.flags & NBD_CMD_FLAG_NO_HOLE) != 0;
  r->cookie = req.cookie;
  r->opaque = c;
  r->done = nbd_conn_done;
  if (r->type == REQ_FLUSH)
    r->length = 0;
  if (r->type == REQ_READ || r->type == REQ_WRITE) {
    r->buf = util_alloc_aligned(req.length);
    c->inflight_bytes += req.length;
  }
  if (r->type == REQ_WRITE) {
    c->cur = r;
    c->cur_done = 0;
    c->state = NBD_CONN_REQ_DATA;
    return NBD_STEP_AGAIN;
  }
  nbd_conn_submit(c, r);
  return NBD_STEP_AGAIN;
}

/* Copy a WRITE payload into its request buffer: first what the bufferevent
 * already read, then straight from the socket, so a large payload is
 * copied once and not in NBD_CONN_READ_CHUNK steps through the input
 * buffer. */
static enum nbd_step
nbd_conn_req_data(struct nbd_conn *c, struct evbuffer *in)
{
  struct req *r = c->cur;
  size_t n = evbuffer_get_length(in), want;
  ssize_t got;
  char why[200];

  if (n > r->length - c->cur_done)
    n = r->length - c->cur_done;
  if (n > 0) {
    evbuffer_remove(in, r->buf + c->cur_done, n);
    c->cur_done += (uint32_t)n;
  }
  while (c->cur_done < r->length && !c->eof) {
    want = r->length - c->cur_done;
    got = recv(bufferevent_getfd(c->bev), r->buf + c->cur_done, want, 0);
    if (got > 0) {
      c->cur_done += (uint32_t)got;
      if ((size_t)got < want)
        break; /* drained; the next EPOLLIN brings the rest */
    } else if (got == 0) {
      c->eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else if (errno != EINTR) {
      snprintf(why, sizeof why, "receive failed in state %s: %s",
               nbd_conn_state_name(c->state), strerror(errno));
      nbd_conn_close(c, LOG_LVL_INFO, why);
      return NBD_STEP_WAIT;
    }
  }
  if (c->cur_done < r->length)
    return NBD_STEP_NEED_INPUT;
  c->cur = NULL;
  c->state = NBD_CONN_REQ_HDR;
  nbd_conn_submit(c, r);
  return NBD_STEP_AGAIN;
}

/* The client closed its side and everything it sent has been handled. */
static void
nbd_conn_eof(struct nbd_conn *c, struct evbuffer *in)
{
  if (c->state == NBD_CONN_REQ_HDR && evbuffer_get_length(in) == 0) {
    /* Between requests: still answer what is in flight. */
    c->drain_reason = "client closed the connection";
    c->state = NBD_CONN_DRAINING;
    return;
  }
  if (c->state == NBD_CONN_OPT_HDR && evbuffer_get_length(in) == 0) {
    nbd_conn_close(c, LOG_LVL_INFO, "client closed the connection during "
                   "negotiation");
    return;
  }
  if (nbd_conn_transmission(c))
    nbd_conn_close(c, LOG_LVL_WARN, "client closed the connection in the "
                   "middle of a request");
  else
    nbd_conn_close(c, LOG_LVL_WARN, "client closed the connection in the "
                   "middle of negotiation");
}

#define NBD_QUIESCE_REASON "the primary is demoting (planned switchover)"

/* The server takes no new requests: between messages, a client in
 * negotiation is closed and one in transmission drains (what is in flight
 * is answered, then the connection closes).  true: the state changed. */
static bool
nbd_conn_quiesce(struct nbd_conn *c)
{
  switch (c->state) {
  case NBD_CONN_CLIENT_FLAGS:
  case NBD_CONN_OPT_HDR:
    nbd_conn_close(c, LOG_LVL_INFO, NBD_QUIESCE_REASON);
    return true;
  case NBD_CONN_REQ_HDR:
    c->drain_reason = NBD_QUIESCE_REASON;
    c->state = NBD_CONN_DRAINING;
    return true;
  default:
    return false;               /* a message is arriving: finish it */
  }
}

/* Advance the state machine until it would block. */
static void
nbd_conn_run(struct nbd_conn *c)
{
  enum nbd_step step = NBD_STEP_AGAIN;
  struct evbuffer *in;

  while (step == NBD_STEP_AGAIN) {
    if (c->state == NBD_CONN_DRAINING || c->state == NBD_CONN_CLOSED)
      return;
    if (c->srv != NULL && c->srv->quiescing && nbd_conn_quiesce(c))
      return;
    in = bufferevent_get_input(c->bev);
    switch (c->state) {
    case NBD_CONN_CLIENT_FLAGS:
      step = nbd_conn_client_flags(c, in);
      break;
    case NBD_CONN_OPT_HDR:
      step = nbd_conn_opt_hdr(c, in);
      break;
    case NBD_CONN_OPT_DATA:
      step = nbd_conn_opt_data(c, in);
      break;
    case NBD_CONN_OPT_DISCARD:
    case NBD_CONN_REQ_DISCARD:
      step = nbd_conn_discard(c, in);
      break;
    case NBD_CONN_REQ_HDR:
      step = nbd_conn_req_hdr(c, in);
      break;
    case NBD_CONN_REQ_DATA:
      step = nbd_conn_req_data(c, in);
      break;
    case NBD_CONN_DRAINING:
    case NBD_CONN_CLOSED:
      return;
    }
    if (step == NBD_STEP_NEED_INPUT && c->eof)
      nbd_conn_eof(c, in);
  }
}

/* Recompute what the connection waits for from its state and queues. */
static void
nbd_conn_update(struct nbd_conn *c)
{
  bool want_read;

  if (c->state == NBD_CONN_CLOSED)
    return;
  if (evbuffer_get_length(c->wbuf) > 0)
    event_active(c->flush, 0, 0);
  switch (c->state) {
  case NBD_CONN_CLOSED:
    return;
  case NBD_CONN_DRAINING:
    if (c->inflight == 0 && nbd_conn_output_len(c) == 0) {
      nbd_conn_close(c, LOG_LVL_INFO, c->drain_reason);
      return;
    }
    want_read = false;
    break;
  case NBD_CONN_OPT_HDR:
  case NBD_CONN_REQ_HDR:
    /* Pause only between messages: stopping in the middle of a payload
     * could deadlock with a client that reads replies only after it has
     * sent its request. */
    want_read = !c->eof && !c->blocked;
    break;
  default:
    want_read = !c->eof;
    break;
  }
  if (want_read)
    bufferevent_enable(c->bev, EV_READ);
  else
    bufferevent_disable(c->bev, EV_READ);
}

static void
nbd_conn_kick(struct nbd_conn *c)
{
  nbd_conn_run(c);
  nbd_conn_update(c);
  nbd_conn_settle(c);
}

/* Replies queued during this loop iteration (several requests may complete
 * in one) go out in one write, straight to the socket when nothing is
 * pending in the bufferevent: no EPOLLOUT round trip per reply.  Whatever
 * the socket does not take, and any error, is left to the bufferevent. */
static void
nbd_conn_flush_cb(evutil_socket_t fd, short what, void *opaque)
{
  struct nbd_conn *c = opaque;
  struct evbuffer *out = bufferevent_get_output(c->bev);

  (void)fd;
  (void)what;
  if (evbuffer_get_length(out) == 0)
    (void)evbuffer_write(c->wbuf, bufferevent_getfd(c->bev));
  if (evbuffer_get_length(c->wbuf) > 0)
    evbuffer_add_buffer(out, c->wbuf);
  nbd_conn_kick(c);
}

static void
nbd_conn_read_cb(struct bufferevent *bev, void *opaque)
{
  (void)bev;
  nbd_conn_kick(opaque);
}

/* The output buffer drained: replies are out, capacity is back. */
static void
nbd_conn_write_cb(struct bufferevent *bev, void *opaque)
{
  (void)bev;
  nbd_conn_kick(opaque);
}

static void
nbd_conn_event_cb(struct bufferevent *bev, short what, void *opaque)
{
  struct nbd_conn *c = opaque;
  char reason[200];
  int err = EVUTIL_SOCKET_ERROR();

  (void)bev;
  if (what & BEV_EVENT_ERROR) {
    /* A client that sent NBD_OPT_ABORT or NBD_CMD_DISC may well close
     * before reading what is left; that is a normal end. */
    if (c->state == NBD_CONN_DRAINING)
      snprintf(reason, sizeof reason, "%s (client gone: %s)",
               c->drain_reason, evutil_socket_error_to_string(err));
    else
      snprintf(reason, sizeof reason, "%s failed in state %s: %s",
               (what & BEV_EVENT_WRITING) ? "send" : "receive",
               nbd_conn_state_name(c->state),
               evutil_socket_error_to_string(err));
    nbd_conn_close(c, LOG_LVL_INFO, reason);
    nbd_conn_settle(c);
    return;
  }
  if (what & BEV_EVENT_EOF) {
    c->eof = true;
    nbd_conn_kick(c);
  }
}

/* ---- accepting ---- */

static int
nbd_server_accept(void *opaque, struct bufferevent *bev, const char *name,
                  char *why, size_t whylen)
{
  struct nbd_server *s = opaque;
  uint8_t hello[NBD_HANDSHAKE_LEN];
  struct nbd_conn *c;

  if (restore_blocks_clients(s->p)) {
    snprintf(why, whylen, "the volume is being restored (duplexctl "
             "restore); clients are accepted again once status shows "
             "sync: in-sync");
    return -1;
  }
  c = calloc(1, sizeof *c);
  if (c == NULL) {
    snprintf(why, whylen, "out of memory");
    return -1;
  }
  c->held = evbuffer_new();
  c->wbuf = evbuffer_new();
  c->flush = event_new(s->p->base, -1, 0, nbd_conn_flush_cb, c);
  if (c->held == NULL || c->wbuf == NULL || c->flush == NULL) {
    snprintf(why, whylen, "cannot create its buffers");
    if (c->held != NULL)
      evbuffer_free(c->held);
    if (c->wbuf != NULL)
      evbuffer_free(c->wbuf);
    if (c->flush != NULL)
      event_free(c->flush);
    free(c);
    return -1;
  }
  c->bev = bev;
  c->srv = s;
  c->p = s->p;
  snprintf(c->name, sizeof c->name, "%s", name);
  nbd_listen_add(s->l, &c->lc, c);

  bufferevent_setcb(c->bev, nbd_conn_read_cb, nbd_conn_write_cb,
                    nbd_conn_event_cb, c);
  bufferevent_setwatermark(c->bev, EV_READ, 0, NBD_CONN_READ_CHUNK);
  bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
  bufferevent_set_max_single_read(c->bev, NBD_CONN_READ_CHUNK);
  bufferevent_set_max_single_write(c->bev, NBD_CONN_READ_CHUNK);
  nbd_proto_build_handshake(hello);
  evbuffer_add(c->wbuf, hello, sizeof hello);
  c->state = NBD_CONN_CLIENT_FLAGS;
  log_info("%s: connected to %s", c->name, nbd_listen_where(s->l));
  nbd_conn_update(c);
  return 0;
}

/* Requests still in the engine complete later; their connection stays
 * allocated until then and drops the replies. */
static void
nbd_server_shutdown(void *opaque)
{
  struct nbd_conn *c = opaque;

  nbd_conn_close(c, LOG_LVL_INFO, "server shutting down");
  nbd_conn_settle(c);
}

static const struct nbd_listen_ops nbd_server_listen_ops = {
  .accept = nbd_server_accept,
  .shutdown = nbd_server_shutdown,
};

int
nbd_server_new(struct primary *p, const struct endpoint *ep,
               struct nbd_server **out, char *err, size_t errlen)
{
  struct nbd_server *s;
  const char *base;

  s = calloc(1, sizeof *s);
  if (s == NULL) {
    snprintf(err, errlen, "nbd: out of memory");
    return -1;
  }
  s->p = p;

  base = strrchr(p->vol.path, '/');
  base = base != NULL ? base + 1 : p->vol.path;
  /* proto.md strings are at most 4096 bytes (names SHOULD be 256). */
  snprintf(s->exp_name, sizeof s->exp_name, "%.255s", base);
  snprintf(s->exp_desc, sizeof s->exp_desc, "duplex-primary volume %.4000s",
           p->vol.path);
  s->exp.size = p->vol.size;
  s->exp.tflags = nbd_proto_tflags();
  s->exp.block_max = NBD_BLOCK_MAX;
  s->exp.name = s->exp_name;
  s->exp.description = s->exp_desc;

  if (nbd_listen_new(p->base, ep, &nbd_server_listen_ops, s, &s->l, err,
                     errlen) == -1) {
    free(s);
    return -1;
  }
  log_info("nbd: serving %s (%" PRIu64 " bytes) on %s", p->vol.path,
           p->vol.size, nbd_listen_where(s->l));
  *out = s;
  return 0;
}

void
nbd_server_free(struct nbd_server *s)
{
  if (s == NULL)
    return;
  nbd_listen_free(s->l);  /* closes the clients */
  free(s);
}

static void
nbd_server_quiesce_conn(void *conn)
{
  nbd_conn_kick(conn);
}

void
nbd_server_quiesce(struct nbd_server *s)
{
  if (s->quiescing)
    return;
  s->quiescing = true;
  log_info("nbd %s: no new clients or requests: %s", nbd_listen_where(s->l),
           NBD_QUIESCE_REASON);
  nbd_listen_stop(s->l);
  nbd_listen_foreach(s->l, nbd_server_quiesce_conn);
}

unsigned
nbd_server_clients(const struct nbd_server *s)
{
  return nbd_listen_clients(s->l);
}
