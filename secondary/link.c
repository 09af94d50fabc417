/* One replication connection with a primary, verified by the connector
 * (common/connector.c: the primary dialled us, --listen, or we dialled it,
 * --peer): HELLO (checked and answered by hello.c), then a stream of WRITE/ZERO/FLUSH frames handed
 * to the apply module, ACKs back.  A link whose HELLO the generations
 * refused stays open for the primary to see why, but any data frame on it
 * closes it.
 *
 * The connection is an explicit state machine (enum link_state) driven by
 * link_process(), which parses whole frames only ("parse one whole frame,
 * else wait") and never acts on a frame that failed validation.  What to
 * read is recomputed in one place, link_update().
 *
 * Liveness: from WAIT_HELLO on the link sends a heartbeat whenever it has
 * sent nothing for a quarter of the peer timeout, and closes a link silent
 * for the whole timeout: the primary's --peer-timeout from its hello, the
 * default before that.  Both sides so agree on when a link is dead.
 *
 * Only one link is the active primary (s->link).  A newly verified primary
 * replaces the old link, but its frames are not read until every I/O the
 * old link started has completed, so an old write can never land after a
 * new one. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>

#include "internal.h"

#include "frame.h"
#include "hash.h"
#include "log.h"

/* What an in_sync SYNC_STATE asks for once everything before it is
 * durable; carried by its MARK op (op->mem), op->seq = the seq to ack. */
struct link_mark {
  struct gen_ids gen;
  bool have_gen;
  bool handover;                /* the primary demotes (SyncState.handover) */
  uint64_t resyncs;             /* link->resyncs when queued */
};

struct link {
  struct secondary *s;
  enum link_state state;
  struct tls_stream *ts;
  char addr[80];                /* peer address, for logs */
  char cn[256];                 /* verified peer name */
  uint64_t serial;               /* tells links apart over time */
  uint64_t last_rx_ms, last_tx_ms;
  unsigned peer_timeout_ms;     /* the primary's, from its hello */
  uint64_t closing_ms;
  bool reading;                 /* reading from the stream, as last computed */
  bool throttled;               /* queued ops hold too much memory */
  bool shut_wr;
  /* A WRITE frame whose payload is arriving straight into its aligned
   * buffer (tls_stream_read_into). */
  char *rx_mem;
  uint8_t *rx_buf;
  size_t rx_total;
  /* from HELLO */
  uint64_t size_bytes;
  bool consistent_at_hello;
  bool refused;                 /* the generations refuse this primary's
                                   data: any data frame closes the link */
  bool accepted;                /* a frame after the hello came (not a
                                   refusal) */
  uint64_t resyncs;             /* SYNC_STATE in_sync=false received */
  unsigned marks_pending;       /* in_sync MARKs queued, not yet done */
  struct link_mark last_mark;   /* the last one queued */
  /* stream order checks */
  bool have_seq;
  uint64_t last_seq, last_epoch;
  /* ACK batch, flushed from defer_ev or when full */
  uint64_t acks[SEC_ACK_BATCH];
  unsigned n_acks;
  struct event *defer_ev;       /* flush ACKs, re-read after a stall */
  struct event *free_ev;
  TAILQ_ENTRY(link) entry;
};

static void link_read_cb(struct tls_stream *ts, void *arg);
static void link_process(struct link *l);
static void link_write_cb(struct tls_stream *ts, void *arg);
static void link_event_cb(struct tls_stream *ts, int what, void *arg);
static void link_defer_cb(evutil_socket_t fd, short what, void *arg);
static void link_free_cb(evutil_socket_t fd, short what, void *arg);
static void link_process(struct link *l);
static uint64_t link_serials;

/* A heartbeat goes out after this long without sending anything. */
static unsigned
link_heartbeat_ms(const struct link *l)
{
  return MIN(SEC_HEARTBEAT_MAX_MS, l->peer_timeout_ms / 4);
}

const char *
link_state_name(enum link_state st)
{
  switch (st) {
  case LINK_WAIT_HELLO: return "wait-hello";
  case LINK_REPLICATING: return "replicating";
  case LINK_CLOSING: return "closing";
  }
  return "?";
}

enum link_state
link_state(const struct link *l)
{
  return l->state;
}

const char *
link_peer_cn(const struct link *l)
{
  return l->cn;
}

const char *
link_peer_addr(const struct link *l)
{
  return l->addr;
}

