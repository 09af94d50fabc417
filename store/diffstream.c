/* Diff streams (docs/STORE.md, "Diff streams"): encoder and resumable
 * decoder, no I/O.  All integers little-endian.  Each DATA and ZERO
 * record carries a CRC-32C of itself, so a damaged record is named by its
 * offset and never handed out; the END record carries the SHA-256 of
 * every byte before its digest, so a stream cut short, with a record
 * missing, repeated or reordered, or damaged anywhere, is refused. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crc32c.h"
#include "diffstream.h"
#include "util.h"

static const char MAGIC[8] = "DXDIFFST";

/* ---- little-endian fields ---- */

static void
put_le(uint8_t *p, uint64_t v, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
get_le(const uint8_t *p, unsigned n)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < n; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* ---- SHA-256 of the whole stream ---- */

static EVP_MD_CTX *
sha_new(void)
{
  EVP_MD_CTX *c = EVP_MD_CTX_new();

  if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1)
    abort();                    /* out of memory */
  return c;
}

static void
sha_update(EVP_MD_CTX *c, const void *p, size_t n)
{
  if (EVP_DigestUpdate(c, p, n) != 1)
    abort();
}

static void
sha_final(EVP_MD_CTX *c, uint8_t out[32])
{
  unsigned int n = 32;

  if (EVP_DigestFinal_ex(c, out, &n) != 1 || n != 32)
    abort();
}

/* ---- header ---- */

static bool
is_pow2(uint64_t v)
{
  return v && !(v & (v - 1));
}

int
diffstream_header_check(const struct diffstream_header *h, char *err,
                        size_t errlen)
{
  if (h->version != DIFFSTREAM_VERSION) {
    snprintf(err, errlen, "version %" PRIu32 "; this duplex-store reads "
             "version %u", h->version, DIFFSTREAM_VERSION);
    return -1;
  }
  if (!is_pow2(h->block_size) || h->block_size < 512 ||
      h->block_size > DIFFSTREAM_MAX_DATA) {
    snprintf(err, errlen, "block size %" PRIu32 " is not a power of two "
             "between 512 and %u", h->block_size, DIFFSTREAM_MAX_DATA);
    return -1;
  }
  if (h->volume_size == 0 || h->volume_size % h->block_size ||
      h->volume_size > DIFFSTREAM_MAX_VOLUME) {
    snprintf(err, errlen, "volume size %" PRIu64 " is not a positive "
             "multiple of the block size %" PRIu32 " up to %llu",
             h->volume_size, h->block_size, DIFFSTREAM_MAX_VOLUME);
    return -1;
  }
  if (h->from_size % h->block_size || h->from_size > DIFFSTREAM_MAX_VOLUME) {
    snprintf(err, errlen, "size %" PRIu64 " of the from snapshot is not a "
             "multiple of the block size %" PRIu32 " up to %llu",
             h->from_size, h->block_size, DIFFSTREAM_MAX_VOLUME);
    return -1;
  }
  if (h->to_id == 0) {
    snprintf(err, errlen, "the to snapshot's id is 0");
    return -1;
  }
  if (h->from_id == 0 && h->from_size != 0) {
    snprintf(err, errlen, "a stream from an empty volume (from id 0) gives "
             "the from size %" PRIu64 ", not 0", h->from_size);
    return -1;
  }
  return 0;
}

void
diffstream_header_encode(const struct diffstream_header *h,
                         uint8_t out[DIFFSTREAM_HEADER_LEN])
{
  memcpy(out, MAGIC, 8);
  put_le(out + 8, h->version, 4);
  put_le(out + 12, h->block_size, 4);
  put_le(out + 16, h->volume_size, 8);
  put_le(out + 24, h->from_size, 8);
  put_le(out + 32, h->from_id, 8);
  put_le(out + 40, h->to_id, 8);
  put_le(out + 48, h->from_created_ns, 8);
  put_le(out + 56, h->to_created_ns, 8);
  memcpy(out + 64, h->store_uuid, 16);
  memcpy(out + 80, h->from_volume_uuid, 16);
  memcpy(out + 96, h->to_volume_uuid, 16);
  put_le(out + 112, crc32c(0, out, 112), 4);
}

