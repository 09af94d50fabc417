/* The primary's replication link: takes a verified TLS stream from the
 * connector (common/connector.c: it dials the secondary, --peer, or
 * accepts it, --listen), handshakes, sends operations in order and
 * matches acknowledgements.
 *
 * States (enum repl_state): IDLE (the connector is at work) -> HELLO ->
 * [BITMAP ->] CONNECTED, and back to IDLE on any error.  A lost link is
 * dialled again after 100 ms, then at doubling intervals up to
 * --connect-interval while attempts fail (a refused one waits longer).
 * When listening, a newly verified connection replaces the current one
 * (the secondary restarted before this side noticed the old one die).
 *
 * Liveness: from HELLO on, both sides send a heartbeat whenever they have
 * been quiet for a quarter of --peer-timeout (the secondary learns it from
 * the hello), and drop a link silent for the whole timeout.
 *
 * Epochs: every op carries the epoch it was sent in.  An epoch is closed
 * (the counter moves on) when a client is answered for an op of it, and
 * also before an op is sent that overlaps an op already in the current
 * epoch, because the secondary may apply the ops of one epoch in any order. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "evbuf.h"
#include "frame.h"
#include "internal.h"
#include "connector.h"
#include "log.h"
#include "tls-stream.h"

#define REPL_HEARTBEAT_MAX_MS 2000
#define REPL_REFUSED_RETRY_MS 5000

struct repl {
  struct primary *p;
  struct repl_events ev;         /* what the agent does on link changes */
  enum repl_state state;
  struct connector *conn;
  struct tls_stream *ts;         /* HELLO.. */
  struct event *timer;           /* heartbeats, timeouts */
  uint64_t state_since_ms;
  uint64_t last_rx_ms, last_tx_ms;
  unsigned redial_min_ms;        /* the next redial waits at least this */
  char peer_desc[300];
  char last_error[512];

  /* ops sent and not yet acknowledged, indexed by seq & (cap - 1) */
  struct repl_op **ring;
  uint64_t cap;
  uint64_t head_seq, next_seq;
  uint64_t inflight_bytes;

  struct epochs epochs;

  struct repl_counters ctr;

  /* handshake outcome */
  enum gen_decision decision;
  bool have_decision;
  bool split_brain;
  bool bitmap_full;              /* after the bitmap: full sync instead */
  uint8_t *bitmap_image;         /* REPL_BITMAP: the peer's bitmap */
  uint64_t bitmap_len;
};

