/* A read-only NBD server for one block source (nbd-export.h): one
 * connection per client (the listening socket and the accept loop are
 * common/nbd-listen.c), each an explicit state machine (enum
 * nbd_export_state) advanced by nbd_export_run() over a libevent
 * bufferevent until it would block; nbd_export_update() then decides
 * whether to read more.  The wire format is common/nbd-proto.c.
 *
 * Fixed newstyle negotiation (and EXPORT_NAME for older clients),
 * structured replies and base:allocation when the client asks for them,
 * simple replies otherwise.  READ, BLOCK_STATUS, FLUSH (nothing is ever
 * written, so nothing to flush) and DISC; WRITE, TRIM and WRITE_ZEROES get
 * EPERM (a WRITE's payload is read and dropped, so the connection stays in
 * step).  Several clients at once; NBD_FLAG_CAN_MULTI_CONN, since nothing
 * changes.
 *
 * Reads are synchronous, on the loop's thread: a request is answered
 * completely, from the source, before the next one is looked at, so
 * replies go out in request order and one slow disk read stalls every
 * client of this loop for its duration.  Good enough for restores and
 * inspection; a thread pool can come when the secondary serves exports
 * beside replication.
 *
 * Memory per client is bounded: replies not yet taken by the socket stay
 * within NBD_EXPORT_MAX_HELD (a READ that would not fit waits, unread,
 * until the client has taken older replies; one READ of up to
 * NBD_EXPORT_BLOCK_MAX always fits into an idle connection), plus an input
 * buffer of NBD_EXPORT_READ_CHUNK.  A READ's buffer goes to the socket by
 * reference, not copied. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "evbuf.h"
#include "log.h"
#include "nbd-export.h"
#include "nbd-listen.h"
#include "nbd-proto.h"

#define NBD_EXPORT_READ_CHUNK (256u * 1024)
#define NBD_EXPORT_WRITE_CHUNK (1024u * 1024)
/* Extents in one BLOCK_STATUS reply (32 KiB of them); a longer answer is
 * cut short, which proto.md allows. */
#define NBD_EXPORT_MAX_EXTENTS 4096u
/* Invalid requests logged at warn level per connection, then at debug. */
#define NBD_EXPORT_MAX_WARNINGS 10u

enum nbd_export_state {
  NBD_EXPORT_CLIENT_FLAGS, /* greeting sent, waiting for the client flags */
  NBD_EXPORT_OPT_HDR,      /* waiting for an option header */
  NBD_EXPORT_OPT_DATA,     /* waiting for the whole option payload */
  NBD_EXPORT_OPT_DISCARD,  /* skipping an oversized option payload */
  NBD_EXPORT_REQ_HDR,      /* transmission: waiting for a request header */
  NBD_EXPORT_REQ_DISCARD,  /* skipping the payload of a refused WRITE */
  NBD_EXPORT_DRAINING,     /* no more input: flush the replies, close */
  NBD_EXPORT_CLOSED,       /* socket gone; freed when the callback ends */
};

enum nbd_export_step {
  NBD_EXPORT_AGAIN,      /* progressed; run the next state */
  NBD_EXPORT_NEED_INPUT, /* needs more bytes from the client */
  NBD_EXPORT_WAIT,       /* needs the client to take replies, or done */
};

struct nbd_export_conn;

struct nbd_export_server {
  const struct nbd_export_source *src;
  struct nbd_listen *l;         /* "unix:/run/x.sock", "127.0.0.1:10809" */
  struct nbd_export exp;
  char exp_name[256];
  char exp_desc[NBD_MAX_STRING + 1];
  /* The extents of the BLOCK_STATUS being answered (one at a time: the
   * loop answers requests synchronously). */
  struct nbd_extent extents[NBD_EXPORT_MAX_EXTENTS];
};