int
diffstream_header_parse(const uint8_t *buf, size_t len,
                        struct diffstream_header *h, char *err, size_t errlen)
{
  char sub[200];

  memset(h, 0, sizeof *h);
  if (len < 12 || memcmp(buf, MAGIC, 8) != 0) {
    snprintf(err, errlen, "not a duplex diff stream (it does not start "
             "with \"DXDIFFST\")");
    return -1;
  }
  /* The version first: another version may lay out the rest differently. */
  h->version = (uint32_t)get_le(buf + 8, 4);
  if (h->version != DIFFSTREAM_VERSION) {
    snprintf(err, errlen, "diff stream version %" PRIu32 "; this "
             "duplex-store reads version %u", h->version, DIFFSTREAM_VERSION);
    return -1;
  }
  if (len < DIFFSTREAM_HEADER_LEN) {
    snprintf(err, errlen, "diff stream header cut short: %zu of %u bytes",
             len, DIFFSTREAM_HEADER_LEN);
    return -1;
  }
  if (crc32c(0, buf, 112) != (uint32_t)get_le(buf + 112, 4)) {
    snprintf(err, errlen, "diff stream header damaged (checksum mismatch)");
    return -1;
  }
  h->block_size = (uint32_t)get_le(buf + 12, 4);
  h->volume_size = get_le(buf + 16, 8);
  h->from_size = get_le(buf + 24, 8);
  h->from_id = get_le(buf + 32, 8);
  h->to_id = get_le(buf + 40, 8);
  h->from_created_ns = get_le(buf + 48, 8);
  h->to_created_ns = get_le(buf + 56, 8);
  memcpy(h->store_uuid, buf + 64, 16);
  memcpy(h->from_volume_uuid, buf + 80, 16);
  memcpy(h->to_volume_uuid, buf + 96, 16);
  if (diffstream_header_check(h, sub, sizeof sub) < 0) {
    snprintf(err, errlen, "diff stream header: %s", sub);
    return -1;
  }
  return 0;
}

/* ---- extents: the same rules for both sides ---- */

static const char *
kind_name(int kind)
{
  return kind == DIFFSTREAM_DATA ? "DATA" : "ZERO";
}

/* A record of kind over [off, off + len) at stream byte `at`, after
 * records that ended at volume offset `next`. */
static int
check_extent(const struct diffstream_header *h, uint64_t next, int kind,
             uint64_t off, uint64_t len, uint64_t at, char *err,
             size_t errlen)
{
  const char *k = kind_name(kind);

  if (len == 0) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": %s record at offset %"
             PRIu64 " has length 0", at, k, off);
    return -1;
  }
  if (off % h->block_size || len % h->block_size) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": %s record at offset %"
             PRIu64 ", length %" PRIu64 ": not aligned to the block size %"
             PRIu32, at, k, off, len, h->block_size);
    return -1;
  }
  if (kind == DIFFSTREAM_DATA && len > DIFFSTREAM_MAX_DATA) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": DATA record at offset %"
             PRIu64 " claims %" PRIu64 " bytes, more than the %u a record "
             "may hold", at, off, len, DIFFSTREAM_MAX_DATA);
    return -1;
  }
  if (off > h->volume_size || len > h->volume_size - off) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": %s record at offset %"
             PRIu64 ", length %" PRIu64 ": outside the volume of %" PRIu64
             " bytes", at, k, off, len, h->volume_size);
    return -1;
  }
  if (off < next) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": %s record at offset %"
             PRIu64 ": overlaps or precedes the record before it (which "
             "ended at %" PRIu64 ")", at, k, off, next);
    return -1;
  }
  if (h->from_id == 0 && off != next) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": %s record at offset %"
             PRIu64 ": a stream from an empty volume describes every "
             "block, but %" PRIu64 " to %" PRIu64 " is missing", at, k, off,
             next, off);
    return -1;
  }
  return 0;
}

