/* A snapshot of a store as an NBD block source (nbd-export.h): its block
 * map resolved once, blob reads through the store (one range read per block),
 * zeros for every block the map does not name.  Every call into the store
 * holds the source's lock, so that a caller sharing the store with other
 * threads can share the lock with them. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-export.h"
#include "store.h"

struct snap_source {
  struct store *store;
  pthread_mutex_t *lock;        /* the caller's, or own_lock */
  pthread_mutex_t own_lock;
  bool own;
  uint64_t id;
  uint64_t blocks;              /* ceil(size / STORE_BLOCK) */
  struct store_map map;         /* data runs only, sorted */
  struct nbd_export_source src;
};

/* The first run that ends after block b (n_runs if none). */
static uint32_t
snap_source_find(const struct snap_source *ss, uint64_t b)
{
  uint32_t lo = 0, hi = ss->map.n_runs;

  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const struct snap_run *r = &ss->map.runs[mid];
    if (r->start + r->count <= b)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int
snap_source_read(void *arg, uint64_t off, uint32_t len, void *buf, char *err,
                 size_t errlen)
{
  struct snap_source *ss = arg;
  uint8_t *out = buf, block[STORE_BLOCK];
  uint64_t pos = off, end = off + len;
  uint32_t i = snap_source_find(ss, off / STORE_BLOCK);
  char sub[512];
  int rc;

  while (pos < end) {
    uint64_t b = pos / STORE_BLOCK, in = pos % STORE_BLOCK;
    const struct snap_run *r = i < ss->map.n_runs ? &ss->map.runs[i] : NULL;
    uint64_t n;

    if (r == NULL || b < r->start) {
      /* A gap in the map: zeros up to the next run. */
      uint64_t stop = r != NULL ? r->start * STORE_BLOCK : end;
      n = (stop < end ? stop : end) - pos;
      memset(out + (pos - off), 0, n);
      pos += n;
      continue;
    }
    n = STORE_BLOCK - in;
    if (n > end - pos)
      n = end - pos;
    pthread_mutex_lock(ss->lock);
    if (n == STORE_BLOCK)
      rc = store_read_blob(ss->store, &r->hashes[b - r->start],
                           out + (pos - off), sub, sizeof sub);
    else
      rc = store_read_blob(ss->store, &r->hashes[b - r->start], block, sub,
                           sizeof sub);
    pthread_mutex_unlock(ss->lock);
    if (rc < 0) {
      snprintf(err, errlen, "snapshot %" PRIu64 ": block at offset %" PRIu64
               ": %s", ss->id, b * STORE_BLOCK, sub);
      return rc;
    }
    if (n != STORE_BLOCK)
      memcpy(out + (pos - off), block + in, n);
    pos += n;
    if (b + 1 == r->start + r->count)
      i++;
  }
  return 0;
}

/* Stretches of whole blocks: each data run, each gap between them.  The
 * last one is cut at the export's end (a size that is not a multiple of
 * the block size). */
static int
snap_source_extents(void *arg, uint64_t off, uint64_t len,
                    nbd_export_extent_fn fn, void *fnarg, char *err,
                    size_t errlen)
{
  struct snap_source *ss = arg;
  uint64_t b = off / STORE_BLOCK;
  uint64_t end = (off + len + STORE_BLOCK - 1) / STORE_BLOCK;
  uint32_t i = snap_source_find(ss, b);
  int rc;

  (void)err;
  (void)errlen;
  if (end > ss->blocks)
    end = ss->blocks;
  while (b < end) {
    const struct snap_run *r = i < ss->map.n_runs ? &ss->map.runs[i] : NULL;
    uint64_t stop, bytes;
    bool zero;

    if (r == NULL || b < r->start) {
      stop = r != NULL && r->start < ss->blocks ? r->start : ss->blocks;
      zero = true;
    } else {
      stop = r->start + r->count;
      if (stop > ss->blocks)
        stop = ss->blocks;
      zero = false;
      i++;
    }
    bytes = (stop - b) * STORE_BLOCK;
    if (stop * STORE_BLOCK > ss->src.size)
      bytes = ss->src.size - b * STORE_BLOCK;
    if ((rc = fn(b * STORE_BLOCK, bytes, zero, fnarg)) != 0)
      return rc;
    b = stop;
  }
  return 0;
}

int
snap_source_open(struct store *s, uint64_t id, pthread_mutex_t *lock,
                 struct snap_source **out, char *err, size_t errlen)
{
  struct snap_source *ss;
  const struct manifest *m;
  int rc;

  *out = NULL;
  ss = calloc(1, sizeof *ss);
  if (ss == NULL) {
    snprintf(err, errlen, "snapshot %" PRIu64 ": out of memory", id);
    return -ENOMEM;
  }
  if (lock == NULL) {
    pthread_mutex_init(&ss->own_lock, NULL);
    ss->own = true;
    lock = &ss->own_lock;
  }
  ss->lock = lock;
  ss->store = s;
  ss->id = id;
  pthread_mutex_lock(lock);
  rc = store_manifest(s, id, &m, err, errlen);
  if (rc == 0) {
    ss->src.size = m->size_bytes;
    rc = store_map_resolve(s, id, &ss->map, err, errlen);
  }
  pthread_mutex_unlock(lock);
  if (rc < 0) {
    snap_source_close(ss);
    return rc;
  }
  ss->blocks = (ss->src.size + STORE_BLOCK - 1) / STORE_BLOCK;
  ss->src.read = snap_source_read;
  ss->src.extents = snap_source_extents;
  ss->src.arg = ss;
  *out = ss;
  return 0;
}

void
snap_source_close(struct snap_source *ss)
{
  if (ss == NULL)
    return;
  store_map_free(&ss->map);
  if (ss->own)
    pthread_mutex_destroy(&ss->own_lock);
  free(ss);
}

const struct nbd_export_source *
snap_source_get(const struct snap_source *ss)
{
  return &ss->src;
}