struct nbd_export_conn {
  struct nbd_export_server *srv; /* NULL once closed */
  struct bufferevent *bev;       /* NULL once closed */
  enum nbd_export_state state;
  char name[200];                /* for logs: "nbd client 10.0.0.2:51234" */
  struct nbd_session sess;
  struct nbd_opt_hdr opt;        /* option being received */
  uint64_t discard;              /* payload bytes still to skip */
  struct evbuffer *held;         /* reply sent once the skip is done */
  bool blocked;                  /* the next message waits for the client */
  bool eof;                      /* the client closed its side */
  const char *drain_reason;      /* why DRAINING: "NBD_CMD_DISC", ... */
  uint64_t n_requests, bytes_read;
  unsigned n_warnings;
  struct nbd_listen_conn lc;     /* in the server's set until closed */
};

static const char *
nbd_export_state_name(enum nbd_export_state s)
{
  switch (s) {
  case NBD_EXPORT_CLIENT_FLAGS: return "client-flags";
  case NBD_EXPORT_OPT_HDR: return "option-header";
  case NBD_EXPORT_OPT_DATA: return "option-data";
  case NBD_EXPORT_OPT_DISCARD: return "option-discard";
  case NBD_EXPORT_REQ_HDR: return "request-header";
  case NBD_EXPORT_REQ_DISCARD: return "write-discard";
  case NBD_EXPORT_DRAINING: return "draining";
  case NBD_EXPORT_CLOSED: return "closed";
  }
  return "?";
}

static struct evbuffer *
nbd_export_out(const struct nbd_export_conn *c)
{
  return bufferevent_get_output(c->bev);
}

/* May a message bringing `bytes` of reply data be handled now?  Within
 * NBD_EXPORT_MAX_HELD of replies not yet sent, or alone. */
static bool
nbd_export_fits(const struct nbd_export_conn *c, uint64_t bytes)
{
  size_t held = evbuffer_get_length(nbd_export_out(c));

  return held == 0 ||
         (held < NBD_EXPORT_MAX_HELD && bytes <= NBD_EXPORT_MAX_HELD - held);
}

/* Drop the socket; the connection is freed by nbd_export_settle at the
 * end of the callback that got here. */
static void
nbd_export_close(struct nbd_export_conn *c, enum log_level level,
                 const char *reason)
{
  if (c->state == NBD_EXPORT_CLOSED)
    return;
  log_msg(level, "%s: disconnected: %s (%" PRIu64 " requests, %" PRIu64
          " bytes read)", c->name, reason, c->n_requests, c->bytes_read);
  c->state = NBD_EXPORT_CLOSED;
  bufferevent_free(c->bev);
  c->bev = NULL;
  evbuffer_free(c->held);
  c->held = NULL;
  nbd_listen_remove(&c->lc);
  c->srv = NULL;
}

/* Every entry point (bufferevent callbacks, server teardown) ends here and
 * must not touch c afterwards. */
static void
nbd_export_settle(struct nbd_export_conn *c)
{
  if (c->state == NBD_EXPORT_CLOSED)
    free(c);
}

static void
nbd_export_warn(struct nbd_export_conn *c, const char *what, const char *why)
{
  enum log_level level = LOG_LVL_WARN;

  if (c->n_warnings >= NBD_EXPORT_MAX_WARNINGS)
    level = LOG_LVL_DEBUG;
  else if (++c->n_warnings == NBD_EXPORT_MAX_WARNINGS)
    log_warn("%s: further invalid requests are logged at debug level",
             c->name);
  if (log_enabled(level))
    log_msg(level, "%s: %s: %s", c->name, what, why);
}

/* ---- replies ---- */

/* Success without data: NBD_REPLY_TYPE_NONE once structured replies are
 * negotiated (one kind of reply for everything), else a simple reply. */
static int
nbd_export_reply_ok(const struct nbd_export_conn *c, struct evbuffer *out,
                    uint64_t cookie)
{
  uint8_t hdr[NBD_SIMPLE_REPLY_LEN];

  if (c->sess.structured)
    return nbd_proto_chunk_done(out, cookie);
  nbd_proto_build_simple_reply(hdr, NBD_SUCCESS, cookie);
  return evbuf_add_small(out, hdr, sizeof hdr);
}