static int
check_complete(const struct diffstream_header *h, uint64_t next, uint64_t at,
               char *err, size_t errlen)
{
  if (h->from_id == 0 && next != h->volume_size) {
    snprintf(err, errlen, "stream byte %" PRIu64 ": END record after %"
             PRIu64 " of the volume's %" PRIu64 " bytes: a stream from an "
             "empty volume describes every block", at, next,
             h->volume_size);
    return -1;
  }
  return 0;
}

/* ---- encoder ---- */

struct diffstream_enc {
  struct diffstream_header hdr;
  EVP_MD_CTX *sha;
  uint64_t bytes;               /* sent so far */
  uint64_t next;                /* end of the last record in the volume */
  uint64_t records, data_bytes;
  bool ended;
};

int
diffstream_enc_new(const struct diffstream_header *h,
                   uint8_t out[DIFFSTREAM_HEADER_LEN],
                   struct diffstream_enc **e, char *err, size_t errlen)
{
  struct diffstream_enc *n;

  *e = NULL;
  if (diffstream_header_check(h, err, errlen) < 0)
    return -1;
  n = calloc(1, sizeof *n);
  if (!n)
    abort();
  n->hdr = *h;
  n->sha = sha_new();
  diffstream_header_encode(h, out);
  sha_update(n->sha, out, DIFFSTREAM_HEADER_LEN);
  n->bytes = DIFFSTREAM_HEADER_LEN;
  *e = n;
  return 0;
}

void
diffstream_enc_free(struct diffstream_enc *e)
{
  if (!e)
    return;
  EVP_MD_CTX_free(e->sha);
  free(e);
}

static int
enc_usable(const struct diffstream_enc *e, char *err, size_t errlen)
{
  if (e->ended) {
    snprintf(err, errlen, "diff stream: a record after the END record");
    return -1;
  }
  return 0;
}

int
diffstream_enc_data(struct diffstream_enc *e, uint64_t offset,
                    const void *data, uint32_t len,
                    uint8_t pre[DIFFSTREAM_DATA_PRE],
                    uint8_t post[DIFFSTREAM_DATA_POST], char *err,
                    size_t errlen)
{
  uint32_t crc;

  if (enc_usable(e, err, errlen) < 0 ||
      check_extent(&e->hdr, e->next, DIFFSTREAM_DATA, offset, len, e->bytes,
                   err, errlen) < 0)
    return -1;
  pre[0] = DIFFSTREAM_DATA;
  put_le(pre + 1, offset, 8);
  put_le(pre + 9, len, 4);
  crc = crc32c(crc32c(0, pre, DIFFSTREAM_DATA_PRE), data, len);
  put_le(post, crc, 4);
  sha_update(e->sha, pre, DIFFSTREAM_DATA_PRE);
  sha_update(e->sha, data, len);
  sha_update(e->sha, post, DIFFSTREAM_DATA_POST);
  e->bytes += DIFFSTREAM_DATA_PRE + (uint64_t)len + DIFFSTREAM_DATA_POST;
  e->next = offset + len;
  e->records++;
  e->data_bytes += len;
  return 0;
}

int
diffstream_enc_zero(struct diffstream_enc *e, uint64_t offset, uint64_t len,
                    uint8_t out[DIFFSTREAM_ZERO_LEN], char *err,
                    size_t errlen)
{
  if (enc_usable(e, err, errlen) < 0 ||
      check_extent(&e->hdr, e->next, DIFFSTREAM_ZERO, offset, len, e->bytes,
                   err, errlen) < 0)
    return -1;
  out[0] = DIFFSTREAM_ZERO;
  put_le(out + 1, offset, 8);
  put_le(out + 9, len, 8);
  put_le(out + 17, crc32c(0, out, 17), 4);
  sha_update(e->sha, out, DIFFSTREAM_ZERO_LEN);
  e->bytes += DIFFSTREAM_ZERO_LEN;
  e->next = offset + len;
  e->records++;
  return 0;
}