static void repl_timer_cb(evutil_socket_t fd, short what, void *opaque);
static void repl_drop(struct repl *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *
repl_state_name(enum repl_state s)
{
  switch (s) {
  case REPL_IDLE: return "idle";
  case REPL_HELLO: return "hello";
  case REPL_BITMAP: return "bitmap-exchange";
  case REPL_CONNECTED: return "connected";
  }
  return "?";
}

static void
repl_set_state(struct repl *r, enum repl_state s)
{
  if (r->state != s)
    log_debug("primary: link to %s: %s -> %s", r->peer_desc,
              repl_state_name(r->state), repl_state_name(s));
  r->state = s;
  r->state_since_ms = util_now_ms();
}

static void repl_stream_cb(struct tls_stream *ts, const char *addr,
                           const char *cn, void *arg);

struct repl *
repl_new(struct primary *p, const struct repl_events *ev, char *err,
         size_t errlen)
{
  struct repl *r = calloc(1, sizeof *r);
  struct timeval tv = { 0, 100 * 1000 };
  struct connector_config cc = {
    .listen = p->cfg.listen,
    .peer = p->cfg.peer,
    .listen_fd = -1,
    .tls = &p->cfg.tls,
    .who = "primary",
    .handshake_timeout_ms = p->cfg.peer_timeout_ms,
    .retry_max_ms = p->cfg.connect_interval_ms,
  };
  char sub[256];

  if (!r)
    abort();
  r->p = p;
  r->ev = *ev;
  epoch_init(&r->epochs);
  r->head_seq = r->next_seq = 1;
  r->cap = 1024;
  r->ring = calloc(r->cap, sizeof *r->ring);
  if (!r->ring)
    abort();
  if (p->cfg.listen) {
    snprintf(r->peer_desc, sizeof r->peer_desc, "(%s)", p->cfg.tls.peer_name);
    cc.listen_fd = util_listen(&p->cfg.peer, sub, sizeof sub);
    if (cc.listen_fd == -1) {
      snprintf(err, errlen, "--listen %s:%s: %s", p->cfg.peer.host,
               p->cfg.peer.port, sub);
      goto fail;
    }
  } else {
    snprintf(r->peer_desc, sizeof r->peer_desc, "%s:%s (%s)",
             p->cfg.peer.host, p->cfg.peer.port, p->cfg.tls.peer_name);
  }
  if (connector_new(p->base, &cc, repl_stream_cb, r, &r->conn, err,
                    errlen) == -1)
    goto fail;
  r->timer = event_new(p->base, -1, EV_PERSIST, repl_timer_cb, r);
  if (!r->timer)
    abort();
  event_add(r->timer, &tv);
  return r;

fail:
  epoch_fini(&r->epochs);
  free(r->ring);
  free(r);
  return NULL;
}

/* ---- pending ops ---- */

static void
ring_grow(struct repl *r)
{
  uint64_t ncap = r->cap * 2, s;
  struct repl_op **nring = calloc(ncap, sizeof *nring);
  if (!nring)
    abort();
  for (s = r->head_seq; s < r->next_seq; s++)
    nring[s & (ncap - 1)] = r->ring[s & (r->cap - 1)];
  free(r->ring);
  r->ring = nring;
  r->cap = ncap;
}

static void
ring_push(struct repl *r, struct repl_op *op)
{
  if (r->next_seq - r->head_seq == r->cap)
    ring_grow(r);
  op->seq = r->next_seq++;
  r->ring[op->seq & (r->cap - 1)] = op;
  r->inflight_bytes += op->bytes;
  /* Every op that will be acknowledged is counted here, and only here, so
   * ops_acked never passes ops_sent. */
  r->ctr.ops_sent++;
}

/* Fail every pending op (the link is gone).  Callbacks may send nothing:
 * the state is no longer CONNECTED. */
static void
ring_fail_all(struct repl *r)
{
  uint64_t s, end = r->next_seq;
  for (s = r->head_seq; s < end; s++) {
    struct repl_op *op = r->ring[s & (r->cap - 1)];
    if (!op)
      continue;
    r->ring[s & (r->cap - 1)] = NULL;
    r->inflight_bytes -= op->bytes;
    op->acked(op, false);
  }
  r->head_seq = r->next_seq;
  r->inflight_bytes = 0;
}

/* The op of seq still waiting for its answer, or NULL. */
static struct repl_op *
ring_find(const struct repl *r, uint64_t seq)
{
  return seq >= r->head_seq && seq < r->next_seq
             ? r->ring[seq & (r->cap - 1)] : NULL;
}

static int
ring_ack(struct repl *r, uint64_t seq)
{
  struct repl_op *op;
  if (seq < r->head_seq || seq >= r->next_seq)
    return -1;
  op = r->ring[seq & (r->cap - 1)];
  if (!op)
    return -1;
  r->ring[seq & (r->cap - 1)] = NULL;
  while (r->head_seq < r->next_seq && !r->ring[r->head_seq & (r->cap - 1)])
    r->head_seq++;
  r->inflight_bytes -= op->bytes;
  r->ctr.ops_acked++;
  op->acked(op, true);
  return 0;
}

/* ---- epochs (epoch.c) ---- */

void
repl_close_epoch(struct repl *r, uint64_t epoch)
{
  epoch_close(&r->epochs, epoch);
}

/* ---- sending ---- */

/* A payload up to this size is copied behind its header (and released at
 * once): a referenced 4 KiB write would keep its request, its aligned
 * buffer and an output chain of its own alive until encrypted, about
 * 2.5 times its size, and an async buffer full of them that much more. */
#define REPL_COPY_MAX (16u * 1024)

/* The payload, if any, is referenced: ref_done(payload, len, ref_arg) runs
 * once it has been encrypted (or dropped with the connection), or before
 * this returns when the payload is small enough to be copied. */
static void
repl_send_frame_ref(struct repl *r, enum frame_type type,
                    const ProtobufCMessage *msg, const void *payload,
                    uint32_t payload_len, repl_ref_done_fn ref_done,
                    void *ref_arg)
{
  struct evbuffer *out = tls_stream_output(r->ts);
  size_t n = frame_packed_len(msg);
  uint8_t stackbuf[256];
  uint8_t *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);

  if (!buf)
    abort();
  n = frame_pack(type, msg, payload_len, buf);
  if (evbuf_add_small(out, buf, n) == -1)
    abort();
  if (payload_len > 0 && payload_len <= REPL_COPY_MAX) {
    if (evbuf_add_small(out, payload, payload_len) == -1)
      abort();
    ref_done(payload, payload_len, ref_arg);
  } else if (payload_len > 0) {
    evbuffer_add_reference(out, payload, payload_len, ref_done, ref_arg);
  }
  if (buf != stackbuf)
    free(buf);
  r->ctr.bytes_sent += n + payload_len;
  r->last_tx_ms = util_now_ms();
}