/* An error: an error chunk with the reason for humans when structured
 * replies are negotiated (a READ must not get a simple reply then), else a
 * simple reply, which has no room for the reason. */
static int
nbd_export_reply_error(const struct nbd_export_conn *c, struct evbuffer *out,
                       uint64_t cookie, uint32_t error, const char *why)
{
  uint8_t hdr[NBD_SIMPLE_REPLY_LEN];

  if (c->sess.structured)
    return nbd_proto_chunk_error(out, NBD_REPLY_FLAG_DONE, cookie, error,
                                 why);
  nbd_proto_build_simple_reply(hdr, error, cookie);
  return evbuf_add_small(out, hdr, sizeof hdr);
}

static void
nbd_export_free_data(const void *data, size_t len, void *extra)
{
  (void)len;
  (void)extra;
  free((void *)data);
}

/* NBD_CMD_READ, answered at once from the source: one OFFSET_DATA chunk
 * (final, since nothing can fail once the data is in hand) or a simple
 * reply followed by the data.  0, or -1 when the connection must close. */
static int
nbd_export_read(struct nbd_export_conn *c, const struct nbd_request *req)
{
  const struct nbd_export_source *src = c->srv->src;
  struct evbuffer *out = nbd_export_out(c);
  uint8_t hdr[NBD_DATA_CHUNK_HDR_LEN];
  char err[512], why[640];
  void *buf;
  int rc;

  buf = malloc(req->length);
  if (buf == NULL) {
    snprintf(why, sizeof why, "out of memory for a read of %" PRIu32
             " bytes", req->length);
    nbd_export_warn(c, "NBD_CMD_READ refused", why);
    return nbd_export_reply_error(c, out, req->cookie, NBD_ENOMEM, why);
  }
  err[0] = '\0';
  rc = src->read(src->arg, req->offset, req->length, buf, err, sizeof err);
  if (rc < 0) {
    free(buf);
    snprintf(why, sizeof why, "read at %" PRIu64 " length %" PRIu32
             " failed: %s", req->offset, req->length,
             err[0] ? err : strerror(-rc));
    log_error("%s: %s", c->name, why);
    return nbd_export_reply_error(c, out, req->cookie, nbd_proto_errno(-rc),
                                  why);
  }
  if (c->sess.structured) {
    nbd_proto_build_data_chunk_hdr(hdr, NBD_REPLY_FLAG_DONE, req->cookie,
                                   req->offset, req->length);
    rc = evbuf_add_small(out, hdr, NBD_DATA_CHUNK_HDR_LEN);
  } else {
    nbd_proto_build_simple_reply(hdr, NBD_SUCCESS, req->cookie);
    rc = evbuf_add_small(out, hdr, NBD_SIMPLE_REPLY_LEN);
  }
  if (rc == 0 && evbuffer_add_reference(out, buf, req->length,
                                        nbd_export_free_data, NULL) == 0) {
    c->bytes_read += req->length;
    return 0;
  }
  free(buf);
  return -1;
}

struct nbd_export_status {
  struct nbd_extents x;
  char why[200];
  bool bad;
};

static int
nbd_export_extent_cb(uint64_t off, uint64_t len, bool zero, void *arg)
{
  struct nbd_export_status *st = arg;
  int rc;

  rc = nbd_proto_extents_add(&st->x, off, len,
                             zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0,
                             st->why, sizeof st->why);
  if (rc < 0) {
    st->bad = true;
    return -EPROTO;
  }
  return rc;
}

/* NBD_CMD_BLOCK_STATUS for base:allocation: zero stretches are holes that
 * read as zeros, the rest is data. */