struct link *
link_new(struct secondary *s, struct tls_stream *ts, const char *peer_addr,
         const char *cn)
{
  struct link *l = calloc(1, sizeof *l);

  if (l == NULL)
    return NULL;
  l->s = s;
  l->ts = ts;
  l->state = LINK_WAIT_HELLO;
  l->last_rx_ms = l->last_tx_ms = util_now_ms();
  l->peer_timeout_ms = SEC_PEER_TIMEOUT_MS;
  snprintf(l->addr, sizeof l->addr, "%s", peer_addr);
  snprintf(l->cn, sizeof l->cn, "%s", cn);
  l->serial = ++link_serials;
  l->defer_ev = event_new(s->base, -1, 0, link_defer_cb, l);
  l->free_ev = event_new(s->base, -1, 0, link_free_cb, l);
  if (l->defer_ev == NULL || l->free_ev == NULL) {
    if (l->defer_ev != NULL)
      event_free(l->defer_ev);
    if (l->free_ev != NULL)
      event_free(l->free_ev);
    free(l);
    return NULL;
  }
  TAILQ_INSERT_TAIL(&s->links, l, entry);
  tls_stream_setcb(ts, link_read_cb, link_write_cb, link_event_cb, l);
  /* One whole frame always fits, so a partial frame never stalls reading. */
  tls_stream_set_read_limit(ts, FRAME_HDR_LEN + FRAME_MAX_MSG +
                                    FRAME_MAX_PAYLOAD);
  l->reading = true;
  if (s->link != NULL)
    link_close(s->link, false, "replaced by a new connection from %s",
               l->addr);
  s->link = l;
  link_process(l);
  return l;
}

void
link_free(struct link *l)
{
  struct secondary *s;

  if (l == NULL)
    return;
  s = l->s;
  if (s->link == l) {
    s->link = NULL;
    apply_abort(s->apply);
  }
  TAILQ_REMOVE(&s->links, l, entry);
  conn_link_freed(s, l->accepted);
  tls_stream_free(l->ts);
  free(l->rx_mem);              /* after the stream that was filling it */
  event_free(l->defer_ev);
  event_free(l->free_ev);
  free(l);
}

/* How to name the peer in a log line. */
static const char *
link_who(const struct link *l, char *buf, size_t len)
{
  snprintf(buf, len, "primary %s (%s)", l->cn, l->addr);
  return buf;
}

/* Recompute what the link waits for: the single place EV_READ changes. */
static void
link_update(struct link *l)
{
  struct secondary *s = l->s;
  struct apply_stats st;
  bool want = false;

  switch (l->state) {
  case LINK_WAIT_HELLO:
    /* I/O of a previous primary still in flight: hold this one's frames. */
    want = !apply_busy(s->apply);
    break;
  case LINK_REPLICATING:
    /* Backpressure, with hysteresis so that reading does not flap. */
    apply_get_stats(s->apply, &st);
    if (!l->throttled && st.held_bytes > SEC_MAX_QUEUED)
      l->throttled = true;
    else if (l->throttled && st.held_bytes <= SEC_RESUME_QUEUED)
      l->throttled = false;
    want = !l->throttled;
    break;
  case LINK_CLOSING:
    want = true;                                /* read and discard */
    break;
  }
  if (want == l->reading)
    return;
  tls_stream_set_reading(l->ts, want);
  l->reading = want;
  log_debug("secondary: primary %s (%s): reading %s", l->cn, l->addr,
            want ? "resumed" : "paused");
  if (want)
    l->last_rx_ms = util_now_ms();  /* the stall was ours, not the peer's */
}

int
link_send_frame(struct link *l, enum frame_type type,
                const ProtobufCMessage *msg, const void *payload,
                uint32_t plen)
{
  uint8_t small[512];
  uint8_t *buf = small;
  size_t len = frame_packed_len(msg);
  int rc = 0;

  if (l->state == LINK_CLOSING)
    return -1;
  if (len > sizeof small) {
    buf = malloc(len);
    if (buf == NULL) {
      log_error("secondary: primary %s (%s): out of memory sending %s",
                l->cn, l->addr, frame_type_name(type));
      return -1;
    }
  }
  len = frame_pack(type, msg, plen, buf);
  if (evbuffer_add(tls_stream_output(l->ts), buf, len) == 0 &&
      (plen == 0 ||
       evbuffer_add(tls_stream_output(l->ts), payload, plen) == 0)) {
    l->s->st.bytes_sent += len + plen;
    l->last_tx_ms = util_now_ms();
  } else {
    log_error("secondary: primary %s (%s): out of memory sending %s",
              l->cn, l->addr, frame_type_name(type));
    rc = -1;
  }
  if (buf != small)
    free(buf);
  return rc;
}

static void
link_send(struct link *l, enum frame_type type, const ProtobufCMessage *msg)
{
  (void)link_send_frame(l, type, msg, NULL, 0);
}

void
link_hello_done(struct link *l, uint64_t size_bytes, bool consistent,
                bool refused)
{
  l->size_bytes = size_bytes;
  l->consistent_at_hello = consistent;
  l->refused = refused;
  l->state = LINK_REPLICATING;
}

static void
link_flush_acks(struct link *l)
{
  Duplex__Ack ack = DUPLEX__ACK__INIT;

  if (l->n_acks == 0)
    return;
  ack.n_seq = l->n_acks;
  ack.seq = l->acks;
  link_send(l, FRAME_ACK, &ack.base);
  l->s->st.writes_acked += l->n_acks;
  l->n_acks = 0;
}

