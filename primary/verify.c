/* Online verify: compare block hashes of both sides while replication goes
 * on, report the blocks that differ and, with repair, resync them.
 *
 * The volume is walked in chunks.  Each chunk is read under its range lock
 * and its VERIFY request is put on the stream before the lock is released,
 * so the secondary hashes exactly the state the primary read: every write
 * before the read precedes the request on the stream, every write after it
 * follows it (the secondary answers a VERIFY only when everything before it
 * is on the replica). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "json.h"
#include "internal.h"
#include "log.h"

#define VERIFY_CHUNK (1024u * 1024)
#define VERIFY_WINDOW 4
#define VERIFY_MAX_RANGES 256

struct verify_range {
  uint64_t off, len;
};

struct verify {
  struct primary *p;
  enum verify_state state;
  bool repair;
  uint64_t gen;                 /* bumped when a run ends */
  uint64_t cursor, done_bytes, oos_bytes;
  unsigned inflight;
  uint64_t started_ms, finished_ms;
  struct verify_range ranges[VERIFY_MAX_RANGES];
  size_t n_ranges;
  bool ranges_truncated;
  char error[256];
};

struct vchunk {
  struct repl_op op;            /* first: the link hands it back */
  struct verify *v;
  uint64_t gen;
  uint64_t off;
  uint32_t len;
  char *buf;
  uint64_t *hashes;
  struct range_lock *lock;
  struct aio_op aio;
};

struct verify *
verify_new(struct primary *p)
{
  struct verify *v = calloc(1, sizeof *v);
  if (!v)
    abort();
  v->p = p;
  return v;
}

void
verify_free(struct verify *v)
{
  free(v);
}

static void verify_kick(struct verify *v);

static void
verify_finish(struct verify *v, enum verify_state st, const char *why)
{
  char oos[32];
  if (v->state != VERIFY_RUNNING)
    return;
  v->state = st;
  v->gen++;
  v->finished_ms = util_now_ms();
  util_format_bytes(v->oos_bytes, oos, sizeof oos);
  if (st == VERIFY_DONE) {
    log_info("primary: verify finished: %" PRIu64 " bytes compared, %s out "
             "of sync in %zu range(s)%s", v->done_bytes, oos, v->n_ranges,
             v->repair && v->oos_bytes ? "; resyncing them" : "");
    if (v->repair && v->oos_bytes && repl_connected(v->p->repl))
      resync_ensure(v->p->resync);
  } else {
    snprintf(v->error, sizeof v->error, "%s", why);
    log_warn("primary: verify aborted after %" PRIu64 " bytes: %s",
             v->done_bytes, why);
  }
}

static void
verify_record(struct verify *v, uint64_t off, uint64_t len)
{
  struct verify_range *last = v->n_ranges ? &v->ranges[v->n_ranges - 1]
                                          : NULL;
  v->oos_bytes += len;
  if (v->repair)
    bitmap_set_range(v->p->oos, off, len);
  if (last && last->off + last->len == off) {
    last->len += len;
    return;
  }
  if (v->n_ranges == VERIFY_MAX_RANGES) {
    v->ranges_truncated = true;
    return;
  }
  v->ranges[v->n_ranges].off = off;
  v->ranges[v->n_ranges].len = len;
  v->n_ranges++;
}

static void
vchunk_free(struct vchunk *c)
{
  free(c->buf);
  free(c->hashes);
  free(c);
}

static void
vchunk_result(struct repl_op *op, bool ok)
{
  struct vchunk *c = (struct vchunk *)op;
  struct verify *v = c->v;
  const Duplex__VerifyResult *res = op->verify_result;
  uint32_t i, n = c->len / BDEV_ALIGN;

  v->inflight--;
  if (c->gen != v->gen) {
    vchunk_free(c);
    return;
  }
  if (!ok || !res) {
    vchunk_free(c);
    verify_finish(v, VERIFY_ABORTED, "the link to the secondary was lost");
    return;
  }
  if (res->error || res->n_hashes != n) {
    char why[160];
    snprintf(why, sizeof why, "the secondary could not hash %" PRIu64
             "+%u: %s", c->off, c->len,
             res->error ? strerror((int)res->error) : "wrong hash count");
    vchunk_free(c);
    verify_finish(v, VERIFY_ABORTED, why);
    return;
  }
  for (i = 0; i < n; i++)
    if (res->hashes[i] != c->hashes[i])
      verify_record(v, c->off + (uint64_t)i * BDEV_ALIGN, BDEV_ALIGN);
  v->done_bytes += c->len;
  vchunk_free(c);
  verify_kick(v);
}