static int
nbd_export_block_status(struct nbd_export_conn *c,
                        const struct nbd_request *req)
{
  const struct nbd_export_source *src = c->srv->src;
  struct evbuffer *out = nbd_export_out(c);
  struct nbd_export_status st = { .bad = false };
  char err[512], why[800];
  int rc;

  nbd_proto_extents_init(&st.x, req, c->srv->extents,
                         NBD_EXPORT_MAX_EXTENTS);
  err[0] = '\0';
  rc = src->extents(src->arg, req->offset, req->length, nbd_export_extent_cb,
                    &st, err, sizeof err);
  if (rc < 0 || st.x.n == 0) {
    snprintf(why, sizeof why, "block status at %" PRIu64 " length %" PRIu32
             " failed: %s", req->offset, req->length,
             st.bad ? st.why : rc < 0 ? (err[0] ? err : strerror(-rc))
                                      : "the source described nothing");
    log_error("%s: %s", c->name, why);
    return nbd_export_reply_error(c, out, req->cookie, NBD_EIO, why);
  }
  return nbd_proto_chunk_block_status(out, NBD_REPLY_FLAG_DONE, req->cookie,
                                      NBD_META_ID_BASE_ALLOCATION, &st.x);
}

/* ---- state steps ---- */

static enum nbd_export_step
nbd_export_client_flags(struct nbd_export_conn *c, struct evbuffer *in)
{
  uint8_t buf[NBD_CLIENT_FLAGS_LEN];
  char why[200];

  if (evbuffer_get_length(in) < sizeof buf)
    return NBD_EXPORT_NEED_INPUT;
  evbuffer_remove(in, buf, sizeof buf);
  if (nbd_proto_parse_client_flags(buf, &c->sess.cflags, why,
                                   sizeof why) != 0) {
    nbd_export_close(c, LOG_LVL_WARN, why);
    return NBD_EXPORT_WAIT;
  }
  if (!(c->sess.cflags & NBD_FLAG_C_FIXED_NEWSTYLE))
    log_debug("%s: client without fixed newstyle negotiation (flags "
              "0x%08" PRIx32 "): only NBD_OPT_EXPORT_NAME is possible",
              c->name, c->sess.cflags);
  c->state = NBD_EXPORT_OPT_HDR;
  return NBD_EXPORT_AGAIN;
}

static enum nbd_export_step
nbd_export_opt_hdr(struct nbd_export_conn *c, struct evbuffer *in)
{
  uint8_t buf[NBD_OPT_HDR_LEN];
  char why[200];

  /* Replies the client does not read: stop reading its options. */
  c->blocked = !nbd_export_fits(c, 0);
  if (c->blocked)
    return NBD_EXPORT_WAIT;
  if (evbuffer_get_length(in) < sizeof buf)
    return NBD_EXPORT_NEED_INPUT;
  evbuffer_remove(in, buf, sizeof buf);
  if (nbd_proto_parse_opt_hdr(buf, &c->opt, why, sizeof why) != 0) {
    nbd_export_close(c, LOG_LVL_WARN, why);
    return NBD_EXPORT_WAIT;
  }
  if (c->opt.length <= NBD_MAX_OPTION) {
    c->state = NBD_EXPORT_OPT_DATA;
    return NBD_EXPORT_AGAIN;
  }
  /* Too long to buffer: skip the payload as it arrives, then answer. */
  if (nbd_proto_option_too_big(&c->opt, &c->sess, c->held, why,
                               sizeof why) == NBD_OPT_CLOSE) {
    nbd_export_close(c, LOG_LVL_WARN, why);
    return NBD_EXPORT_WAIT;
  }
  nbd_export_warn(c, "option refused", why);
  c->discard = c->opt.length;
  c->state = NBD_EXPORT_OPT_DISCARD;
  return NBD_EXPORT_AGAIN;
}