void
link_close(struct link *l, bool error, const char *fmt, ...)
{
  struct secondary *s = l->s;
  char reason[512], who[400];
  va_list ap;

  if (l->state == LINK_CLOSING)
    return;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  /* Reasons may be whole messages ("secondary: replica ..."). */
  log_msg(error ? LOG_LVL_WARN : LOG_LVL_INFO, "secondary: %s: %s; "
          "connection closed", link_who(l, who, sizeof who),
          strncmp(reason, "secondary: ", 11) == 0 ? reason + 11 : reason);
  if (s->link == l) {
    link_flush_acks(l);         /* they are true: fewer blocks to resync */
    s->link = NULL;
    apply_abort(s->apply);
    s->st.sync = SEC_SYNC_UNKNOWN;
  }
  l->state = LINK_CLOSING;
  l->closing_ms = util_now_ms();
  link_update(l);
  /* Let a last ERROR frame drain, then half-close (see link_write_cb). */
  if (evbuffer_get_length(tls_stream_output(l->ts)) == 0)
    link_write_cb(l->ts, l);
}

void
link_refuse(struct link *l, int code, const char *fmt, ...)
{
  Duplex__Error e = DUPLEX__ERROR__INIT;
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  e.code = (uint32_t)code;
  e.message = msg;
  link_flush_acks(l);           /* what was applied, before the verdict */
  link_send(l, FRAME_ERROR, &e.base);
  link_close(l, true, "%s", msg);
}

/* seq strictly increases and epochs never go back within one link. */
static int
link_check_order(struct link *l, const char *what, uint64_t seq,
                 uint64_t epoch)
{
  if (l->have_seq && seq <= l->last_seq) {
    link_close(l, true, "%s seq %llu after seq %llu: sequence numbers must "
               "increase", what, (unsigned long long)seq,
               (unsigned long long)l->last_seq);
    return -1;
  }
  if (l->have_seq && epoch < l->last_epoch) {
    link_close(l, true, "%s epoch %llu after epoch %llu: epochs must not go "
               "back", what, (unsigned long long)epoch,
               (unsigned long long)l->last_epoch);
    return -1;
  }
  l->have_seq = true;
  l->last_seq = seq;
  l->last_epoch = epoch;
  return 0;
}

/* WRITEs are whole blocks (O_DIRECT); ZERO ranges may have partial edge
 * blocks, which bdev_zero handles (apply.c's byte-range overlap check then
 * still orders them against the whole-block writes around them). */
static int
link_check_range(struct link *l, const char *what, uint64_t off,
                 uint64_t len, bool aligned)
{
  if (aligned && (off % BDEV_ALIGN != 0 || len % BDEV_ALIGN != 0)) {
    link_close(l, true, "%s at %llu length %llu is not aligned to %u bytes",
               what, (unsigned long long)off, (unsigned long long)len,
               BDEV_ALIGN);
    return -1;
  }
  if (off > l->size_bytes || len > l->size_bytes - off) {
    link_close(l, true, "%s at %llu length %llu goes past the end of the "
               "volume (%llu bytes)", what, (unsigned long long)off,
               (unsigned long long)len, (unsigned long long)l->size_bytes);
    return -1;
  }
  return 0;
}

static int
link_queue(struct link *l, struct apply_op *op)
{
  if (apply_queue(l->s->apply, op) == -1) {
    /* The failure already closed the link; nothing to add. */
    if (l->state != LINK_CLOSING)
      link_close(l, true, "replication is paused after an I/O error");
    return -1;
  }
  return 0;
}

/* *memp: the aligned buffer holding the frame; the op takes it. */
static int
link_on_write(struct link *l, const struct frame *f, char **memp)
{
  const Duplex__Write *w = f->m.write;
  struct apply_op *op;

  if (link_check_range(l, "WRITE", w->offset, w->length, true) == -1 ||
      link_check_order(l, "WRITE", w->seq, w->epoch) == -1)
    return -1;
  op = apply_op_new(APPLY_WRITE);
  if (op == NULL) {
    link_close(l, true, "out of memory");
    return -1;
  }
  op->seq = w->seq;
  op->epoch = w->epoch;
  op->offset = w->offset;
  op->length = w->length;
  op->flags = w->flags;
  op->mem = *memp;
  *memp = NULL;
  /* The frame's buffer: a page for the header (so the payload is
   * aligned), the payload, and what an aligned allocation may waste. */
  op->held = w->length + 2 * BDEV_ALIGN;
  op->data = (const char *)f->payload;
  return link_queue(l, op);
}

static int
link_on_zero(struct link *l, const Duplex__Zero *z)
{
  struct apply_op *op;

  if (link_check_range(l, "ZERO", z->offset, z->length, false) == -1 ||
      link_check_order(l, "ZERO", z->seq, z->epoch) == -1)
    return -1;
  op = apply_op_new(APPLY_ZERO);
  if (op == NULL) {
    link_close(l, true, "out of memory");
    return -1;
  }
  op->seq = z->seq;
  op->epoch = z->epoch;
  op->offset = z->offset;
  op->length = z->length;
  op->flags = z->flags;
  return link_queue(l, op);
}