/* A frame without payload. */
static void
repl_send_frame(struct repl *r, enum frame_type type,
                const ProtobufCMessage *msg)
{
  repl_send_frame_ref(r, type, msg, NULL, 0, NULL, NULL);
}

int
repl_send_write_ref(struct repl *r, struct repl_op *op, uint64_t off,
                    uint32_t len, const void *data, uint32_t flags,
                    repl_ref_done_fn ref_done, void *ref_arg)
{
  Duplex__Write m = DUPLEX__WRITE__INIT;

  if (r->state != REPL_CONNECTED)
    return -1;
  op->epoch = epoch_admit(&r->epochs, off, len);
  ring_push(r, op);
  m.seq = op->seq;
  m.epoch = op->epoch;
  m.offset = off;
  m.length = len;
  m.flags = flags;
  repl_send_frame_ref(r, FRAME_WRITE, &m.base, data, len, ref_done, ref_arg);
  return 0;
}

int
repl_send_zero(struct repl *r, struct repl_op *op, uint64_t off, uint64_t len,
               uint32_t flags)
{
  Duplex__Zero m = DUPLEX__ZERO__INIT;

  if (r->state != REPL_CONNECTED)
    return -1;
  op->epoch = epoch_admit(&r->epochs, off, len);
  ring_push(r, op);
  m.seq = op->seq;
  m.epoch = op->epoch;
  m.offset = off;
  m.length = len;
  m.flags = flags;
  repl_send_frame(r, FRAME_ZERO, &m.base);
  return 0;
}

int
repl_send_flush(struct repl *r, struct repl_op *op)
{
  Duplex__Flush m = DUPLEX__FLUSH__INIT;

  if (r->state != REPL_CONNECTED)
    return -1;
  op->epoch = r->epochs.current;
  ring_push(r, op);
  m.seq = op->seq;
  m.epoch = op->epoch;
  repl_send_frame(r, FRAME_FLUSH, &m.base);
  /* The secondary drains everything before a flush: a new epoch starts. */
  epoch_advance(&r->epochs);
  return 0;
}

int
repl_send_snapshot(struct repl *r, struct repl_op *op, const char *name,
                   unsigned reason)
{
  Duplex__Snapshot m = DUPLEX__SNAPSHOT__INIT;

  if (r->state != REPL_CONNECTED)
    return -1;
  op->epoch = r->epochs.current;
  op->snapshot_wanted = true;
  op->snapshot_done = NULL;
  ring_push(r, op);
  m.seq = op->seq;
  m.epoch = op->epoch;
  m.name = (char *)name;
  m.reason = reason;
  repl_send_frame(r, FRAME_SNAPSHOT, &m.base);
  /* Writes after it belong to a later epoch: the secondary takes the
   * snapshot between the two. */
  epoch_advance(&r->epochs);
  return 0;
}

int
repl_send_verify(struct repl *r, struct repl_op *op, uint64_t off,
                 uint32_t len)
{
  Duplex__Verify m = DUPLEX__VERIFY__INIT;

  if (r->state != REPL_CONNECTED)
    return -1;
  op->epoch = r->epochs.current;
  op->verify_result = NULL;
  ring_push(r, op);
  m.seq = op->seq;
  m.offset = off;
  m.length = len;
  m.block_size = BDEV_ALIGN;
  repl_send_frame(r, FRAME_VERIFY, &m.base);
  /* Nothing after it may be applied before it has read its blocks. */
  epoch_advance(&r->epochs);
  return 0;
}

int
repl_send_fetch(struct repl *r, struct repl_op *op, uint64_t off,
                uint32_t len, uint64_t snapshot)
{
  Duplex__Fetch m = DUPLEX__FETCH__INIT;

  if (r->state != REPL_CONNECTED)
    return -1;
  /* From a snapshot it is a write on the replica; from the replica a read
   * that nothing after it may overtake. */
  op->epoch = snapshot ? epoch_admit(&r->epochs, off, len)
                       : r->epochs.current;
  op->fetch_wanted = true;
  op->fetch_data = NULL;
  op->fetch_payload = NULL;
  ring_push(r, op);
  m.seq = op->seq;
  m.epoch = op->epoch;
  m.offset = off;
  m.length = len;
  m.snapshot = snapshot;
  repl_send_frame(r, FRAME_FETCH, &m.base);
  if (!snapshot)
    epoch_advance(&r->epochs);
  return 0;
}