static enum nbd_export_step
nbd_export_opt_data(struct nbd_export_conn *c, struct evbuffer *in)
{
  static const uint8_t empty[1];
  const uint8_t *payload = empty;
  enum nbd_opt_result res;
  char why[300];

  if (evbuffer_get_length(in) < c->opt.length)
    return NBD_EXPORT_NEED_INPUT;
  if (c->opt.length > 0)
    payload = evbuffer_pullup(in, c->opt.length);
  res = nbd_proto_option(&c->srv->exp, &c->sess, &c->opt, payload,
                         nbd_export_out(c), why, sizeof why);
  evbuffer_drain(in, c->opt.length);
  if (res == NBD_OPT_CLOSE && why[0] != '\0') {
    /* Closing without a reply (none can be sent to this client). */
    nbd_export_close(c, LOG_LVL_WARN, why);
    return NBD_EXPORT_WAIT;
  }
  if (why[0] != '\0')
    nbd_export_warn(c, "option refused", why);
  else
    log_debug("%s: %s answered", c->name, nbd_proto_opt_name(c->opt.option));

  switch (res) {
  case NBD_OPT_NEXT:
    c->state = NBD_EXPORT_OPT_HDR;
    return NBD_EXPORT_AGAIN;
  case NBD_OPT_TRANSMISSION:
    log_debug("%s: transmission phase (%s; %s replies%s)", c->name,
              nbd_proto_opt_name(c->opt.option),
              c->sess.structured ? "structured" : "simple",
              c->sess.base_allocation ? ", base:allocation" : "");
    c->state = NBD_EXPORT_REQ_HDR;
    return NBD_EXPORT_AGAIN;
  case NBD_OPT_CLOSE:
    c->drain_reason = nbd_proto_opt_name(c->opt.option);
    c->state = NBD_EXPORT_DRAINING;
    return NBD_EXPORT_WAIT;
  }
  return NBD_EXPORT_WAIT;
}

static enum nbd_export_step
nbd_export_discard(struct nbd_export_conn *c, struct evbuffer *in)
{
  size_t n = evbuffer_get_length(in);

  if (n > c->discard)
    n = (size_t)c->discard;
  evbuffer_drain(in, n);
  c->discard -= n;
  if (c->discard > 0)
    return NBD_EXPORT_NEED_INPUT;
  evbuffer_add_buffer(nbd_export_out(c), c->held);
  c->state = c->state == NBD_EXPORT_OPT_DISCARD ? NBD_EXPORT_OPT_HDR
                                                : NBD_EXPORT_REQ_HDR;
  return NBD_EXPORT_AGAIN;
}

/* A request refused before it was executed: skip its payload (a WRITE's),
 * so the stream stays in step and the connection usable, and answer once
 * the payload is consumed (libnbd does not expect a reply to a request it
 * has not finished sending).  A payload beyond NBD_MAX_SKIP is not worth
 * reading: close instead, as nbdkit does. */
static enum nbd_export_step
nbd_export_reject(struct nbd_export_conn *c, const struct nbd_request *req,
                  uint32_t error, const char *why)
{
  char reason[200];
  int rc;

  c->discard = nbd_proto_request_payload(req);
  if (c->discard > NBD_MAX_SKIP) {
    snprintf(reason, sizeof reason, "%s of %" PRIu64 " bytes refused and "
             "too large to skip (limit %u)", nbd_proto_cmd_name(req->type),
             c->discard, NBD_MAX_SKIP);
    nbd_export_close(c, LOG_LVL_WARN, reason);
    return NBD_EXPORT_WAIT;
  }
  if (c->discard > 0) {
    rc = nbd_export_reply_error(c, c->held, req->cookie, error, why);
    c->state = NBD_EXPORT_REQ_DISCARD;
  } else {
    rc = nbd_export_reply_error(c, nbd_export_out(c), req->cookie, error,
                                why);
  }
  if (rc != 0) {
    nbd_export_close(c, LOG_LVL_ERROR, "out of memory queueing a reply");
    return NBD_EXPORT_WAIT;
  }
  return NBD_EXPORT_AGAIN;
}