static int
link_on_flush(struct link *l, const Duplex__Flush *fl)
{
  struct apply_op *op;

  if (link_check_order(l, "FLUSH", fl->seq, fl->epoch) == -1)
    return -1;
  op = apply_op_new(APPLY_FLUSH);
  if (op == NULL) {
    link_close(l, true, "out of memory");
    return -1;
  }
  op->seq = fl->seq;
  op->epoch = fl->epoch;
  return link_queue(l, op);
}

/* VERIFY: hash the blocks once everything before it is applied. */
static int
link_on_verify(struct link *l, const Duplex__Verify *v)
{
  struct apply_op *op;

  if (link_check_order(l, "VERIFY", v->seq, l->last_epoch) == -1 ||
      link_check_range(l, "VERIFY", v->offset, v->length, true) == -1)
    return -1;
  op = apply_op_new(APPLY_VERIFY);
  if (op == NULL) {
    link_close(l, true, "out of memory");
    return -1;
  }
  op->seq = v->seq;
  op->epoch = l->last_epoch;
  op->offset = v->offset;
  op->length = v->length;
  op->mem = util_alloc_aligned(v->length);
  op->held = v->length + BDEV_ALIGN;
  return link_queue(l, op);
}

/* The blocks of a VERIFY were read: answer with their hashes (after the
 * acks of everything before it). */
static void
link_verify_done(struct link *l, const struct apply_op *op)
{
  Duplex__VerifyResult m = DUPLEX__VERIFY_RESULT__INIT;
  size_t i, n = op->length / BDEV_ALIGN;
  uint64_t *h = calloc(n, sizeof *h);

  if (h == NULL) {
    link_close(l, true, "out of memory");
    return;
  }
  for (i = 0; i < n; i++)
    h[i] = hash_block(op->mem + i * BDEV_ALIGN, BDEV_ALIGN);
  m.seq = op->seq;
  m.offset = op->offset;
  m.hashes = h;
  m.n_hashes = n;
  link_flush_acks(l);
  link_send(l, FRAME_VERIFY_RESULT, &m.base);
  free(h);
}

/* FETCH (a restore of the primary): apply ops tagged with this answer with
 * FETCH_DATA instead of an ACK. */
#define LINK_FETCH_TAG 0x4645544348ull

static int
link_fetch_error(struct link *l, uint64_t seq, uint64_t off, uint32_t len,
                 int code, const char *why)
{
  Duplex__FetchData m = DUPLEX__FETCH_DATA__INIT;

  log_warn("secondary: FETCH %llu+%u for the primary's restore: %s",
           (unsigned long long)off, len, why);
  m.seq = seq;
  m.offset = off;
  m.length = len;
  m.error = (uint32_t)code;
  m.message = (char *)why;
  link_flush_acks(l);
  link_send(l, FRAME_FETCH_DATA, &m.base);
  return 0;
}

/* FETCH: the primary restores [offset, +length) from a snapshot (which the
 * replica takes on too, as a write at this point of the stream) or from
 * the replica (a read once everything before it is applied). */
static int
link_on_fetch(struct link *l, const Duplex__Fetch *fe)
{
  struct apply_op *op;
  char *buf;
  char err[700];

  if (link_check_range(l, "FETCH", fe->offset, fe->length, true) == -1 ||
      link_check_order(l, "FETCH", fe->seq, fe->epoch) == -1)
    return -1;
  buf = util_alloc_aligned(fe->length);
  if (fe->snapshot != 0 &&
      snap_fetch(l->s->snap, fe->snapshot, fe->offset, fe->length, buf, err,
                 sizeof err) == -1) {
    free(buf);
    return link_fetch_error(l, fe->seq, fe->offset, fe->length, EIO, err);
  }
  op = apply_op_new(fe->snapshot != 0 ? APPLY_WRITE : APPLY_VERIFY);
  if (op == NULL) {
    free(buf);
    link_close(l, true, "out of memory");
    return -1;
  }
  op->seq = fe->seq;
  op->epoch = fe->epoch;
  op->offset = fe->offset;
  op->length = fe->length;
  op->flags = DUPLEX__OP_FLAG__OP_FLAG_RESYNC;
  op->mem = buf;
  op->held = fe->length + BDEV_ALIGN;
  op->tag = LINK_FETCH_TAG;
  if (fe->snapshot != 0)
    op->data = buf;
  return link_queue(l, op);
}

static void
link_fetch_done(struct link *l, const struct apply_op *op)
{
  Duplex__FetchData m = DUPLEX__FETCH_DATA__INIT;

  m.seq = op->seq;
  m.offset = op->offset;
  m.length = (uint32_t)op->length;
  link_flush_acks(l);
  (void)link_send_frame(l, FRAME_FETCH_DATA, &m.base, op->mem,
                        (uint32_t)op->length);
}

/* An answer that comes later (from the store thread) to op `seq` of the
 * link `serial`: dropped if that link is gone meanwhile. */
struct link_later {
  struct secondary *s;
  uint64_t serial, seq;
};