static void
vchunk_read(struct aio_op *aio, long res)
{
  struct vchunk *c = aio->opaque;
  struct verify *v = c->v;
  struct primary *p = v->p;
  struct range_lock *l = c->lock;
  uint32_t i;

  c->lock = NULL;
  if (res < 0 || c->gen != v->gen) {
    lock_release(p->locks, l);
    v->inflight--;
    if (res < 0 && c->gen == v->gen) {
      char why[160];
      snprintf(why, sizeof why, "local read at %" PRIu64 ": %s", c->off,
               strerror((int)-res));
      verify_finish(v, VERIFY_ABORTED, why);
    }
    vchunk_free(c);
    return;
  }
  c->hashes = calloc(c->len / BDEV_ALIGN, sizeof *c->hashes);
  if (!c->hashes)
    abort();
  for (i = 0; i < c->len / BDEV_ALIGN; i++)
    c->hashes[i] = hash_block(c->buf + (size_t)i * BDEV_ALIGN, BDEV_ALIGN);
  free(c->buf);
  c->buf = NULL;
  c->op.acked = vchunk_result;
  if (repl_send_verify(p->repl, &c->op, c->off, c->len) == -1) {
    lock_release(p->locks, l);
    v->inflight--;
    vchunk_free(c);
    verify_finish(v, VERIFY_ABORTED, "the link to the secondary was lost");
    return;
  }
  lock_release(p->locks, l);
}

static void
vchunk_locked(struct range_lock *l, void *opaque)
{
  struct vchunk *c = opaque;
  struct primary *p = c->v->p;
  (void)l;
  c->buf = util_alloc_aligned(c->len);
  aio_pread(p->aio, &c->aio, p->vol.fd, c->buf, c->len, c->off, vchunk_read,
            c);
}

static void
verify_kick(struct verify *v)
{
  struct primary *p = v->p;

  while (v->state == VERIFY_RUNNING && v->inflight < VERIFY_WINDOW &&
         v->cursor < p->vol.size) {
    struct vchunk *c = calloc(1, sizeof *c);
    bool granted;
    if (!c)
      abort();
    c->v = v;
    c->gen = v->gen;
    c->off = v->cursor;
    c->len = (uint32_t)MIN((uint64_t)VERIFY_CHUNK, p->vol.size - v->cursor);
    v->cursor += c->len;
    v->inflight++;
    c->lock = lock_acquire(p->locks, c->off, c->off + c->len, vchunk_locked,
                           c, &granted);
    if (granted)
      vchunk_locked(c->lock, c);
  }
  if (v->state == VERIFY_RUNNING && v->inflight == 0 &&
      v->cursor >= p->vol.size)
    verify_finish(v, VERIFY_DONE, NULL);
}

int
verify_start(struct verify *v, bool repair, char *err, size_t errlen)
{
  if (v->state == VERIFY_RUNNING) {
    snprintf(err, errlen, "a verify is already running (%" PRIu64 " of %"
             PRIu64 " bytes done)", v->done_bytes, v->p->vol.size);
    return -1;
  }
  if (!repl_connected(v->p->repl)) {
    snprintf(err, errlen, "not connected to the secondary (link: %s); "
             "verify needs the replica", repl_link_state(v->p->repl));
    return -1;
  }
  v->state = VERIFY_RUNNING;
  v->repair = repair;
  v->cursor = v->done_bytes = v->oos_bytes = 0;
  v->n_ranges = 0;
  v->ranges_truncated = false;
  v->error[0] = '\0';
  v->started_ms = util_now_ms();
  v->finished_ms = 0;
  log_info("primary: verify%s of %" PRIu64 " bytes started",
           repair ? " --repair" : "", v->p->vol.size);
  verify_kick(v);
  return 0;
}

void
verify_link_lost(struct verify *v)
{
  verify_finish(v, VERIFY_ABORTED, "the link to the secondary was lost");
}

const char *
verify_state_name(enum verify_state s)
{
  switch (s) {
  case VERIFY_IDLE: return "idle";
  case VERIFY_RUNNING: return "running";
  case VERIFY_DONE: return "done";
  case VERIFY_ABORTED: return "aborted";
  }
  return "?";
}

void
verify_status_json(const struct verify *v, struct json *j)
{
  size_t i;
  json_obj_begin(j, "verify");
  json_str(j, "state", verify_state_name(v->state));
  json_bool(j, "repair", v->repair);
  json_u64(j, "done_bytes", v->done_bytes);
  json_u64(j, "total_bytes", v->p->vol.size);
  json_double(j, "percent", 100.0 * v->done_bytes / v->p->vol.size);
  json_u64(j, "out_of_sync_bytes", v->oos_bytes);
  json_bool(j, "ranges_truncated", v->ranges_truncated);
  if (v->error[0])
    json_str(j, "error", v->error);
  else
    json_null(j, "error");
  json_obj_end(j);
  json_u64(j, "verify_out_of_sync_bytes", v->oos_bytes);
  /* "off+len,off+len,..." keeps the JSON writer flat. */
  {
    struct evbuffer *b = evbuffer_new();
    char *s;
    size_t n;
    for (i = 0; i < v->n_ranges; i++)
      evbuffer_add_printf(b, "%s%" PRIu64 "+%" PRIu64, i ? "," : "",
                          v->ranges[i].off, v->ranges[i].len);
    n = evbuffer_get_length(b);
    s = malloc(n + 1);
    if (!s)
      abort();
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    json_str(j, "verify_ranges", s);
    free(s);
    evbuffer_free(b);
  }
}

enum verify_state
verify_state(const struct verify *v)
{
  return v->state;
}