static enum nbd_export_step
nbd_export_req_hdr(struct nbd_export_conn *c, struct evbuffer *in)
{
  uint8_t buf[NBD_REQUEST_LEN];
  struct nbd_request req;
  uint32_t error;
  char why[300];
  int rc = 0;

  c->blocked = !nbd_export_fits(c, 0);
  if (c->blocked)
    return NBD_EXPORT_WAIT;
  if (evbuffer_get_length(in) < sizeof buf)
    return NBD_EXPORT_NEED_INPUT;
  /* Looked at, not taken yet: a READ whose reply does not fit stays in
   * the input buffer until it does. */
  evbuffer_copyout(in, buf, sizeof buf);
  if (nbd_proto_parse_request(buf, &req, why, sizeof why) != 0) {
    nbd_export_close(c, LOG_LVL_WARN, why);
    return NBD_EXPORT_WAIT;
  }
  error = nbd_proto_validate_request(&req, &c->srv->exp, &c->sess, why,
                                     sizeof why);
  if (error == 0 && req.type == NBD_CMD_READ &&
      !nbd_export_fits(c, req.length)) {
    c->blocked = true;
    return NBD_EXPORT_WAIT;
  }
  evbuffer_drain(in, sizeof buf);
  if (req.type == NBD_CMD_DISC) {
    c->drain_reason = "NBD_CMD_DISC";
    c->state = NBD_EXPORT_DRAINING;
    return NBD_EXPORT_WAIT;
  }
  c->n_requests++;
  if (error != 0) {
    /* A write to a read-only export is not worth a warning each time. */
    if (error == NBD_EPERM)
      log_debug("%s: refused: %s", c->name, why);
    else
      nbd_export_warn(c, "invalid request", why);
    return nbd_export_reject(c, &req, error, why);
  }
  switch (req.type) {
  case NBD_CMD_READ:
    rc = nbd_export_read(c, &req);
    break;
  case NBD_CMD_BLOCK_STATUS:
    rc = nbd_export_block_status(c, &req);
    break;
  case NBD_CMD_FLUSH:
    rc = nbd_export_reply_ok(c, nbd_export_out(c), req.cookie);
    break;
  default:
    /* validated: nothing else gets here */
    rc = nbd_export_reply_error(c, nbd_export_out(c), req.cookie, NBD_EINVAL,
                                "unsupported command");
    break;
  }
  if (rc != 0) {
    /* A reply header may be out without its data: no way back. */
    nbd_export_close(c, LOG_LVL_ERROR, "out of memory queueing a reply");
    return NBD_EXPORT_WAIT;
  }
  return NBD_EXPORT_AGAIN;
}

/* The client closed its side and everything it sent has been handled. */
static void
nbd_export_eof(struct nbd_export_conn *c, struct evbuffer *in)
{
  if (c->state == NBD_EXPORT_REQ_HDR && evbuffer_get_length(in) == 0) {
    /* Between requests: still send what is queued. */
    c->drain_reason = "client closed the connection";
    c->state = NBD_EXPORT_DRAINING;
    return;
  }
  if (c->state == NBD_EXPORT_OPT_HDR && evbuffer_get_length(in) == 0) {
    nbd_export_close(c, LOG_LVL_INFO, "client closed the connection during "
                     "negotiation");
    return;
  }
  if (c->state >= NBD_EXPORT_REQ_HDR)
    nbd_export_close(c, LOG_LVL_WARN, "client closed the connection in the "
                     "middle of a request");
  else
    nbd_export_close(c, LOG_LVL_WARN, "client closed the connection in the "
                     "middle of negotiation");
}