/* A link_later for op seq of l, or NULL (out of memory: l is closing). */
static struct link_later *
link_later_new(struct link *l, uint64_t seq)
{
  struct link_later *c = calloc(1, sizeof *c);

  if (c == NULL) {
    link_close(l, true, "out of memory");
    return NULL;
  }
  c->s = l->s;
  c->serial = l->serial;
  c->seq = seq;
  return c;
}

/* The link the answer goes to, or NULL if it is gone. */
static struct link *
link_later_link(const struct link_later *c)
{
  struct link *l = c->s->link;

  return l != NULL && l->serial == c->serial && l->state == LINK_REPLICATING
             ? l : NULL;
}

/* RESTORE_PLAN: the regions that differ between two snapshots, sent once
 * the store has them (the newer one may still be copying). */

#define LINK_PLAN_PIECE (8u << 20)

static void
link_plan_done(void *arg, const uint8_t *img, size_t len, const char *err)
{
  struct link_later *c = arg;
  struct link *l = link_later_link(c);
  Duplex__RestorePlanPart m = DUPLEX__RESTORE_PLAN_PART__INIT;
  size_t off = 0;

  if (l == NULL) {
    free(c);
    return;
  }
  m.seq = c->seq;
  if (img == NULL) {
    log_warn("secondary: no restore plan for the primary: %s", err);
    m.error = (char *)err;
    m.last = true;
    link_send(l, FRAME_RESTORE_PLAN_PART, &m.base);
    free(c);
    return;
  }
  do {
    size_t n = MIN(len - off, (size_t)LINK_PLAN_PIECE);
    m.offset = off;
    m.length = (uint32_t)n;
    m.last = off + n == len;
    if (link_send_frame(l, FRAME_RESTORE_PLAN_PART, &m.base, img + off,
                        (uint32_t)n) == -1)
      break;
    off += n;
  } while (off < len);
  free(c);
}

static int
link_on_restore_plan(struct link *l, const Duplex__RestorePlan *rp)
{
  struct link_later *c = link_later_new(l, rp->seq);
  char err[512];

  if (c == NULL)
    return -1;
  if (snap_plan(l->s->snap, rp->from, rp->to, rp->size_bytes, rp->grain,
                link_plan_done, c, err, sizeof err) == -1)
    link_plan_done(c, NULL, 0, err);
  return 0;
}

/* A resync is starting: the replica is a mix from now on. */
static void
link_before_resync_done(void *arg, uint64_t id, const char *err)
{
  (void)arg;
  if (err)
    log_warn("secondary: no snapshot before the resync: %s", err);
  else
    log_info("secondary: snapshot %llu taken before the resync (the "
             "restore point while the replica is inconsistent)",
             (unsigned long long)id);
}

static int
link_set_inconsistent(struct link *l, bool restoring)
{
  struct secondary *s = l->s;
  struct meta_sb sb = *meta_get(s->meta);
  char err[512];
  int r;

  if (!sb.consistent)
    return 0;
  /* DESIGN.md guarantee 6: a restore point before the replica becomes a
   * resync target.  Taken at this point of the stream; the resync's
   * writes to its blocks wait until it is in the store.  A restore of the
   * primary took its own (before-restore) first. */
  /* Tail capture's replica is consistent only at points, each with its
   * own snapshot: a snapshot per cycle would only repeat them. */
  if (!restoring && !s->st.consistency_points && snap_enabled(s->snap) &&
      snap_request(s->snap, SNAP_BEFORE_RESYNC, "before-resync", 0,
                   link_before_resync_done, NULL, err, sizeof err) == -1)
    log_warn("secondary: no snapshot before the resync: %s", err);
  sb.consistent = false;
  r = meta_write(s->meta, &sb);
  if (r < 0) {
    status_error(s, "secondary: metadata %s: write failed: %s; check the "
                 "disk holding it", s->cfg.meta, strerror(-r));
    link_refuse(l, EIO, "%s", s->st.last_error);
    return -1;
  }
  log_info("secondary: replica %s is now inconsistent until the %s "
           "finishes", replica_path(s->replica),
           restoring ? "primary's restore" : "resync");
  return 0;
}

/* in_sync: the replica equals the primary's data up to this point in the
 * stream.  A MARK (a FLUSH without an ACK of its own) makes everything
 * before it durable; only then does link_mark_done adopt the generation,
 * record consistency and ack ss->seq, so the primary finalises its own
 * generation only once this side has taken it. */