int
diffstream_enc_end(struct diffstream_enc *e, uint8_t out[DIFFSTREAM_END_LEN],
                   char *err, size_t errlen)
{
  if (enc_usable(e, err, errlen) < 0 ||
      check_complete(&e->hdr, e->next, e->bytes, err, errlen) < 0)
    return -1;
  out[0] = DIFFSTREAM_END;
  put_le(out + 1, e->records, 8);
  put_le(out + 9, e->data_bytes, 8);
  sha_update(e->sha, out, 17);
  sha_final(e->sha, out + 17);
  e->bytes += DIFFSTREAM_END_LEN;
  e->ended = true;
  return 0;
}

/* ---- decoder ---- */

enum dec_state { DEC_HEADER, DEC_RECORDS, DEC_DONE, DEC_FAILED };

struct diffstream_dec {
  enum dec_state state;
  struct diffstream_header hdr;
  EVP_MD_CTX *sha;
  /* The item (header or record) being gathered when the input split it:
   * at most DIFFSTREAM_DATA_PRE + DIFFSTREAM_MAX_DATA + 4 bytes. */
  uint8_t *buf;
  size_t have, cap;
  uint64_t bytes;               /* stream bytes of the items completed */
  uint64_t next;                /* end of the last record in the volume */
  uint64_t records, data_bytes;
  char err[512];                /* why it failed (DEC_FAILED) */
};

struct diffstream_dec *
diffstream_dec_new(void)
{
  struct diffstream_dec *d = calloc(1, sizeof *d);

  if (!d)
    abort();
  d->sha = sha_new();
  return d;
}

void
diffstream_dec_free(struct diffstream_dec *d)
{
  if (!d)
    return;
  EVP_MD_CTX_free(d->sha);
  free(d->buf);
  free(d);
}

const struct diffstream_header *
diffstream_dec_header(const struct diffstream_dec *d)
{
  return d->state == DEC_HEADER ? NULL : &d->hdr;
}

uint64_t
diffstream_dec_bytes(const struct diffstream_dec *d)
{
  return d->bytes + d->have;
}

/* The first `need` bytes of the current item, contiguous: in place when
 * nothing of it is buffered and the input holds them all (nothing is
 * taken from the input until the item is complete), else gathered into
 * d->buf.  NULL: the input ran out, all of it taken into the buffer. */
static const uint8_t *
dec_gather(struct diffstream_dec *d, const uint8_t *in, size_t len,
           size_t *used, size_t need)
{
  size_t n;

  if (d->have == 0 && len - *used >= need)
    return in + *used;
  if (d->have >= need)
    return d->buf;
  if (need > d->cap) {
    d->cap = MAX(need, MIN(2 * d->cap, (size_t)DIFFSTREAM_DATA_PRE +
                           DIFFSTREAM_MAX_DATA + DIFFSTREAM_DATA_POST));
    d->buf = realloc(d->buf, d->cap);
    if (!d->buf)
      abort();
  }
  n = MIN(need - d->have, len - *used);
  memcpy(d->buf + d->have, in + *used, n);
  d->have += n;
  *used += n;
  return d->have == need ? d->buf : NULL;
}

/* The item of n bytes at p is complete: hash the first `hashed` bytes of
 * it, and take it from the input if it was read in place. */
static void
dec_done(struct diffstream_dec *d, const uint8_t *p, size_t n, size_t hashed,
         size_t *used)
{
  sha_update(d->sha, p, hashed);
  if (d->have)
    d->have = 0;
  else
    *used += n;
  d->bytes += n;
}

static enum diffstream_event
dec_fail(struct diffstream_dec *d, char *err, size_t errlen)
{
  d->state = DEC_FAILED;
  d->have = 0;
  snprintf(err, errlen, "%s", d->err);
  return DIFFSTREAM_ERROR;
}

