/* The changed ranges between two snapshots as text: one "OFFSET LENGTH"
 * line per range, or JSON (EBS ListChangedBlocks):
 *   {"from": A, "to": B, "block_size": 4096, "size_bytes": N,
 *    "ranges": [{"offset": O, "length": L}, ...], "changed_bytes": C}
 * Shared by duplex-store diff and duplexctl snapshot diff.
 *
 * And as a diff stream (diffstream.h) another host can apply: the same
 * ranges with the to snapshot's contents, a DATA record for blocks that
 * hold data, a ZERO record for blocks that read as zeros. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffstream.h"
#include "store-internal.h"
#include "util.h"

struct diff_text {
  char *p;
  size_t len, cap;
  bool json;
  uint64_t n, bytes;
};

static void
dt_printf(struct diff_text *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
dt_printf(struct diff_text *d, const char *fmt, ...)
{
  va_list ap;
  int n;

  for (;;) {
    va_start(ap, fmt);
    n = vsnprintf(d->p + d->len, d->cap - d->len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < d->cap - d->len) {
      d->len += (size_t)n;
      return;
    }
    d->cap = d->cap * 2 + (size_t)(n > 0 ? n : 0) + 256;
    d->p = realloc(d->p, d->cap);
    if (!d->p)
      abort();
  }
}

static int
dt_range(uint64_t start, uint64_t count, void *arg)
{
  struct diff_text *d = arg;

  if (d->json)
    dt_printf(d, "%s\n    {\"offset\": %" PRIu64 ", \"length\": %" PRIu64
              "}", d->n ? "," : "", start * STORE_BLOCK,
              count * STORE_BLOCK);
  else
    dt_printf(d, "%" PRIu64 " %" PRIu64 "\n", start * STORE_BLOCK,
              count * STORE_BLOCK);
  d->n++;
  d->bytes += count * STORE_BLOCK;
  return 0;
}

int
store_diff_text(struct store *s, uint64_t a, uint64_t b, bool json,
                char **out, size_t *outlen, char *err, size_t errlen)
{
  struct store_map ma, mb;
  struct diff_text d = { .json = json, .cap = 256 };
  int rc;

  *out = NULL;
  *outlen = 0;
  if ((rc = store_map_resolve(s, a, &ma, err, errlen)) < 0)
    return rc;
  if ((rc = store_map_resolve(s, b, &mb, err, errlen)) < 0) {
    store_map_free(&ma);
    return rc;
  }
  d.p = malloc(d.cap);
  if (!d.p)
    abort();
  d.p[0] = '\0';
  if (json)
    dt_printf(&d, "{\"from\": %" PRIu64 ", \"to\": %" PRIu64 ", "
              "\"block_size\": %u, \"size_bytes\": %" PRIu64 ", "
              "\"ranges\": [", a, b, STORE_BLOCK, mb.blocks * STORE_BLOCK);
  map_diff(&ma, &mb, dt_range, &d);
  if (json)
    dt_printf(&d, "%s], \"changed_bytes\": %" PRIu64 "}\n",
              d.n ? "\n  " : "", d.bytes);
  store_map_free(&ma);
  store_map_free(&mb);
  *out = d.p;
  *outlen = d.len;
  return 0;
}

/* ---- as a bitmap image (a restore's plan) ---- */

struct diff_image {
  uint8_t *img;
  uint64_t bits;
  uint32_t grain;
};

static int
di_range(uint64_t start, uint64_t count, void *arg)
{
  struct diff_image *d = arg;
  uint64_t first = start * STORE_BLOCK / d->grain;
  uint64_t last = ((start + count) * STORE_BLOCK - 1) / d->grain;

  for (uint64_t i = first; i <= last && i < d->bits; i++)
    d->img[i / 8] |= (uint8_t)(1u << (i % 8));
  return 0;
}

int
store_diff_image(struct store *s, uint64_t a, uint64_t b, uint64_t size,
                 uint32_t grain, uint8_t **out, size_t *outlen, char *err,
                 size_t errlen)
{
  struct store_map ma, mb;
  struct diff_image d = { .grain = grain };
  size_t len;
  int rc;

  *out = NULL;
  *outlen = 0;
  if (grain == 0 || grain % STORE_BLOCK != 0) {
    snprintf(err, errlen, "grain %" PRIu32 " is not a multiple of %u",
             grain, STORE_BLOCK);
    return -EINVAL;
  }
  if ((rc = store_map_resolve(s, a, &ma, err, errlen)) < 0)
    return rc;
  if ((rc = store_map_resolve(s, b, &mb, err, errlen)) < 0) {
    store_map_free(&ma);
    return rc;
  }
  d.bits = (size + grain - 1) / grain;
  len = (size_t)((d.bits + 63) / 64 * 8);
  d.img = calloc(1, len ? len : 8);
  if (!d.img)
    abort();
  map_diff(&ma, &mb, di_range, &d);
  store_map_free(&ma);
  store_map_free(&mb);
  *out = d.img;
  *outlen = len;
  return 0;
}