static int
link_on_in_sync(struct link *l, const Duplex__SyncState *ss)
{
  struct secondary *s = l->s;
  const struct meta_sb *sb = meta_get(s->meta);
  struct link_mark mk = { .resyncs = l->resyncs,
                          .handover = ss->handover };
  struct apply_op *op;

  if (ss->handover && (ss->gen == NULL || ss->seq == 0)) {
    link_close(l, true, "a handover SYNC_STATE without generation or seq");
    return -1;
  }
  if (ss->gen != NULL) {
    identity_from_wire(ss->gen, &mk.gen);
    mk.have_gen = true;
  }
  if (ss->seq != 0) {
    /* Acked in the stream: it takes its place in the seq order. */
    if (l->have_seq && ss->seq <= l->last_seq) {
      link_close(l, true, "SYNC_STATE seq %llu after seq %llu: sequence "
                 "numbers must increase", (unsigned long long)ss->seq,
                 (unsigned long long)l->last_seq);
      return -1;
    }
    l->have_seq = true;
    l->last_seq = ss->seq;
  } else {
    /* A progress report: nothing to ack.  Skip it if it changes nothing
     * or repeats the MARK still pending. */
    if (l->marks_pending > 0 && l->last_mark.resyncs == mk.resyncs &&
        l->last_mark.have_gen == mk.have_gen &&
        (!mk.have_gen ||
         memcmp(&l->last_mark.gen, &mk.gen, sizeof mk.gen) == 0))
      return 0;
    if (l->marks_pending == 0 && sb->consistent &&
        (!mk.have_gen || (sb->gen.current == mk.gen.current &&
                          !sb->discard_local && !s->bitmap_dirty)))
      return 0;
  }
  op = apply_op_new(APPLY_MARK);
  if (op != NULL)
    op->mem = malloc(sizeof mk);
  if (op == NULL || op->mem == NULL) {
    apply_op_free(op);
    link_close(l, true, "out of memory");
    return -1;
  }
  memcpy(op->mem, &mk, sizeof mk);
  op->seq = ss->seq;
  l->last_mark = mk;
  l->marks_pending++;
  return link_queue(l, op);
}

static int
link_on_sync_state(struct link *l, const Duplex__SyncState *ss)
{
  struct secondary *s = l->s;

  if (l->refused)
    return 0;                   /* nothing of this primary's applies here */
  s->st.total_bytes = ss->total_bytes;
  s->st.done_bytes = ss->done_bytes;
  s->st.out_of_sync_bytes = ss->out_of_sync_bytes;
  if (!ss->in_sync) {
    s->st.sync = ss->restoring ? SEC_SYNC_RESTORING
                 : l->consistent_at_hello ? SEC_SYNC_RESYNC
                                          : SEC_SYNC_INITIAL;
    l->resyncs++;
    return link_set_inconsistent(l, ss->restoring);
  }
  s->st.sync = SEC_SYNC_IN_SYNC;
  snap_fetch_end(s->snap);
  l->consistent_at_hello = true;  /* a later resync is not an initial one */
  return link_on_in_sync(l, ss);
}

/* The primary's --peer-timeout, from its hello: both sides drop a silent
 * link after the same time. */
static void
link_adopt_timeout(struct link *l, uint32_t ms)
{
  if (ms == 0) {
    log_info("secondary: primary %s (%s) sent no peer timeout; using %u s",
             l->cn, l->addr, SEC_PEER_TIMEOUT_MS / 1000);
    return;
  }
  l->peer_timeout_ms = MIN(MAX(ms, 1000u), 3600u * 1000);
  log_info("secondary: primary %s (%s): peer timeout %u ms (from its "
           "hello); heartbeats every %u ms", l->cn, l->addr,
           l->peer_timeout_ms, link_heartbeat_ms(l));
}

/* SNAPSHOT from the primary: a snapshot at this point of the stream; the
 * answer carries the id (or why not) once it is taken. */
static void
link_snap_done(void *arg, uint64_t id, const char *err)
{
  struct link_later *c = arg;
  struct link *l = link_later_link(c);
  Duplex__SnapshotDone m = DUPLEX__SNAPSHOT_DONE__INIT;

  if (l != NULL) {
    m.seq = c->seq;
    m.id = id;
    m.error = (char *)(err ? err : "");
    link_send(l, FRAME_SNAPSHOT_DONE, &m.base);
  }
  free(c);
}

static int
link_on_snapshot(struct link *l, const Duplex__Snapshot *sn)
{
  struct link_later *c = link_later_new(l, sn->seq);
  char err[512];

  if (c == NULL)
    return -1;
  if (snap_request(l->s->snap, sn->reason == SNAP_BEFORE_RESTORE
                                   ? SNAP_BEFORE_RESTORE : SNAP_MANUAL,
                   sn->name, sn->epoch,
                   link_snap_done, c, err, sizeof err) == -1)
    link_snap_done(c, 0, err);
  return 0;
}