/* Advance the state machine until it would block. */
static void
nbd_export_run(struct nbd_export_conn *c)
{
  enum nbd_export_step step = NBD_EXPORT_AGAIN;
  struct evbuffer *in;

  while (step == NBD_EXPORT_AGAIN) {
    if (c->state == NBD_EXPORT_DRAINING || c->state == NBD_EXPORT_CLOSED)
      return;
    in = bufferevent_get_input(c->bev);
    switch (c->state) {
    case NBD_EXPORT_CLIENT_FLAGS:
      step = nbd_export_client_flags(c, in);
      break;
    case NBD_EXPORT_OPT_HDR:
      step = nbd_export_opt_hdr(c, in);
      break;
    case NBD_EXPORT_OPT_DATA:
      step = nbd_export_opt_data(c, in);
      break;
    case NBD_EXPORT_OPT_DISCARD:
    case NBD_EXPORT_REQ_DISCARD:
      step = nbd_export_discard(c, in);
      break;
    case NBD_EXPORT_REQ_HDR:
      step = nbd_export_req_hdr(c, in);
      break;
    case NBD_EXPORT_DRAINING:
    case NBD_EXPORT_CLOSED:
      return;
    }
    if (step == NBD_EXPORT_NEED_INPUT && c->eof)
      nbd_export_eof(c, in);
  }
}

/* Recompute what the connection waits for from its state and output. */
static void
nbd_export_update(struct nbd_export_conn *c)
{
  size_t low = NBD_EXPORT_MAX_HELD - NBD_EXPORT_BLOCK_MAX;
  bool want_read;

  switch (c->state) {
  case NBD_EXPORT_CLOSED:
    return;
  case NBD_EXPORT_DRAINING:
    if (evbuffer_get_length(nbd_export_out(c)) == 0) {
      nbd_export_close(c, LOG_LVL_INFO, c->drain_reason);
      return;
    }
    /* Told when everything is out. */
    low = 0;
    want_read = false;
    break;
  case NBD_EXPORT_OPT_HDR:
  case NBD_EXPORT_REQ_HDR:
    /* Pause only between messages: stopping in the middle of a payload
     * could deadlock with a client that reads replies only after it has
     * sent its request. */
    want_read = !c->eof && !c->blocked;
    break;
  default:
    want_read = !c->eof;
    break;
  }
  /* The write callback comes when the output has drained to `low`: then
   * a READ of any valid size fits again. */
  bufferevent_setwatermark(c->bev, EV_WRITE, low, 0);
  if (want_read)
    bufferevent_enable(c->bev, EV_READ);
  else
    bufferevent_disable(c->bev, EV_READ);
}

static void
nbd_export_kick(struct nbd_export_conn *c)
{
  nbd_export_run(c);
  nbd_export_update(c);
  nbd_export_settle(c);
}

static void
nbd_export_read_cb(struct bufferevent *bev, void *opaque)
{
  (void)bev;
  nbd_export_kick(opaque);
}

/* The output drained to the low watermark: room for replies again. */
static void
nbd_export_write_cb(struct bufferevent *bev, void *opaque)
{
  (void)bev;
  nbd_export_kick(opaque);
}

static void
nbd_export_event_cb(struct bufferevent *bev, short what, void *opaque)
{
  struct nbd_export_conn *c = opaque;
  char reason[200];
  int err = EVUTIL_SOCKET_ERROR();

  (void)bev;
  if (what & BEV_EVENT_ERROR) {
    /* A client that sent NBD_OPT_ABORT or NBD_CMD_DISC may well close
     * before reading what is left; that is a normal end. */
    if (c->state == NBD_EXPORT_DRAINING)
      snprintf(reason, sizeof reason, "%s (client gone: %s)",
               c->drain_reason, evutil_socket_error_to_string(err));
    else
      snprintf(reason, sizeof reason, "%s failed in state %s: %s",
               (what & BEV_EVENT_WRITING) ? "send" : "receive",
               nbd_export_state_name(c->state),
               evutil_socket_error_to_string(err));
    nbd_export_close(c, LOG_LVL_INFO, reason);
    nbd_export_settle(c);
    return;
  }
  if (what & BEV_EVENT_EOF) {
    c->eof = true;
    nbd_export_kick(c);
  }
}