int
repl_send_restore_plan(struct repl *r, struct repl_op *op, uint64_t from,
                       uint64_t to)
{
  Duplex__RestorePlan m = DUPLEX__RESTORE_PLAN__INIT;

  if (r->state != REPL_CONNECTED || op->plan_part == NULL)
    return -1;
  op->epoch = r->epochs.current;
  ring_push(r, op);
  m.seq = op->seq;
  m.from = from;
  m.to = to;
  m.grain = bitmap_grain(r->p->oos);
  m.size_bytes = r->p->vol.size;
  repl_send_frame(r, FRAME_RESTORE_PLAN, &m.base);
  return 0;
}

void
repl_send_restore_state(struct repl *r, uint64_t source, uint64_t total,
                        uint64_t done)
{
  Duplex__SyncState m = DUPLEX__SYNC_STATE__INIT;

  if (r->state != REPL_CONNECTED)
    return;
  m.restoring = true;
  m.restore_source = source;
  m.total_bytes = total;
  m.done_bytes = done;
  m.out_of_sync_bytes = total > done ? total - done : 0;
  repl_send_frame(r, FRAME_SYNC_STATE, &m.base);
}

void
repl_send_sync_state(struct repl *r, bool in_sync, uint64_t total,
                     uint64_t done, uint64_t oos)
{
  Duplex__SyncState m = DUPLEX__SYNC_STATE__INIT;

  if (r->state != REPL_CONNECTED)
    return;
  m.in_sync = in_sync;
  m.total_bytes = total;
  m.done_bytes = done;
  m.out_of_sync_bytes = oos;
  repl_send_frame(r, FRAME_SYNC_STATE, &m.base);
}

static void
repl_gen_to_msg(const struct gen_ids *gen, Duplex__GenIds *m, uint64_t *hist)
{
  duplex__gen_ids__init(m);
  m->current = gen->current;
  m->bitmap = gen->bitmap;
  memcpy(hist, gen->history, sizeof gen->history);
  m->history = hist;
  m->n_history = GEN_HISTORY;
}

static void
repl_gen_from_msg(const Duplex__GenIds *m, struct gen_ids *gen)
{
  size_t i;
  memset(gen, 0, sizeof *gen);
  if (!m)
    return;
  gen->current = m->current;
  gen->bitmap = m->bitmap;
  for (i = 0; i < m->n_history && i < GEN_HISTORY; i++)
    gen->history[i] = m->history[i];
}

int
repl_send_sync_done(struct repl *r, struct repl_op *op, bool handover)
{
  Duplex__SyncState m = DUPLEX__SYNC_STATE__INIT;
  Duplex__GenIds g;
  uint64_t hist[GEN_HISTORY];

  if (r->state != REPL_CONNECTED)
    return -1;
  op->epoch = r->epochs.current;
  ring_push(r, op);
  m.in_sync = true;
  m.handover = handover;
  m.seq = op->seq;
  repl_gen_to_msg(&r->p->gen, &g, hist);
  m.gen = &g;
  m.decision = (char *)gen_decision_name(r->decision);
  repl_send_frame(r, FRAME_SYNC_STATE, &m.base);
  epoch_advance(&r->epochs);
  return 0;
}

static void
repl_send_hello(struct repl *r)
{
  const struct meta_sb *sb = meta_get(r->p->meta);
  Duplex__Hello m = DUPLEX__HELLO__INIT;
  Duplex__GenIds g;
  uint64_t hist[GEN_HISTORY];
  char host[256];

  if (gethostname(host, sizeof host) == -1)
    strcpy(host, "primary");
  host[sizeof host - 1] = '\0';
  m.proto_version = DUPLEX_PROTO_VERSION;
  m.volume_uuid.data = (uint8_t *)sb->volume_uuid;
  m.volume_uuid.len = 16;
  m.size_bytes = r->p->vol.size;
  m.block_size = BDEV_ALIGN;
  m.mode = r->p->cfg.mode == REPL_SYNC ? DUPLEX__MODE__MODE_SYNC
                                        : DUPLEX__MODE__MODE_ASYNC;
  m.node_name = host;
  repl_gen_to_msg(&r->p->gen, &g, hist);
  m.gen = &g;
  m.bitmap_grain = bitmap_grain(r->p->oos);
  m.peer_timeout_ms = r->p->cfg.peer_timeout_ms;
  m.consistency_points = r->p->cfg.capture == CAPTURE_TAIL;
  repl_send_frame(r, FRAME_HELLO, &m.base);
}