static int
link_dispatch(struct link *l, const struct frame *f, char **memp)
{
  Duplex__Heartbeat hb = DUPLEX__HEARTBEAT__INIT;
  const Duplex__Error *e;

  if (f->type == FRAME_HEARTBEAT) {
    if (!f->m.heartbeat->reply) {
      hb.nonce = f->m.heartbeat->nonce;
      hb.reply = true;
      link_send(l, FRAME_HEARTBEAT, &hb.base);
    }
    return 0;
  }
  if (l->state == LINK_WAIT_HELLO) {
    if (f->type != FRAME_HELLO) {
      link_close(l, true, "expected HELLO, got %s", frame_type_name(f->type));
      return -1;
    }
    link_adopt_timeout(l, f->m.hello->peer_timeout_ms);
    l->s->st.consistency_points = f->m.hello->consistency_points;
    return hello_handle(l->s, l, f->m.hello);
  }
  if (l->refused && (f->type == FRAME_WRITE || f->type == FRAME_ZERO ||
                     f->type == FRAME_FLUSH || f->type == FRAME_VERIFY ||
                     f->type == FRAME_SNAPSHOT || f->type == FRAME_FETCH ||
                     f->type == FRAME_RESTORE_PLAN)) {
    link_close(l, true, "%s frame from a primary whose data is refused "
               "here (%s); nothing applied", frame_type_name(f->type),
               gen_decision_name(l->s->st.decision));
    return -1;
  }
  /* The primary got past the hello with us (a dialling secondary retries
   * quickly after losing such a link, slowly after a refusal). */
  if (f->type != FRAME_ERROR)
    l->accepted = true;
  switch (f->type) {
  case FRAME_WRITE:
    return link_on_write(l, f, memp);
  case FRAME_ZERO:
    return link_on_zero(l, f->m.zero);
  case FRAME_FLUSH:
    return link_on_flush(l, f->m.flush);
  case FRAME_VERIFY:
    return link_on_verify(l, f->m.verify);
  case FRAME_SYNC_STATE:
    return link_on_sync_state(l, f->m.sync_state);
  case FRAME_SNAPSHOT:
    return link_on_snapshot(l, f->m.snapshot);
  case FRAME_FETCH:
    return link_on_fetch(l, f->m.fetch);
  case FRAME_RESTORE_PLAN:
    return link_on_restore_plan(l, f->m.restore_plan);
  case FRAME_ERROR:
    e = f->m.error;
    link_close(l, true, "the primary reported an error: %s (%s)",
               e->message != NULL && e->message[0] != '\0' ? e->message
                                                           : "no message",
               strerror((int)e->code));
    return -1;
  default:
    link_close(l, true, "unexpected %s frame", frame_type_name(f->type));
    return -1;
  }
}

/* Parse and act on one whole frame.  1: one was handled; 0: need more
 * bytes; -1: the link is closing. */
static int
link_read_frame(struct link *l)
{
  struct evbuffer *in = tls_stream_input(l->ts);
  size_t avail = evbuffer_get_length(in), total, head, pad;
  uint8_t hdr[FRAME_HDR_LEN];
  struct frame f;
  char err[256];
  char *mem = NULL;
  uint8_t *buf;
  ssize_t n;
  int rc;

  if (l->rx_mem != NULL) {
    if (tls_stream_sink_left(l->ts) > 0)
      return 0;
    mem = l->rx_mem;
    buf = l->rx_buf;
    total = l->rx_total;
    l->rx_mem = NULL;
    goto parse;
  }
  if (avail < FRAME_HDR_LEN)
    return 0;
  evbuffer_copyout(in, hdr, FRAME_HDR_LEN);
  if (frame_parse_header(hdr, &f, err, sizeof err) == -1) {
    link_close(l, true, "malformed frame header: %s", err);
    return -1;
  }
  head = FRAME_HDR_LEN + f.msg_len;
  total = head + f.payload_len;
  if (f.type == FRAME_WRITE) {
    /* The frame goes into a buffer where its payload lands
     * BDEV_ALIGN-aligned, ready for O_DIRECT; the rest of it is decrypted
     * straight there.  The payload is never written to disk before the
     * whole frame parsed. */
    pad = (BDEV_ALIGN - head % BDEV_ALIGN) % BDEV_ALIGN;
    mem = util_alloc_aligned(pad + total);
    buf = (uint8_t *)mem + pad;
    if (avail < total) {
      l->rx_mem = mem;
      l->rx_buf = buf;
      l->rx_total = total;
      tls_stream_read_into(l->ts, buf, total);
      return 0;
    }
    if (evbuffer_remove(in, buf, total) != (int)total) {
      free(mem);
      link_close(l, true, "cannot read a WRITE frame from the input buffer");
      return -1;
    }
  } else {
    if (avail < total)
      return 0;
    buf = evbuffer_pullup(in, (ssize_t)total);
    if (buf == NULL) {
      link_close(l, true, "out of memory reading a %s frame",
                 frame_type_name(f.type));
      return -1;
    }
  }
parse:
  n = frame_parse(buf, total, &f, err, sizeof err);
  if (mem == NULL)
    evbuffer_drain(in, total);
  if (n != (ssize_t)total) {
    if (n > 0)
      frame_release(&f);
    free(mem);
    link_close(l, true, "malformed frame: %s",
               n == -1 ? err : "length does not match its header");
    return -1;
  }
  l->s->st.bytes_received += total;
  rc = link_dispatch(l, &f, &mem);
  frame_release(&f);
  free(mem);                    /* unless a WRITE op took it */
  return rc == 0 ? 1 : -1;
}

/* Advance the link until it would block.  Frames already buffered are
 * held back exactly when reading is (link_update decides both). */
static void
link_process(struct link *l)
{
  struct evbuffer *in;

  for (;;) {
    if (l->state == LINK_CLOSING) {
      in = tls_stream_input(l->ts);
      evbuffer_drain(in, evbuffer_get_length(in));
      return;
    }
    link_update(l);
    if (!l->reading)
      return;
    if (link_read_frame(l) != 1)
      return;
  }
}