static enum diffstream_event
dec_header(struct diffstream_dec *d, const uint8_t *in, size_t len,
           size_t *used, char *err, size_t errlen)
{
  const uint8_t *p = dec_gather(d, in, len, used, 12);

  if (!p)
    return DIFFSTREAM_NEED;
  /* Refused on the magic and version alone, not after 116 bytes of
   * something else. */
  if ((memcmp(p, MAGIC, 8) != 0 || get_le(p + 8, 4) != DIFFSTREAM_VERSION) &&
      diffstream_header_parse(p, 12, &d->hdr, d->err, sizeof d->err) < 0)
    return dec_fail(d, err, errlen);
  p = dec_gather(d, in, len, used, DIFFSTREAM_HEADER_LEN);
  if (!p)
    return DIFFSTREAM_NEED;
  if (diffstream_header_parse(p, DIFFSTREAM_HEADER_LEN, &d->hdr, d->err,
                              sizeof d->err) < 0)
    return dec_fail(d, err, errlen);
  dec_done(d, p, DIFFSTREAM_HEADER_LEN, DIFFSTREAM_HEADER_LEN, used);
  d->state = DEC_RECORDS;
  return DIFFSTREAM_HEADER;
}

static enum diffstream_event
dec_data(struct diffstream_dec *d, const uint8_t *in, size_t len,
         size_t *used, struct diffstream_rec *rec, char *err, size_t errlen)
{
  const uint8_t *p = dec_gather(d, in, len, used, DIFFSTREAM_DATA_PRE);
  uint64_t off, n, at = d->bytes;
  size_t total;

  if (!p)
    return DIFFSTREAM_NEED;
  off = get_le(p + 1, 8);
  n = get_le(p + 9, 4);
  /* The length before anything is gathered for it: bounded memory. */
  if (n == 0 || n > DIFFSTREAM_MAX_DATA || n % d->hdr.block_size) {
    check_extent(&d->hdr, d->next, DIFFSTREAM_DATA, off, n, at, d->err,
                 sizeof d->err);
    return dec_fail(d, err, errlen);
  }
  total = DIFFSTREAM_DATA_PRE + (size_t)n + DIFFSTREAM_DATA_POST;
  p = dec_gather(d, in, len, used, total);
  if (!p)
    return DIFFSTREAM_NEED;
  if (crc32c(0, p, total - 4) != (uint32_t)get_le(p + total - 4, 4)) {
    snprintf(d->err, sizeof d->err, "stream byte %" PRIu64 ": DATA record "
             "for offset %" PRIu64 " (%" PRIu64 " bytes) is damaged: "
             "checksum mismatch", at, off, n);
    return dec_fail(d, err, errlen);
  }
  if (check_extent(&d->hdr, d->next, DIFFSTREAM_DATA, off, n, at, d->err,
                   sizeof d->err) < 0)
    return dec_fail(d, err, errlen);
  rec->kind = DIFFSTREAM_DATA;
  rec->offset = off;
  rec->length = n;
  rec->data = p + DIFFSTREAM_DATA_PRE;
  dec_done(d, p, total, total, used);
  d->next = off + n;
  d->records++;
  d->data_bytes += n;
  return DIFFSTREAM_RECORD;
}

static enum diffstream_event
dec_zero(struct diffstream_dec *d, const uint8_t *in, size_t len,
         size_t *used, struct diffstream_rec *rec, char *err, size_t errlen)
{
  const uint8_t *p = dec_gather(d, in, len, used, DIFFSTREAM_ZERO_LEN);
  uint64_t off, n, at = d->bytes;

  if (!p)
    return DIFFSTREAM_NEED;
  off = get_le(p + 1, 8);
  n = get_le(p + 9, 8);
  if (crc32c(0, p, 17) != (uint32_t)get_le(p + 17, 4)) {
    snprintf(d->err, sizeof d->err, "stream byte %" PRIu64 ": ZERO record "
             "for offset %" PRIu64 " (%" PRIu64 " bytes) is damaged: "
             "checksum mismatch", at, off, n);
    return dec_fail(d, err, errlen);
  }
  if (check_extent(&d->hdr, d->next, DIFFSTREAM_ZERO, off, n, at, d->err,
                   sizeof d->err) < 0)
    return dec_fail(d, err, errlen);
  rec->kind = DIFFSTREAM_ZERO;
  rec->offset = off;
  rec->length = n;
  rec->data = NULL;
  dec_done(d, p, DIFFSTREAM_ZERO_LEN, DIFFSTREAM_ZERO_LEN, used);
  d->next = off + n;
  d->records++;
  return DIFFSTREAM_RECORD;
}