/* ---- as a diff stream ---- */

struct diff_stream {
  struct store *s;
  const struct store_map *to;
  uint64_t to_id;
  struct diffstream_enc *enc;
  store_stream_fn fn;
  void *arg;
  uint8_t *buf;                 /* the pending DATA record's bytes */
  uint64_t data_start, data_blocks;
  uint64_t zero_start, zero_blocks;
  uint64_t clip;                /* blocks both snapshots have */
  struct store_diff_stream_stats *st;
  char *err;
  size_t errlen;
};

static int
ds_send(struct diff_stream *d, const void *buf, size_t len)
{
  int rc = d->fn(buf, len, d->arg);

  if (rc < 0) {
    snprintf(d->err, d->errlen, "cannot write the stream: %s",
             strerror(-rc));
    return rc;
  }
  d->st->stream_bytes += len;
  return 0;
}

static int
ds_flush_data(struct diff_stream *d)
{
  uint8_t pre[DIFFSTREAM_DATA_PRE], post[DIFFSTREAM_DATA_POST];
  uint32_t len = (uint32_t)(d->data_blocks * STORE_BLOCK);
  int rc;

  if (!d->data_blocks)
    return 0;
  if (diffstream_enc_data(d->enc, d->data_start * STORE_BLOCK, d->buf, len,
                          pre, post, d->err, d->errlen) < 0)
    return -EINVAL;
  if ((rc = ds_send(d, pre, sizeof pre)) < 0 ||
      (rc = ds_send(d, d->buf, len)) < 0 ||
      (rc = ds_send(d, post, sizeof post)) < 0)
    return rc;
  d->st->records++;
  d->st->data_bytes += len;
  d->data_blocks = 0;
  return 0;
}

static int
ds_flush_zero(struct diff_stream *d)
{
  uint8_t rec[DIFFSTREAM_ZERO_LEN];
  int rc;

  if (!d->zero_blocks)
    return 0;
  if (diffstream_enc_zero(d->enc, d->zero_start * STORE_BLOCK,
                          d->zero_blocks * STORE_BLOCK, rec, d->err,
                          d->errlen) < 0)
    return -EINVAL;
  if ((rc = ds_send(d, rec, sizeof rec)) < 0)
    return rc;
  d->st->records++;
  d->st->zero_bytes += d->zero_blocks * STORE_BLOCK;
  d->zero_blocks = 0;
  return 0;
}

static int
ds_zero(struct diff_stream *d, uint64_t start, uint64_t n)
{
  int rc;

  if ((rc = ds_flush_data(d)) < 0)
    return rc;
  if (d->zero_blocks && d->zero_start + d->zero_blocks == start) {
    d->zero_blocks += n;
    return 0;
  }
  if ((rc = ds_flush_zero(d)) < 0)
    return rc;
  d->zero_start = start;
  d->zero_blocks = n;
  return 0;
}

static int
ds_data(struct diff_stream *d, uint64_t block, const struct store_hash *h)
{
  int rc;

  if ((rc = ds_flush_zero(d)) < 0)
    return rc;
  if (d->data_blocks && (d->data_start + d->data_blocks != block ||
                         d->data_blocks == DIFFSTREAM_MAX_DATA / STORE_BLOCK)
      && (rc = ds_flush_data(d)) < 0)
    return rc;
  if (!d->data_blocks)
    d->data_start = block;
  if ((rc = store_read_blob(d->s, h, d->buf + d->data_blocks * STORE_BLOCK,
                            d->err, d->errlen)) < 0) {
    char sub[600];
    snprintf(sub, sizeof sub, "snapshot %" PRIu64 ", offset %" PRIu64
             ": %s", d->to_id, block * STORE_BLOCK, d->err);
    snprintf(d->err, d->errlen, "%s", sub);
    return rc;
  }
  d->data_blocks++;
  return 0;
}

/* The hashes of map m from block b on (NULL: zeros), and for how many
 * blocks from b on that answer holds (b < m->blocks). */