static void
link_read_cb(struct tls_stream *ts, void *arg)
{
  struct link *l = arg;

  (void)ts;
  l->last_rx_ms = util_now_ms();
  link_process(l);
}

/* Output drained.  When closing: half-close, so the peer gets our last
 * frame and an EOF rather than a reset; free on its EOF or the timeout. */
static void
link_write_cb(struct tls_stream *ts, void *arg)
{
  struct link *l = arg;
  evutil_socket_t fd;

  if (l->state != LINK_CLOSING || l->shut_wr)
    return;
  if (evbuffer_get_length(tls_stream_output(ts)) > 0)
    return;
  l->shut_wr = true;
  fd = tls_stream_fd(ts);
  if (fd < 0 || shutdown(fd, SHUT_WR) == -1)
    event_active(l->free_ev, 0, 0);
}

static void
link_event_cb(struct tls_stream *ts, int what, void *arg)
{
  struct link *l = arg;
  char why[256];

  if (!(what & (TLS_STREAM_EOF | TLS_STREAM_ERROR)))
    return;
  if (l->state == LINK_CLOSING) {
    link_free(l);
    return;
  }
  if (what & TLS_STREAM_EOF)
    snprintf(why, sizeof why, "the primary closed the connection");
  else
    tls_stream_describe(ts, why, sizeof why);
  /* Frames already buffered were read; nothing more can be sent. */
  link_close(l, !(what & TLS_STREAM_EOF), "%s", why);
  link_free(l);
}

static void
link_defer_cb(evutil_socket_t fd, short what, void *arg)
{
  struct link *l = arg;

  (void)fd;
  (void)what;
  link_flush_acks(l);
  link_process(l);
}

static void
link_free_cb(evutil_socket_t fd, short what, void *arg)
{
  (void)fd;
  (void)what;
  link_free(arg);
}

void
link_kick(struct link *l)
{
  event_active(l->defer_ev, 0, 0);
}

static void
link_tick(struct link *l, uint64_t now_ms)
{
  Duplex__Heartbeat hb = DUPLEX__HEARTBEAT__INIT;

  if (l->state == LINK_CLOSING) {
    if (now_ms - l->closing_ms > SEC_CLOSE_TIMEOUT_MS)
      event_active(l->free_ev, 0, 0);
    return;
  }
  if (now_ms - l->last_tx_ms >= link_heartbeat_ms(l)) {
    hb.nonce = now_ms;
    link_send(l, FRAME_HEARTBEAT, &hb.base);
  }
  if (!l->reading) {
    l->last_rx_ms = now_ms;     /* we are not reading: not the peer's fault */
    return;
  }
  if (now_ms - l->last_rx_ms > l->peer_timeout_ms)
    link_close(l, true, "nothing received for %u ms; the primary is gone or "
               "the network is down", l->peer_timeout_ms);
}

void
link_tick_all(struct secondary *s)
{
  uint64_t now = util_now_ms();
  struct link *l;

  /* link_tick never frees (it defers through free_ev). */
  TAILQ_FOREACH(l, &s->links, entry)
    link_tick(l, now);
}

void
link_free_all(struct secondary *s)
{
  struct link *l;

  while ((l = TAILQ_FIRST(&s->links)) != NULL)
    link_free(l);
}

/* Everything before an in_sync MARK is durable. */
static void
link_mark_done(struct link *l, const struct apply_op *op)
{
  struct link_mark mk;

  memcpy(&mk, op->mem, sizeof mk);
  l->marks_pending--;
  /* A resync that started after the MARK keeps the replica inconsistent;
   * the generation it reached is still this side's. */
  if (identity_sync_done(l->s, mk.have_gen ? &mk.gen : NULL,
                         mk.resyncs == l->resyncs,
                         mk.handover && mk.resyncs == l->resyncs) == -1) {
    link_refuse(l, EIO, "%s", l->s->st.last_error);
    return;
  }
  if (op->seq == 0)
    return;
  l->acks[l->n_acks++] = op->seq;
  if (l->n_acks == SEC_ACK_BATCH)
    link_flush_acks(l);
  link_kick(l);
}

void
link_apply_done(struct link *l, const struct apply_op *op)
{
  if (op->type == APPLY_MARK) {
    link_mark_done(l, op);
    return;
  }
  if (op->tag == LINK_FETCH_TAG) {
    link_fetch_done(l, op);
    link_kick(l);
    return;
  }
  if (op->type == APPLY_VERIFY) {
    link_verify_done(l, op);
    link_kick(l);
    return;
  }
  l->acks[l->n_acks++] = op->seq;
  if (l->n_acks == SEC_ACK_BATCH)
    link_flush_acks(l);
  /* Flush the batch once this round of completions is over; resume
   * reading if the queue drained below the limit. */
  link_kick(l);
}

void
link_apply_failed(struct link *l, int err, const char *msg)
{
  link_refuse(l, err, "%s", msg);
}