/* ---- connection lifecycle ---- */

static void
repl_close(struct repl *r)
{
  if (r->ts) {
    tls_stream_free(r->ts);
    r->ts = NULL;
  }
}

static void
repl_drop(struct repl *r, const char *fmt, ...)
{
  bool was_connected = r->state == REPL_CONNECTED;
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(r->last_error, sizeof r->last_error, fmt, ap);
  va_end(ap);
  if (was_connected || r->state == REPL_HELLO || r->state == REPL_BITMAP)
    log_warn("primary: link to %s lost: %s; writes continue locally and the "
             "replica is resynced on reconnect", r->peer_desc, r->last_error);
  else
    log_debug("primary: link to %s: %s", r->peer_desc, r->last_error);
  repl_close(r);
  free(r->bitmap_image);
  r->bitmap_image = NULL;
  repl_set_state(r, REPL_IDLE);
  /* The first change the peer does not get after it was connected starts
   * a new generation; attempts that never got that far do not (retried
   * every few hundred ms, each would start another one). */
  if (was_connected)
    r->p->need_new_gen = true;
  if (!r->p->stopping)
    connector_redial(r->conn, r->redial_min_ms);
  r->redial_min_ms = 0;
  epoch_advance(&r->epochs);
  if (was_connected)
    r->ev.lost(r->ev.arg);
  ring_fail_all(r);
  r->ev.progress(r->ev.arg);
}

/* Everything agreed: replicate, and resync what differs. */
static void
repl_connected_begin(struct repl *r, bool full)
{
  repl_set_state(r, REPL_CONNECTED);
  connector_reset_backoff(r->conn);
  r->ctr.connects++;
  r->last_error[0] = '\0';
  r->split_brain = false;
  log_info("primary: connected to secondary %s, mode %s, %s",
           r->peer_desc, r->p->cfg.mode == REPL_SYNC ? "sync" : "async",
           gen_decision_name(r->decision));
  r->ev.connected(r->ev.arg, full);
}

/* The peer will not be overwritten without an operator's decision: stay
 * apart, say why (once per situation), and keep retrying slowly so a
 * resolution on the other side takes effect. */
static int
repl_refuse(struct repl *r, const char *why)
{
  if (strcmp(r->last_error, why) != 0)
    log_error("primary: %s", why);
  r->redial_min_ms = MAX(REPL_REFUSED_RETRY_MS, r->p->cfg.connect_interval_ms);
  repl_drop(r, "%s", why);
  return -1;
}

/* HELLO_REPLY: which way to sync follows from the generation identifiers
 * (common/gen.c).  This side can only be the sync source; a secondary
 * whose changes an operator discarded joins as the target, its bitmap
 * merged into ours. */
