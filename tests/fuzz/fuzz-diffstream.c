/* libFuzzer target for the diff stream decoder (store/diffstream.c): any
 * bytes (a damaged or hostile stream) must decode or be refused, never
 * crash, read past a piece or hold more than one record.
 *
 * The first input byte chooses how the rest is cut into pieces (every
 * piece an exact-size copy) and whether to patch in a valid header CRC
 * (so the records behind it are reached).  The same bytes are decoded
 * whole and in pieces: both must agree on every record and on the result.
 * Every record handed out must lie inside the volume, block aligned, after
 * the one before; a stream accepted is encoded again from its records and
 * must come out byte for byte the same (the encoding is canonical). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "diffstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct rec {
  int kind;
  uint64_t offset, length;
  uint32_t crc;                 /* of the data */
};

struct result {
  int rc;                       /* 0 complete, -1 refused */
  struct diffstream_header hdr;
  bool header;
  struct rec *r;
  size_t n, cap;
  uint8_t *again;               /* re-encoded stream (when complete) */
  size_t again_len;
};

static void
append(struct result *res, const void *p, size_t n, size_t *cap)
{
  if (res->again_len + n > *cap) {
    *cap = (res->again_len + n) * 2 + 256;
    res->again = realloc(res->again, *cap);
    if (!res->again)
      abort();
  }
  memcpy(res->again + res->again_len, p, n);
  res->again_len += n;
}

/* Decode in pieces of `step` bytes (0: whole), re-encoding as it goes. */
static void
decode(const uint8_t *buf, size_t len, size_t step, struct result *res)
{
  struct diffstream_dec *d = diffstream_dec_new();
  struct diffstream_enc *e = NULL;
  size_t pos = 0, cap = 0;
  uint64_t next = 0;
  char err[512];

  memset(res, 0, sizeof *res);
  res->rc = -1;
  while (pos < len) {
    size_t clen = step && step < len - pos ? step : len - pos, off = 0;
    uint8_t *piece = malloc(clen);
    if (!piece)
      abort();
    memcpy(piece, buf + pos, clen);
    while (off < clen) {
      struct diffstream_rec rec;
      size_t used;
      enum diffstream_event ev = diffstream_dec_feed(d, piece + off,
                                                     clen - off, &used, &rec,
                                                     err, sizeof err);
      if (used > clen - off)
        __builtin_trap();
      off += used;
      if (ev == DIFFSTREAM_ERROR) {
        if (!err[0])
          __builtin_trap();
        free(piece);
        goto out;
      }
      if (ev == DIFFSTREAM_NEED) {
        if (off != clen)
          __builtin_trap();
        break;
      }
      if (ev == DIFFSTREAM_HEADER) {
        uint8_t h[DIFFSTREAM_HEADER_LEN];
        res->hdr = *diffstream_dec_header(d);
        res->header = true;
        if (diffstream_enc_new(&res->hdr, h, &e, err, sizeof err) != 0)
          __builtin_trap();     /* the decoder accepted it */
        append(res, h, sizeof h, &cap);
      } else if (ev == DIFFSTREAM_RECORD) {
        const struct diffstream_header *h = &res->hdr;
        if (!res->header || rec.length == 0 ||
            rec.offset % h->block_size || rec.length % h->block_size ||
            rec.offset < next || rec.offset + rec.length > h->volume_size ||
            rec.offset + rec.length < rec.offset)
          __builtin_trap();
        if (res->n == res->cap) {
          res->cap = res->cap ? 2 * res->cap : 64;
          res->r = realloc(res->r, res->cap * sizeof *res->r);
          if (!res->r)
            abort();
        }
        if (rec.kind == DIFFSTREAM_DATA) {
          uint8_t pre[DIFFSTREAM_DATA_PRE], post[DIFFSTREAM_DATA_POST];
          if (rec.length > DIFFSTREAM_MAX_DATA || !rec.data ||
              diffstream_enc_data(e, rec.offset, rec.data,
                                  (uint32_t)rec.length, pre, post, err,
                                  sizeof err) != 0)
            __builtin_trap();
          append(res, pre, sizeof pre, &cap);
          append(res, rec.data, rec.length, &cap);
          append(res, post, sizeof post, &cap);
          res->r[res->n].crc = crc32c(0, rec.data, rec.length);
        } else {
          uint8_t z[DIFFSTREAM_ZERO_LEN];
          if (rec.kind != DIFFSTREAM_ZERO ||
              diffstream_enc_zero(e, rec.offset, rec.length, z, err,
                                  sizeof err) != 0)
            __builtin_trap();
          append(res, z, sizeof z, &cap);
        }
        res->r[res->n].kind = rec.kind;
        res->r[res->n].offset = rec.offset;
        res->r[res->n].length = rec.length;
        res->n++;
        next = rec.offset + rec.length;
      } else {
        uint8_t end[DIFFSTREAM_END_LEN];
        if (ev != DIFFSTREAM_DONE ||
            diffstream_enc_end(e, end, err, sizeof err) != 0)
          __builtin_trap();
        append(res, end, sizeof end, &cap);
      }
    }
    free(piece);
    pos += clen;
  }
  res->rc = diffstream_dec_finish(d, err, sizeof err);
out:
  diffstream_enc_free(e);
  diffstream_dec_free(d);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const size_t steps[8] = { 1, 2, 3, 7, 13, 64, 500, 4096 };
  struct result whole, pieces;
  uint8_t *buf;
  size_t len;
  unsigned mode;

  if (size < 1 || size > (4u << 20))
    return 0;
  mode = data[0];
  len = size - 1;
  buf = malloc(len ? len : 1);
  if (!buf)
    abort();
  if (len)
    memcpy(buf, data + 1, len);
  /* mode bit 7: a valid magic, version and header CRC */
  if ((mode & 0x80) && len >= DIFFSTREAM_HEADER_LEN) {
    uint32_t crc;
    memcpy(buf, "DXDIFFST\x01\0\0\0", 12);
    crc = crc32c(0, buf, 112);
    for (int i = 0; i < 4; i++)
      buf[112 + i] = (uint8_t)(crc >> (8 * i));
  }
  decode(buf, len, 0, &whole);
  decode(buf, len, steps[mode & 7], &pieces);
  if (whole.rc != pieces.rc || whole.n != pieces.n ||
      whole.header != pieces.header ||
      (whole.header && memcmp(&whole.hdr, &pieces.hdr, sizeof whole.hdr)))
    __builtin_trap();
  for (size_t i = 0; i < whole.n; i++)
    if (whole.r[i].kind != pieces.r[i].kind ||
        whole.r[i].offset != pieces.r[i].offset ||
        whole.r[i].length != pieces.r[i].length ||
        whole.r[i].crc != pieces.r[i].crc)
      __builtin_trap();
  if (whole.rc == 0 &&
      (whole.again_len != len || memcmp(whole.again, buf, len) != 0))
    __builtin_trap();
  free(whole.r);
  free(whole.again);
  free(pieces.r);
  free(pieces.again);
  free(buf);
  return 0;
}