static const struct store_hash *
ds_at(const struct store_map *m, uint64_t b, uint64_t *len)
{
  uint32_t lo = 0, hi = m->n_runs;

  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (m->runs[mid].start + m->runs[mid].count <= b)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < m->n_runs && m->runs[lo].start <= b) {
    *len = m->runs[lo].start + m->runs[lo].count - b;
    return &m->runs[lo].hashes[b - m->runs[lo].start];
  }
  *len = (lo < m->n_runs ? m->runs[lo].start : m->blocks) - b;
  return NULL;
}

/* Blocks [start, start + count) of the to snapshot as records. */
static int
ds_range(struct diff_stream *d, uint64_t start, uint64_t count)
{
  uint64_t pos = start, end = start + count, len, n;
  int rc;

  while (pos < end) {
    const struct store_hash *h = ds_at(d->to, pos, &len);
    n = MIN(len, end - pos);
    if (!h) {
      if ((rc = ds_zero(d, pos, n)) < 0)
        return rc;
    } else {
      for (uint64_t k = 0; k < n; k++)
        if ((rc = ds_data(d, pos + k, &h[k])) < 0)
          return rc;
    }
    pos += n;
  }
  return 0;
}

static int
ds_changed(uint64_t start, uint64_t count, void *arg)
{
  struct diff_stream *d = arg;

  /* Past the end of the to snapshot nothing is sent; past the end of the
   * from snapshot everything is (below). */
  if (start >= d->clip)
    return 0;
  return ds_range(d, start, MIN(count, d->clip - start));
}

int
store_diff_stream(struct store *s, uint64_t a, uint64_t b, store_stream_fn fn,
                  void *arg, struct store_diff_stream_stats *st, char *err,
                  size_t errlen)
{
  struct store_map ma = { 0 }, mb = { 0 };
  struct diffstream_header h = { .version = DIFFSTREAM_VERSION,
                                 .block_size = STORE_BLOCK };
  struct diff_stream d = { .s = s, .to = &mb, .to_id = b, .fn = fn,
                           .arg = arg, .st = st, .err = err,
                           .errlen = errlen };
  const struct manifest *m;
  uint8_t hdr[DIFFSTREAM_HEADER_LEN], end[DIFFSTREAM_END_LEN];
  int rc;

  memset(st, 0, sizeof *st);
  if (a && (rc = store_map_resolve(s, a, &ma, err, errlen)) < 0)
    return rc;
  if ((rc = store_map_resolve(s, b, &mb, err, errlen)) < 0)
    goto out;
  if ((rc = store_manifest(s, b, &m, err, errlen)) < 0)
    goto out;
  h.to_id = b;
  h.to_created_ns = m->created_ns;
  h.volume_size = mb.blocks * STORE_BLOCK;
  memcpy(h.to_volume_uuid, m->volume_uuid, 16);
  if (a) {
    if ((rc = store_manifest(s, a, &m, err, errlen)) < 0)
      goto out;
    h.from_id = a;
    h.from_created_ns = m->created_ns;
    h.from_size = ma.blocks * STORE_BLOCK;
    memcpy(h.from_volume_uuid, m->volume_uuid, 16);
  }
  memcpy(h.store_uuid, store_config(s)->uuid, 16);
  if (diffstream_enc_new(&h, hdr, &d.enc, err, errlen) < 0) {
    char sub[600];
    snprintf(sub, sizeof sub, "%s: snapshot %" PRIu64 ": %s", store_desc(s),
             b, err);
    snprintf(err, errlen, "%s", sub);
    rc = -EINVAL;
    goto out;
  }
  d.buf = malloc(DIFFSTREAM_MAX_DATA);
  if (!d.buf)
    abort();
  if ((rc = ds_send(&d, hdr, sizeof hdr)) < 0)
    goto out;
  /* What differs where both have blocks; all of what only b has. */
  d.clip = MIN(ma.blocks, mb.blocks);
  if (a && (rc = map_diff(&ma, &mb, ds_changed, &d)) < 0)
    goto out;
  if (mb.blocks > ma.blocks &&
      (rc = ds_range(&d, ma.blocks, mb.blocks - ma.blocks)) < 0)
    goto out;
  if ((rc = ds_flush_data(&d)) < 0 || (rc = ds_flush_zero(&d)) < 0)
    goto out;
  if (diffstream_enc_end(d.enc, end, err, errlen) < 0) {
    rc = -EINVAL;
    goto out;
  }
  rc = ds_send(&d, end, sizeof end);

out:
  free(d.buf);
  diffstream_enc_free(d.enc);
  store_map_free(&ma);
  store_map_free(&mb);
  return rc;
}