static int
repl_decide(struct repl *r, const Duplex__HelloReply *h)
{
  struct gen_ids peer;
  char why[768], mine[17], theirs[17], base[17];
  bool full = false;

  repl_gen_from_msg(h->gen, &peer);
  r->decision = gen_compare(&r->p->gen, &peer);
  r->have_decision = true;
  gen_format(r->p->gen.current, mine);
  gen_format(peer.current, theirs);
  gen_format(peer.bitmap ? peer.bitmap : r->p->gen.bitmap, base);
  switch (r->decision) {
  case GEN_BOTH_FRESH:
  case GEN_SOURCE_FULL:
    full = true;
    break;
  case GEN_NO_SYNC:
  case GEN_SOURCE_BITMAP:
    break;
  case GEN_SPLIT_BRAIN:
  case GEN_TARGET_BITMAP:
    if (!h->discard_local) {
      r->split_brain = r->decision == GEN_SPLIT_BRAIN;
      if (r->split_brain)
        snprintf(why, sizeof why, "split brain with secondary %s: both "
                 "sides wrote since generation %s (ours now %s, theirs %s); "
                 "nothing is overwritten. Run `duplexctl --control SOCKET "
                 "resolve --discard-local` on the side whose changes are to "
                 "be thrown away", r->peer_desc, base, mine, theirs);
      else
        snprintf(why, sizeof why, "secondary %s holds newer data (generation "
                 "%s, ours %s); refusing to overwrite it. Run `duplexctl "
                 "--control SOCKET resolve --discard-local` on the secondary "
                 "to replace its data with ours", r->peer_desc, theirs, mine);
      return repl_refuse(r, why);
    }
    break;
  case GEN_TARGET_FULL:
  case GEN_UNRELATED:
    if (!h->discard_local) {
      snprintf(why, sizeof why, "secondary %s holds %s data (generation "
               "%s, ours %s); refusing to overwrite it. Run `duplexctl "
               "--control SOCKET resolve --discard-local` on the secondary to "
               "replace its data with ours", r->peer_desc,
               r->decision == GEN_UNRELATED ? "unrelated" : "newer", theirs,
               mine);
      return repl_refuse(r, why);
    }
    full = true;
    break;
  }
  if (h->discard_local)
    log_warn("primary: secondary %s discards its own changes (operator's "
             "decision); resyncing it from this side", r->peer_desc);
  if (h->discard_local && h->bitmap_bytes > 0 && h->bitmap_needs_checksums) {
    /* Its bitmap includes the regions it was writing when it crashed as
     * a primary: compare hashes there, as after our own crash. */
    log_info("primary: secondary %s crashed as a primary; the regions it "
             "was writing are compared by checksum", r->peer_desc);
    r->p->crash_recovery = true;
  }
  if (h->bitmap_bytes > 0) {
    /* The secondary's changes follow as BITMAP frames. */
    size_t ours = bitmap_word_count(r->p->oos) * sizeof(uint64_t);
    r->bitmap_full = full || h->bitmap_bytes != ours;
    if (r->bitmap_full && !full)
      log_warn("primary: secondary's bitmap is %" PRIu64 " bytes, ours %zu "
               "(different --bitmap-grain?): syncing everything",
               h->bitmap_bytes, ours);
    r->bitmap_len = h->bitmap_bytes;
    if (!r->bitmap_full) {
      r->bitmap_image = calloc(1, r->bitmap_len);
      if (!r->bitmap_image)
        abort();
    }
    repl_set_state(r, REPL_BITMAP);
    return 0;
  }
  repl_connected_begin(r, full);
  return 0;
}