static enum diffstream_event
dec_end(struct diffstream_dec *d, const uint8_t *in, size_t len,
        size_t *used, char *err, size_t errlen)
{
  const uint8_t *p = dec_gather(d, in, len, used, DIFFSTREAM_END_LEN);
  uint8_t sum[32];
  uint64_t records, data_bytes, at = d->bytes;

  if (!p)
    return DIFFSTREAM_NEED;
  records = get_le(p + 1, 8);
  data_bytes = get_le(p + 9, 8);
  sha_update(d->sha, p, 17);
  sha_final(d->sha, sum);
  if (memcmp(sum, p + 17, 32) != 0) {
    snprintf(d->err, sizeof d->err, "stream byte %" PRIu64 ": the "
             "checksum over the stream (SHA-256, END record) does not "
             "match: the stream is damaged", at);
    return dec_fail(d, err, errlen);
  }
  if (records != d->records || data_bytes != d->data_bytes) {
    snprintf(d->err, sizeof d->err, "stream byte %" PRIu64 ": the END "
             "record counts %" PRIu64 " records and %" PRIu64 " data bytes, "
             "the stream held %" PRIu64 " and %" PRIu64, at, records,
             data_bytes, d->records, d->data_bytes);
    return dec_fail(d, err, errlen);
  }
  if (check_complete(&d->hdr, d->next, at, d->err, sizeof d->err) < 0)
    return dec_fail(d, err, errlen);
  dec_done(d, p, DIFFSTREAM_END_LEN, 0, used);
  d->state = DEC_DONE;
  return DIFFSTREAM_DONE;
}

enum diffstream_event
diffstream_dec_feed(struct diffstream_dec *d, const void *buf, size_t len,
                    size_t *used, struct diffstream_rec *rec, char *err,
                    size_t errlen)
{
  const uint8_t *in = buf;
  const uint8_t *p;

  *used = 0;
  switch (d->state) {
  case DEC_FAILED:
    snprintf(err, errlen, "%s", d->err);
    return DIFFSTREAM_ERROR;
  case DEC_DONE:
    if (len == 0)
      return DIFFSTREAM_NEED;
    snprintf(d->err, sizeof d->err, "stream byte %" PRIu64 ": bytes after "
             "the END record", d->bytes);
    return dec_fail(d, err, errlen);
  case DEC_HEADER:
    return len ? dec_header(d, in, len, used, err, errlen) : DIFFSTREAM_NEED;
  case DEC_RECORDS:
    break;
  }
  if (len == 0)
    return DIFFSTREAM_NEED;
  p = dec_gather(d, in, len, used, 1);
  if (!p)
    return DIFFSTREAM_NEED;     /* not reached: len > 0 */
  switch (p[0]) {
  case DIFFSTREAM_DATA:
    return dec_data(d, in, len, used, rec, err, errlen);
  case DIFFSTREAM_ZERO:
    return dec_zero(d, in, len, used, rec, err, errlen);
  case DIFFSTREAM_END:
    return dec_end(d, in, len, used, err, errlen);
  default:
    snprintf(d->err, sizeof d->err, "stream byte %" PRIu64 ": unknown "
             "record type 0x%02x: the stream is damaged", d->bytes, p[0]);
    return dec_fail(d, err, errlen);
  }
}

int
diffstream_dec_finish(struct diffstream_dec *d, char *err, size_t errlen)
{
  const char *where;

  switch (d->state) {
  case DEC_DONE:
    return 0;
  case DEC_FAILED:
    snprintf(err, errlen, "%s", d->err);
    return -1;
  case DEC_HEADER:
    where = "inside the header";
    break;
  default:
    where = d->have ? "inside a record" : "before the END record";
    break;
  }
  snprintf(d->err, sizeof d->err, "the stream is cut short: it ends after "
           "%" PRIu64 " bytes, %s", d->bytes + d->have, where);
  if (d->have && d->state == DEC_RECORDS)
    snprintf(d->err + strlen(d->err), sizeof d->err - strlen(d->err),
             " starting at stream byte %" PRIu64, d->bytes);
  d->state = DEC_FAILED;
  d->have = 0;
  snprintf(err, errlen, "%s", d->err);
  return -1;
}