/* ---- accepting ---- */

static int
nbd_export_accept(void *opaque, struct bufferevent *bev, const char *name,
                  char *why, size_t whylen)
{
  struct nbd_export_server *s = opaque;
  uint8_t hello[NBD_HANDSHAKE_LEN];
  struct nbd_export_conn *c;

  c = calloc(1, sizeof *c);
  if (c != NULL)
    c->held = evbuffer_new();
  if (c == NULL || c->held == NULL) {
    snprintf(why, whylen, "cannot create its buffers");
    free(c);
    return -1;
  }
  c->bev = bev;
  c->srv = s;
  snprintf(c->name, sizeof c->name, "%s", name);
  nbd_listen_add(s->l, &c->lc, c);

  bufferevent_setcb(c->bev, nbd_export_read_cb, nbd_export_write_cb,
                    nbd_export_event_cb, c);
  bufferevent_setwatermark(c->bev, EV_READ, 0, NBD_EXPORT_READ_CHUNK);
  bufferevent_set_max_single_read(c->bev, NBD_EXPORT_READ_CHUNK);
  /* (libevent's default is 16 KiB per write: 2048 calls for a 32 MiB
   * reply) */
  bufferevent_set_max_single_write(c->bev, NBD_EXPORT_WRITE_CHUNK);
  nbd_proto_build_handshake(hello);
  bufferevent_write(c->bev, hello, sizeof hello);
  c->state = NBD_EXPORT_CLIENT_FLAGS;
  log_info("%s: connected to %s (export %s)", c->name,
           nbd_listen_where(s->l), s->exp_name);
  nbd_export_update(c);
  return 0;
}

static void
nbd_export_shutdown(void *opaque)
{
  struct nbd_export_conn *c = opaque;

  nbd_export_close(c, LOG_LVL_INFO, "server shutting down");
  nbd_export_settle(c);
}

static const struct nbd_listen_ops nbd_export_listen_ops = {
  .accept = nbd_export_accept,
  .shutdown = nbd_export_shutdown,
};

int
nbd_export_new(struct event_base *base, const struct endpoint *ep,
               const struct nbd_export_source *src, const char *name,
               const char *description, struct nbd_export_server **out,
               char *err, size_t errlen)
{
  struct nbd_export_server *s;

  *out = NULL;
  s = calloc(1, sizeof *s);
  if (s == NULL) {
    snprintf(err, errlen, "nbd: out of memory");
    return -1;
  }
  s->src = src;
  /* proto.md strings are at most 4096 bytes (names SHOULD be 256). */
  snprintf(s->exp_name, sizeof s->exp_name, "%.255s", name);
  if (description != NULL)
    snprintf(s->exp_desc, sizeof s->exp_desc, "%.4096s", description);
  s->exp.size = src->size;
  s->exp.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |
                  NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF |
                  NBD_FLAG_CAN_MULTI_CONN;
  s->exp.block_max = NBD_EXPORT_BLOCK_MAX;
  s->exp.structured = true;
  s->exp.name = s->exp_name;
  s->exp.description = description != NULL ? s->exp_desc : NULL;

  if (nbd_listen_new(base, ep, &nbd_export_listen_ops, s, &s->l, err,
                     errlen) == -1) {
    free(s);
    return -1;
  }
  *out = s;
  return 0;
}

void
nbd_export_free(struct nbd_export_server *s)
{
  if (s == NULL)
    return;
  nbd_listen_free(s->l);  /* closes the clients */
  free(s);
}

const char *
nbd_export_where(const struct nbd_export_server *s)
{
  return nbd_listen_where(s->l);
}

int
nbd_export_port(const struct nbd_export_server *s)
{
  return nbd_listen_port(s->l);
}

unsigned
nbd_export_clients(const struct nbd_export_server *s)
{
  return nbd_listen_clients(s->l);
}