static int
repl_handle_frame(struct repl *r, struct frame *f)
{
  size_t i;

  /* Heartbeats come from the start of HELLO on, in every state. */
  if (f->type == FRAME_HEARTBEAT) {
    if (!f->m.heartbeat->reply) {
      Duplex__Heartbeat m = DUPLEX__HEARTBEAT__INIT;
      m.nonce = f->m.heartbeat->nonce;
      m.reply = true;
      repl_send_frame(r, FRAME_HEARTBEAT, &m.base);
    }
    return 0;
  }
  switch (r->state) {
  case REPL_HELLO:
    if (f->type == FRAME_ERROR) {
      repl_drop(r, "secondary refused: %s", f->m.error->message);
      return -1;
    }
    if (f->type != FRAME_HELLO_REPLY) {
      repl_drop(r, "expected HELLO_REPLY, got %s", frame_type_name(f->type));
      return -1;
    }
    if (f->m.hello_reply->proto_version != DUPLEX_PROTO_VERSION) {
      repl_drop(r, "secondary speaks protocol version %u, we speak %u",
                f->m.hello_reply->proto_version, DUPLEX_PROTO_VERSION);
      return -1;
    }
    if (f->m.hello_reply->replica_size_bytes < r->p->vol.size) {
      repl_drop(r, "replica is %" PRIu64 " bytes, volume is %" PRIu64,
                f->m.hello_reply->replica_size_bytes, r->p->vol.size);
      return -1;
    }
    return repl_decide(r, f->m.hello_reply);
  case REPL_BITMAP:
    if (f->type != FRAME_BITMAP) {
      repl_drop(r, "expected BITMAP, got %s", frame_type_name(f->type));
      return -1;
    }
    if (!r->bitmap_full) {
      if (f->m.bitmap->offset + f->m.bitmap->length > r->bitmap_len) {
        repl_drop(r, "protocol error: bitmap piece beyond %" PRIu64 " bytes",
                  r->bitmap_len);
        return -1;
      }
      memcpy(r->bitmap_image + f->m.bitmap->offset, f->payload,
             f->m.bitmap->length);
    }
    if (f->m.bitmap->last) {
      if (!r->bitmap_full)
        bitmap_or_words(r->p->oos, (const uint64_t *)r->bitmap_image,
                        r->bitmap_len / sizeof(uint64_t));
      free(r->bitmap_image);
      r->bitmap_image = NULL;
      repl_connected_begin(r, r->bitmap_full);
    }
    return 0;
  case REPL_CONNECTED:
    switch (f->type) {
    case FRAME_ACK:
      for (i = 0; i < f->m.ack->n_seq; i++)
        if (ring_ack(r, f->m.ack->seq[i]) == -1) {
          repl_drop(r, "protocol error: ack for unknown op %" PRIu64,
                    f->m.ack->seq[i]);
          return -1;
        }
      r->ev.progress(r->ev.arg);
      return r->state == REPL_CONNECTED ? 0 : -1;
    case FRAME_VERIFY_RESULT: {
      uint64_t seq = f->m.verify_result->seq;
      struct repl_op *op = ring_find(r, seq);
      if (!op) {
        repl_drop(r, "protocol error: verify result for unknown op %" PRIu64,
                  seq);
        return -1;
      }
      op->verify_result = f->m.verify_result;
      ring_ack(r, seq);
      return r->state == REPL_CONNECTED ? 0 : -1;
    }
    case FRAME_SNAPSHOT_DONE: {
      uint64_t seq = f->m.snapshot_done->seq;
      struct repl_op *op = ring_find(r, seq);
      if (!op || !op->snapshot_wanted) {
        repl_drop(r, "protocol error: snapshot answer for unknown op %"
                  PRIu64, seq);
        return -1;
      }
      op->snapshot_done = f->m.snapshot_done;
      ring_ack(r, seq);
      return r->state == REPL_CONNECTED ? 0 : -1;
    }
    case FRAME_FETCH_DATA: {
      uint64_t seq = f->m.fetch_data->seq;
      struct repl_op *op = ring_find(r, seq);
      if (!op || !op->fetch_wanted) {
        repl_drop(r, "protocol error: fetched data for unknown op %" PRIu64,
                  seq);
        return -1;
      }
      op->fetch_data = f->m.fetch_data;
      op->fetch_payload = f->payload;
      ring_ack(r, seq);
      return r->state == REPL_CONNECTED ? 0 : -1;
    }
    case FRAME_RESTORE_PLAN_PART: {
      const Duplex__RestorePlanPart *pp = f->m.restore_plan_part;
      struct repl_op *op = ring_find(r, pp->seq);
      if (!op || !op->plan_part) {
        repl_drop(r, "protocol error: restore plan for unknown op %" PRIu64,
                  pp->seq);
        return -1;
      }
      op->plan_part(op, pp, f->payload);
      if (pp->last)
        ring_ack(r, pp->seq);
      return r->state == REPL_CONNECTED ? 0 : -1;
    }
    case FRAME_ERROR:
      repl_drop(r, "secondary reported: %s", f->m.error->message);
      return -1;
    default:
      repl_drop(r, "protocol error: unexpected %s frame",
                frame_type_name(f->type));
      return -1;
    }
  default:
    repl_drop(r, "unexpected frame in state %s", repl_state_name(r->state));
    return -1;
  }
}

static void
repl_read_cb(struct tls_stream *ts, void *opaque)
{
  struct repl *r = opaque;
  struct evbuffer *in = tls_stream_input(ts);
  char err[256];

  r->last_rx_ms = util_now_ms();
  while (r->ts == ts) {
    size_t avail = evbuffer_get_length(in);
    uint8_t hdr[FRAME_HDR_LEN];
    struct frame f;
    size_t total;
    ssize_t n;

    if (avail < FRAME_HDR_LEN)
      return;
    evbuffer_copyout(in, hdr, FRAME_HDR_LEN);
    if (frame_parse_header(hdr, &f, err, sizeof err) == -1) {
      repl_drop(r, "malformed frame from secondary: %s", err);
      return;
    }
    total = FRAME_HDR_LEN + (size_t)f.msg_len + f.payload_len;
    if (avail < total)
      return;
    n = frame_parse(evbuffer_pullup(in, (ssize_t)total), total, &f, err,
                    sizeof err);
    if (n <= 0) {
      repl_drop(r, "malformed frame from secondary: %s",
                n == 0 ? "truncated" : err);
      return;
    }
    r->ctr.bytes_received += (uint64_t)n;
    if (repl_handle_frame(r, &f) == -1) {
      frame_release(&f);
      return;
    }
    frame_release(&f);
    evbuffer_drain(in, (size_t)n);
  }
}

static void
repl_event_cb(struct tls_stream *ts, int what, void *opaque)
{
  struct repl *r = opaque;
  char why[512];

  (void)ts;
  if (what & (TLS_STREAM_ERROR | TLS_STREAM_EOF)) {
    tls_stream_describe(r->ts, why, sizeof why);
    repl_drop(r, "%s", (what & TLS_STREAM_EOF) && !why[0]
                           ? "connection closed by peer" : why);
  }
}

/* The connector has a verified stream to the secondary: say hello.  When
 * listening, it replaces the link this side still holds. */
static void
repl_stream_cb(struct tls_stream *ts, const char *addr, const char *cn,
               void *arg)
{
  struct repl *r = arg;

  if (r->p->stopping) {
    tls_stream_free(ts);
    return;
  }
  if (r->state != REPL_IDLE)
    repl_drop(r, "replaced by a new connection from %s", addr);
  if (connector_listening(r->conn))
    snprintf(r->peer_desc, sizeof r->peer_desc, "%s (%s)", addr, cn);
  r->ts = ts;
  tls_stream_setcb(ts, repl_read_cb, NULL, repl_event_cb, r);
  repl_set_state(r, REPL_HELLO);
  r->last_rx_ms = util_now_ms();
  repl_send_hello(r);
}

/* A heartbeat goes out after this long without sending anything. */
static unsigned
repl_heartbeat_ms(const struct repl *r)
{
  return MIN(REPL_HEARTBEAT_MAX_MS, r->p->cfg.peer_timeout_ms / 4);
}

/* Periodic: reconnect when due, heartbeats, and timeouts in every state. */
static void
repl_timer_cb(evutil_socket_t fd, short what, void *opaque)
{
  struct repl *r = opaque;
  uint64_t now = util_now_ms();

  (void)fd;
  (void)what;
  if (r->p->stopping)
    return;
  switch (r->state) {
  case REPL_IDLE:
    break;
  case REPL_HELLO:
  case REPL_BITMAP:
  case REPL_CONNECTED:
    if (now - r->last_rx_ms > r->p->cfg.peer_timeout_ms) {
      repl_drop(r, "no response for %d s", r->p->cfg.peer_timeout_ms / 1000);
      break;
    }
    if (now - r->last_tx_ms >= repl_heartbeat_ms(r)) {
      Duplex__Heartbeat m = DUPLEX__HEARTBEAT__INIT;
      m.nonce = now;
      repl_send_frame(r, FRAME_HEARTBEAT, &m.base);
    }
    break;
  }
}

void
repl_start(struct repl *r)
{
  repl_set_state(r, REPL_IDLE);
  /* Dialling: the first attempt at once, not at a timer's next tick. */
  connector_start(r->conn);
}

void
repl_shutdown(struct repl *r)
{
  if (r->state != REPL_IDLE || r->ts)
    repl_drop(r, "agent stopping");
  connector_free(r->conn);
  r->conn = NULL;
}

void
repl_free(struct repl *r)
{
  if (!r)
    return;
  repl_close(r);
  r->state = REPL_IDLE;
  ring_fail_all(r);
  if (r->timer)
    event_free(r->timer);
  connector_free(r->conn);
  epoch_fini(&r->epochs);
  free(r->ring);
  free(r);
}

bool
repl_connected(const struct repl *r)
{
  return r->state == REPL_CONNECTED;
}

uint64_t
repl_inflight_bytes(const struct repl *r)
{
  return r->inflight_bytes;
}

void
repl_get_counters(const struct repl *r, struct repl_counters *c)
{
  *c = r->ctr;
}

bool
repl_split_brain(const struct repl *r)
{
  return r->split_brain;
}

const char *
repl_decision(const struct repl *r)
{
  return r->have_decision ? gen_decision_name(r->decision) : NULL;
}

const char *
repl_last_error(const struct repl *r)
{
  if (r->last_error[0])
    return r->last_error;
  return r->conn != NULL ? connector_last_error(r->conn) : NULL;
}

const char *
repl_link_state(const struct repl *r)
{
  if (r->state == REPL_IDLE && r->conn != NULL)
    return connector_state(r->conn);
  return repl_state_name(r->state);
}

int
repl_listen_port(const struct repl *r)
{
  return r->conn != NULL ? connector_port(r->conn) : -1;
}
