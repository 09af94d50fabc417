/* Diff streams (store/diffstream.c): the encoder's bytes compared with an
 * independent encoding written here from docs/STORE.md ("Diff streams");
 * the decoder given a sample stream whole, split at every byte, byte by
 * byte and in odd-sized pieces (each piece an exact-size heap copy, so
 * ASan sees any read past it), every prefix (refused as cut short), every
 * single-bit flip (refused; a flip in a DATA record's bytes names that
 * record's offset and nothing of it is handed out), and streams whose CRCs
 * are right but whose fields are not: extents outside the volume,
 * unaligned, overlapping, out of order, huge lengths (refused from the
 * length field alone), gaps in a stream from an empty volume, bad END
 * records, bytes after the end, bad headers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bytebuf.h"
#include <openssl/evp.h>

#include "crc32c.h"
#include "diffstream.h"

/* ---- an independent encoder (docs/STORE.md) ---- */

/* The CRC-32C of the bytes from `from` on, appended. */
static void
bb_crc_from(struct bb *b, size_t from)
{
  bb_le(b, crc32c(0, b->p + from, b->len - from), 4);
}

static void
raw_header(struct bb *b, const struct diffstream_header *h)
{
  size_t at = b->len;

  bb_bytes(b, "DXDIFFST", 8);
  bb_le(b, h->version, 4);
  bb_le(b, h->block_size, 4);
  bb_le(b, h->volume_size, 8);
  bb_le(b, h->from_size, 8);
  bb_le(b, h->from_id, 8);
  bb_le(b, h->to_id, 8);
  bb_le(b, h->from_created_ns, 8);
  bb_le(b, h->to_created_ns, 8);
  bb_bytes(b, h->store_uuid, 16);
  bb_bytes(b, h->from_volume_uuid, 16);
  bb_bytes(b, h->to_volume_uuid, 16);
  bb_crc_from(b, at);
}

/* A DATA record whose length field says `claimed` and that carries n
 * bytes of data. */
static void
raw_data_claim(struct bb *b, uint64_t off, uint32_t claimed,
               const uint8_t *data, size_t n)
{
  size_t at = b->len;

  bb_le(b, 'D', 1);
  bb_le(b, off, 8);
  bb_le(b, claimed, 4);
  bb_bytes(b, data, n);
  bb_crc_from(b, at);
}

static void
raw_data(struct bb *b, uint64_t off, const uint8_t *data, uint32_t len)
{
  raw_data_claim(b, off, len, data, len);
}

static void
raw_zero(struct bb *b, uint64_t off, uint64_t len)
{
  size_t at = b->len;

  bb_le(b, 'Z', 1);
  bb_le(b, off, 8);
  bb_le(b, len, 8);
  bb_crc_from(b, at);
}

static void
raw_end(struct bb *b, uint64_t records, uint64_t data_bytes)
{
  uint8_t sum[32];
  unsigned int n = 32;

  bb_le(b, 'E', 1);
  bb_le(b, records, 8);
  bb_le(b, data_bytes, 8);
  assert_int_equal(EVP_Digest(b->p, b->len, sum, &n, EVP_sha256(), NULL),
                   1);
  bb_bytes(b, sum, 32);
}

/* ---- the sample stream ---- */

#define BS 512u
#define VOL (16u * BS)

static const struct diffstream_header sample_hdr = {
  .version = DIFFSTREAM_VERSION,
  .block_size = BS,
  .volume_size = VOL,
  .from_size = 12u * BS,
  .from_id = 3,
  .to_id = 7,
  .from_created_ns = 1700000000123456789ull,
  .to_created_ns = 1700000600987654321ull,
  .store_uuid = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
  .from_volume_uuid = { 0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 },
  .to_volume_uuid = { 0xb0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 },
};

struct srec {
  int kind;
  uint64_t off, len;
};

/* DATA 0+2 blocks, ZERO 4+3, DATA 8, DATA 9, ZERO 15 */
static const struct srec sample_recs[] = {
  { 'D', 0, 2 * BS },
  { 'Z', 4 * BS, 3 * BS },
  { 'D', 8 * BS, BS },
  { 'D', 9 * BS, BS },
  { 'Z', 15 * BS, BS },
};
#define N_SAMPLE (sizeof sample_recs / sizeof sample_recs[0])

static uint8_t vol_data[VOL];   /* what DATA records carry, by offset */

static void
init_data(void)
{
  for (size_t i = 0; i < VOL; i++)
    vol_data[i] = (uint8_t)(i * 7 + i / 509 + 1);
}

/* The stream by the independent encoder; *data_at gets each record's
 * stream position (its type byte). */
static void
raw_sample(struct bb *b, size_t data_at[N_SAMPLE])
{
  uint64_t data_bytes = 0;

  init_data();
  raw_header(b, &sample_hdr);
  for (size_t i = 0; i < N_SAMPLE; i++) {
    const struct srec *r = &sample_recs[i];
    if (data_at)
      data_at[i] = b->len;
    if (r->kind == 'D') {
      raw_data(b, r->off, vol_data + r->off, (uint32_t)r->len);
      data_bytes += r->len;
    } else {
      raw_zero(b, r->off, r->len);
    }
  }
  raw_end(b, N_SAMPLE, data_bytes);
}

/* The same stream by the library's encoder. */
static void
enc_sample(struct bb *b)
{
  struct diffstream_enc *e;
  uint8_t hdr[DIFFSTREAM_HEADER_LEN], pre[DIFFSTREAM_DATA_PRE];
  uint8_t post[DIFFSTREAM_DATA_POST], zero[DIFFSTREAM_ZERO_LEN];
  uint8_t end[DIFFSTREAM_END_LEN];
  char err[256];

  init_data();
  assert_int_equal(diffstream_enc_new(&sample_hdr, hdr, &e, err, sizeof err),
                   0);
  bb_bytes(b, hdr, sizeof hdr);
  for (size_t i = 0; i < N_SAMPLE; i++) {
    const struct srec *r = &sample_recs[i];
    if (r->kind == 'D') {
      assert_int_equal(diffstream_enc_data(e, r->off, vol_data + r->off,
                                           (uint32_t)r->len, pre, post, err,
                                           sizeof err), 0);
      bb_bytes(b, pre, sizeof pre);
      bb_bytes(b, vol_data + r->off, r->len);
      bb_bytes(b, post, sizeof post);
    } else {
      assert_int_equal(diffstream_enc_zero(e, r->off, r->len, zero, err,
                                           sizeof err), 0);
      bb_bytes(b, zero, sizeof zero);
    }
  }
  assert_int_equal(diffstream_enc_end(e, end, err, sizeof err), 0);
  bb_bytes(b, end, sizeof end);
  diffstream_enc_free(e);
}

/* ---- decoding in pieces ---- */

#define MAX_GOT 64
struct got {
  bool header;
  struct diffstream_header hdr;
  size_t n;
  struct srec r[MAX_GOT];
  bool data_ok[MAX_GOT];        /* DATA bytes equal vol_data at offset */
  bool done;
  int rc;                       /* 0: complete, -1: refused */
  char err[512];
};

/* Feed buf: a first piece of `first` bytes, then pieces of `step` (each an
 * exact-size heap copy), then finish. */
static int
decode(const uint8_t *buf, size_t len, size_t first, size_t step,
       struct got *g)
{
  struct diffstream_dec *d = diffstream_dec_new();
  size_t pos = 0;

  memset(g, 0, sizeof *g);
  g->rc = -1;
  while (pos < len) {
    size_t clen = pos == 0 ? first : step, off = 0;
    uint8_t *chunk;
    if (clen > len - pos)
      clen = len - pos;
    chunk = malloc(clen ? clen : 1);
    assert_non_null(chunk);
    memcpy(chunk, buf + pos, clen);
    while (off < clen) {
      struct diffstream_rec rec;
      size_t used = 99;
      enum diffstream_event ev =
          diffstream_dec_feed(d, chunk + off, clen - off, &used, &rec,
                              g->err, sizeof g->err);
      assert_true(used <= clen - off);
      off += used;
      if (ev == DIFFSTREAM_ERROR) {
        assert_true(g->err[0] != '\0');
        free(chunk);
        /* refused for good */
        assert_int_equal(diffstream_dec_feed(d, "x", 1, &used, &rec,
                                             g->err, sizeof g->err),
                         DIFFSTREAM_ERROR);
        assert_int_equal(diffstream_dec_finish(d, g->err, sizeof g->err),
                         -1);
        diffstream_dec_free(d);
        return -1;
      }
      if (ev == DIFFSTREAM_NEED) {
        assert_int_equal(off, clen);
        break;
      }
      assert_true(used > 0);
      if (ev == DIFFSTREAM_HEADER) {
        assert_false(g->header);
        assert_non_null(diffstream_dec_header(d));
        g->header = true;
        g->hdr = *diffstream_dec_header(d);
      } else if (ev == DIFFSTREAM_RECORD) {
        assert_true(g->header);
        assert_false(g->done);
        assert_true(g->n < MAX_GOT);
        g->r[g->n].kind = rec.kind;
        g->r[g->n].off = rec.offset;
        g->r[g->n].len = rec.length;
        g->data_ok[g->n] = rec.kind == DIFFSTREAM_ZERO
                               ? rec.data == NULL
                               : rec.offset + rec.length <= VOL &&
                                     memcmp(rec.data, vol_data + rec.offset,
                                            rec.length) == 0;
        g->n++;
      } else {
        assert_int_equal(ev, DIFFSTREAM_DONE);
        g->done = true;
      }
    }
    free(chunk);
    pos += clen;
  }
  if (g->done)
    assert_int_equal(diffstream_dec_bytes(d), len);
  g->rc = diffstream_dec_finish(d, g->err, sizeof g->err);
  assert_int_equal(g->rc == 0, g->done);
  diffstream_dec_free(d);
  return g->rc;
}

static void
assert_sample(const struct got *g)
{
  assert_int_equal(g->rc, 0);
  assert_true(g->header);
  assert_memory_equal(&g->hdr, &sample_hdr, sizeof g->hdr);
  assert_int_equal(g->n, N_SAMPLE);
  for (size_t i = 0; i < N_SAMPLE; i++) {
    assert_int_equal(g->r[i].kind, sample_recs[i].kind);
    assert_int_equal(g->r[i].off, sample_recs[i].off);
    assert_int_equal(g->r[i].len, sample_recs[i].len);
    assert_true(g->data_ok[i]);
  }
}

static void
assert_refused(const uint8_t *buf, size_t len, const char *want)
{
  struct got g;

  if (decode(buf, len, len, len, &g) != -1 || !strstr(g.err, want))
    fail_msg("expected refusal with \"%s\", got rc %d: %s", want, g.rc,
             g.err);
}

/* ---- tests ---- */

static void
test_encoder_matches_doc(void **state)
{
  struct bb raw = { 0 }, enc = { 0 };

  (void)state;
  raw_sample(&raw, NULL);
  enc_sample(&enc);
  assert_int_equal(raw.len, DIFFSTREAM_HEADER_LEN +
                   (DIFFSTREAM_DATA_PRE + 4) * 3 + 4 * BS +
                   DIFFSTREAM_ZERO_LEN * 2 + DIFFSTREAM_END_LEN);
  assert_int_equal(enc.len, raw.len);
  assert_memory_equal(enc.p, raw.p, raw.len);
  free(raw.p);
  free(enc.p);
}

static void
test_roundtrip(void **state)
{
  struct bb b = { 0 };
  struct got g;

  (void)state;
  enc_sample(&b);
  assert_int_equal(decode(b.p, b.len, b.len, b.len, &g), 0);
  assert_sample(&g);
  free(b.p);
}

static void
test_chunk_boundaries(void **state)
{
  static const size_t steps[] = { 1, 2, 3, 7, 13, 64, 511, 1000 };
  struct bb b = { 0 };
  struct got g;

  (void)state;
  enc_sample(&b);
  /* two pieces, cut at every byte */
  for (size_t i = 1; i < b.len; i++) {
    decode(b.p, b.len, i, b.len, &g);
    assert_sample(&g);
  }
  /* byte by byte and other piece sizes, each from several first cuts */
  for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++)
    for (size_t first = 1; first < 40; first += 3) {
      decode(b.p, b.len, first, steps[k], &g);
      assert_sample(&g);
    }
  free(b.p);
}

static void
test_truncated(void **state)
{
  struct bb b = { 0 };
  struct got g;

  (void)state;
  enc_sample(&b);
  for (size_t len = 0; len < b.len; len++) {
    /* whole, and byte by byte */
    for (int pass = 0; pass < 2; pass++) {
      assert_int_equal(decode(b.p, len, pass ? 1 : len, pass ? 1 : len, &g),
                       -1);
      if (!strstr(g.err, "cut short"))
        fail_msg("prefix of %zu bytes: %s", len, g.err);
      assert_false(g.done);
      /* what was handed out is the start of the stream, unharmed */
      assert_true(g.n <= N_SAMPLE);
      for (size_t i = 0; i < g.n; i++) {
        assert_int_equal(g.r[i].off, sample_recs[i].off);
        assert_true(g.data_ok[i]);
      }
    }
  }
  decode(b.p, 0, 0, 0, &g);
  assert_non_null(strstr(g.err, "inside the header"));
  decode(b.p, b.len - 1, b.len, b.len, &g);
  assert_non_null(strstr(g.err, "inside a record"));
  decode(b.p, b.len - DIFFSTREAM_END_LEN, b.len, b.len, &g);
  assert_non_null(strstr(g.err, "before the END record"));
  free(b.p);
}

/* Every single-bit flip anywhere is refused; one in a record names the
 * record's volume offset and none of it is handed out. */
static void
test_bit_flips(void **state)
{
  struct bb b = { 0 };
  size_t at[N_SAMPLE];
  struct got g;

  (void)state;
  raw_sample(&b, at);
  for (size_t pos = 0; pos < b.len; pos++) {
    for (int bit = 0; bit < 8; bit++) {
      b.p[pos] ^= (uint8_t)(1u << bit);
      if (decode(b.p, b.len, b.len, b.len, &g) != -1)
        fail_msg("flip of bit %d at %zu accepted", bit, pos);
      b.p[pos] ^= (uint8_t)(1u << bit);
      /* inside the bytes of a DATA record */
      for (size_t i = 0; i < N_SAMPLE; i++) {
        size_t d0 = at[i] + DIFFSTREAM_DATA_PRE;
        char want[128];
        if (sample_recs[i].kind != 'D' || pos < d0 ||
            pos >= d0 + sample_recs[i].len)
          continue;
        snprintf(want, sizeof want, "stream byte %zu: DATA record for "
                 "offset %llu (%llu bytes) is damaged", at[i],
                 (unsigned long long)sample_recs[i].off,
                 (unsigned long long)sample_recs[i].len);
        if (!strstr(g.err, want))
          fail_msg("flip at %zu: \"%s\", expected \"%s\"", pos, g.err, want);
        assert_int_equal(g.n, i);
      }
    }
  }
  free(b.p);
}

/* A stream of the sample header and these records, then a correct END. */
typedef void (*records_fn)(struct bb *b);

static void
stream_with(struct bb *b, const struct diffstream_header *h, records_fn fn,
            uint64_t records, uint64_t data_bytes)
{
  init_data();
  raw_header(b, h);
  fn(b);
  raw_end(b, records, data_bytes);
}

static void r_past_end(struct bb *b) { raw_data(b, VOL, vol_data, BS); }
static void
r_straddle(struct bb *b)
{
  raw_data(b, VOL - BS, vol_data, 2 * BS);
}
static void r_zero_huge(struct bb *b) { raw_zero(b, 0, UINT64_MAX - BS + 1); }
static void r_zero_wrap(struct bb *b) { raw_zero(b, UINT64_MAX - BS + 1, BS); }
static void r_zero_far(struct bb *b) { raw_zero(b, 1ull << 62, BS); }
static void r_unaligned_off(struct bb *b) { raw_data(b, 100, vol_data, BS); }
static void r_unaligned_len(struct bb *b) { raw_data(b, 0, vol_data, 100); }
static void r_zero_unaligned(struct bb *b) { raw_zero(b, BS, BS + 1); }
static void r_zero_empty(struct bb *b) { raw_zero(b, BS, 0); }
static void
r_overlap(struct bb *b)
{
  raw_data(b, 0, vol_data, 2 * BS);
  raw_zero(b, BS, BS);
}
static void
r_backwards(struct bb *b)
{
  raw_zero(b, 4 * BS, BS);
  raw_data(b, 2 * BS, vol_data, BS);
}
static void
r_same_twice(struct bb *b)
{
  raw_data(b, 0, vol_data, BS);
  raw_data(b, 0, vol_data, BS);
}
static void
r_unknown(struct bb *b)
{
  size_t at = b->len;

  bb_le(b, 'X', 1);
  bb_le(b, 0, 8);
  bb_le(b, BS, 8);
  bb_crc_from(b, at);
}
static void r_none(struct bb *b) { (void)b; }
static void
r_full(struct bb *b)
{
  raw_data(b, 0, vol_data, 2 * BS);
  raw_zero(b, 2 * BS, 10 * BS);
  raw_data(b, 12 * BS, vol_data + 12 * BS, 4 * BS);
}
static void
r_gap(struct bb *b)
{
  raw_data(b, 0, vol_data, 2 * BS);
  raw_zero(b, 3 * BS, 13 * BS);
}

static void
test_bad_extents(void **state)
{
  static const struct {
    records_fn fn;
    uint64_t records, data_bytes;
    const char *want;
  } cases[] = {
    { r_past_end, 1, BS, "stream byte 116: DATA record at offset 8192, "
      "length 512: outside the volume of 8192 bytes" },
    { r_straddle, 1, 2 * BS, "outside the volume" },
    { r_zero_huge, 1, 0, "outside the volume" },
    { r_zero_wrap, 1, 0, "outside the volume" },
    { r_zero_far, 1, 0, "outside the volume" },
    { r_unaligned_off, 1, BS, "offset 100, length 512: not aligned" },
    { r_unaligned_len, 1, 100, "offset 0, length 100: not aligned" },
    { r_zero_unaligned, 1, 0, "not aligned" },
    { r_zero_empty, 1, 0, "has length 0" },
    { r_overlap, 2, 2 * BS, "ZERO record at offset 512: overlaps or "
      "precedes the record before it (which ended at 1024)" },
    { r_backwards, 2, BS, "overlaps or precedes" },
    { r_same_twice, 2, 2 * BS, "overlaps or precedes" },
    { r_unknown, 1, 0, "stream byte 116: unknown record type 0x58" },
    { r_none, 1, 0, "END record counts 1 records" },
    { r_none, 0, 5, "and 5 data bytes" },
  };
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct bb b = { 0 };
    struct got g;
    stream_with(&b, &sample_hdr, cases[i].fn, cases[i].records,
                cases[i].data_bytes);
    if (decode(b.p, b.len, b.len, b.len, &g) != -1 ||
        !strstr(g.err, cases[i].want))
      fail_msg("case %zu: expected refusal with \"%s\", got rc %d: %s", i,
               cases[i].want, g.rc, g.err);
    free(b.p);
  }
}

/* A stream from an empty volume names every block, in order, no gaps. */
static void
test_from_empty(void **state)
{
  struct diffstream_header h = sample_hdr;
  struct bb b = { 0 };
  struct got g;

  (void)state;
  h.from_id = 0;
  h.from_size = 0;
  h.from_created_ns = 0;
  memset(h.from_volume_uuid, 0, 16);
  stream_with(&b, &h, r_full, 3, 6 * BS);
  assert_int_equal(decode(b.p, b.len, 1, 1, &g), 0);
  assert_int_equal(g.n, 3);
  free(b.p);
  b = (struct bb){ 0 };
  stream_with(&b, &h, r_gap, 2, 2 * BS);
  assert_refused(b.p, b.len, "ZERO record at offset 1536: a stream from an "
                 "empty volume describes every block, but 1024 to 1536 is "
                 "missing");
  free(b.p);
  b = (struct bb){ 0 };
  stream_with(&b, &h, r_none, 0, 0);
  assert_refused(b.p, b.len, "END record after 0 of the volume's 8192 "
                 "bytes");
  free(b.p);
  /* the same records in a diff from a snapshot: gaps are fine */
  b = (struct bb){ 0 };
  stream_with(&b, &sample_hdr, r_gap, 2, 2 * BS);
  assert_int_equal(decode(b.p, b.len, b.len, b.len, &g), 0);
  free(b.p);
}

/* A DATA record claiming more than a record may hold is refused from its
 * length field: before its bytes arrive, with no memory taken for them. */
static void
test_huge_lengths(void **state)
{
  static const uint32_t claims[] = { 0xffffffffu, 0xfffff000u,
                                     DIFFSTREAM_MAX_DATA + BS, 0 };
  struct bb b = { 0 };
  struct diffstream_dec *d;
  struct diffstream_rec rec;
  char err[512];
  size_t used;

  (void)state;
  for (size_t i = 0; i < sizeof claims / sizeof claims[0]; i++) {
    b.len = 0;
    raw_header(&b, &sample_hdr);
    bb_le(&b, 'D', 1);
    bb_le(&b, 0, 8);
    bb_le(&b, claims[i], 4);
    d = diffstream_dec_new();
    assert_int_equal(diffstream_dec_feed(d, b.p, b.len, &used, &rec, err,
                                         sizeof err), DIFFSTREAM_HEADER);
    assert_int_equal(diffstream_dec_feed(d, b.p + used, b.len - used, &used,
                                         &rec, err, sizeof err),
                     DIFFSTREAM_ERROR);
    if (!strstr(err, claims[i] == 0 ? "length 0" : claims[i] % BS
                ? "not aligned" : "more than the 1048576 a record may hold"))
      fail_msg("claim %u: %s", claims[i], err);
    diffstream_dec_free(d);
  }
  free(b.p);
}

/* Exactly the largest DATA record, through the buffered path (pieces of
 * 4096) and in place. */
static void
test_max_record(void **state)
{
  struct diffstream_header h = sample_hdr;
  struct diffstream_enc *e;
  struct bb b = { 0 };
  uint8_t hdr[DIFFSTREAM_HEADER_LEN], pre[DIFFSTREAM_DATA_PRE];
  uint8_t post[DIFFSTREAM_DATA_POST], end[DIFFSTREAM_END_LEN];
  uint8_t *data = malloc(DIFFSTREAM_MAX_DATA);
  char err[256];

  (void)state;
  assert_non_null(data);
  memset(data, 0x5a, DIFFSTREAM_MAX_DATA);
  h.block_size = 4096;
  h.volume_size = 4ull * DIFFSTREAM_MAX_DATA;
  h.from_size = h.volume_size;
  assert_int_equal(diffstream_enc_new(&h, hdr, &e, err, sizeof err), 0);
  bb_bytes(&b, hdr, sizeof hdr);
  for (int k = 0; k < 2; k++) {
    assert_int_equal(diffstream_enc_data(e, (uint64_t)k * DIFFSTREAM_MAX_DATA,
                                         data, DIFFSTREAM_MAX_DATA, pre,
                                         post, err, sizeof err), 0);
    bb_bytes(&b, pre, sizeof pre);
    bb_bytes(&b, data, DIFFSTREAM_MAX_DATA);
    bb_bytes(&b, post, sizeof post);
  }
  /* one byte more is refused by the encoder too */
  assert_int_equal(diffstream_enc_data(e, 2ull * DIFFSTREAM_MAX_DATA, data,
                                       DIFFSTREAM_MAX_DATA + 4096, pre, post,
                                       err, sizeof err), -1);
  assert_int_equal(diffstream_enc_end(e, end, err, sizeof err), 0);
  bb_bytes(&b, end, sizeof end);
  diffstream_enc_free(e);
  for (int pass = 0; pass < 2; pass++) {
    struct diffstream_dec *d = diffstream_dec_new();
    size_t pos = 0, n = 0;
    bool done = false;
    while (pos < b.len) {
      size_t clen = pass ? b.len - pos : (b.len - pos < 4096 ? b.len - pos
                                                             : 4096);
      size_t off = 0, used;
      while (off < clen) {
        struct diffstream_rec rec;
        enum diffstream_event ev = diffstream_dec_feed(
            d, b.p + pos + off, clen - off, &used, &rec, err, sizeof err);
        off += used;
        assert_int_not_equal(ev, DIFFSTREAM_ERROR);
        if (ev == DIFFSTREAM_NEED)
          break;
        if (ev == DIFFSTREAM_RECORD) {
          assert_int_equal(rec.length, DIFFSTREAM_MAX_DATA);
          assert_memory_equal(rec.data, data, DIFFSTREAM_MAX_DATA);
          n++;
        }
        done = ev == DIFFSTREAM_DONE;
      }
      pos += clen;
    }
    assert_true(done);
    assert_int_equal(n, 2);
    assert_int_equal(diffstream_dec_finish(d, err, sizeof err), 0);
    diffstream_dec_free(d);
  }
  free(data);
  free(b.p);
}

static void
test_end_and_after(void **state)
{
  struct bb b = { 0 };

  (void)state;
  raw_sample(&b, NULL);
  /* damaged digest */
  b.p[b.len - 1] ^= 1;
  assert_refused(b.p, b.len, "the checksum over the stream (SHA-256, END "
                 "record) does not match");
  b.p[b.len - 1] ^= 1;
  /* a record dropped, the END left as it was: refused by the digest */
  {
    struct bb c = { 0 };
    size_t at[N_SAMPLE];
    free(b.p);
    b = (struct bb){ 0 };
    raw_sample(&b, at);
    bb_bytes(&c, b.p, at[1]);
    bb_bytes(&c, b.p + at[2], b.len - at[2]);
    assert_refused(c.p, c.len, "does not match");
    free(c.p);
  }
  /* anything after the END */
  bb_le(&b, 0, 1);
  assert_refused(b.p, b.len, "bytes after the END record");
  free(b.p);
}

static void
test_bad_headers(void **state)
{
  static const struct {
    size_t field;               /* offset in the header */
    unsigned width;
    uint64_t value;
    const char *want;
  } cases[] = {
    { 0, 1, 'X', "not a duplex diff stream" },
    { 8, 4, 2, "diff stream version 2; this duplex-store reads version 1" },
    { 12, 4, 0, "block size 0 is not a power of two" },
    { 12, 4, 3, "block size 3" },
    { 12, 4, 256, "block size 256" },
    { 12, 4, 2u << 20, "block size 2097152" },
    { 16, 8, 0, "volume size 0 is not a positive multiple" },
    { 16, 8, VOL + 1, "volume size 8193" },
    { 16, 8, (1ull << 61), "volume size 2305843009213693952" },
    { 24, 8, 100, "size 100 of the from snapshot" },
    { 40, 8, 0, "the to snapshot's id is 0" },
    { 32, 8, 0, "from id 0) gives the from size 6144, not 0" },
  };
  struct bb b = { 0 };

  (void)state;
  raw_header(&b, &sample_hdr);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint8_t h[DIFFSTREAM_HEADER_LEN];
    uint32_t crc;
    memcpy(h, b.p, sizeof h);
    for (unsigned k = 0; k < cases[i].width; k++)
      h[cases[i].field + k] = (uint8_t)(cases[i].value >> (8 * k));
    crc = crc32c(0, h, 112);
    for (unsigned k = 0; k < 4; k++)
      h[112 + k] = (uint8_t)(crc >> (8 * k));
    assert_refused(h, sizeof h, cases[i].want);
  }
  /* the CRC */
  b.p[50] ^= 0x10;
  assert_refused(b.p, b.len, "diff stream header damaged");
  /* not ours: refused after 12 bytes, not after 116 */
  {
    struct diffstream_dec *d = diffstream_dec_new();
    struct diffstream_rec rec;
    char err[256];
    size_t used;
    assert_int_equal(diffstream_dec_feed(d, "GIF89a......", 12, &used, &rec,
                                         err, sizeof err), DIFFSTREAM_ERROR);
    assert_non_null(strstr(err, "not a duplex diff stream"));
    diffstream_dec_free(d);
  }
  free(b.p);
}

static void
test_encoder_refuses(void **state)
{
  struct diffstream_header h = sample_hdr;
  struct diffstream_enc *e;
  uint8_t hdr[DIFFSTREAM_HEADER_LEN], pre[DIFFSTREAM_DATA_PRE];
  uint8_t post[DIFFSTREAM_DATA_POST], zero[DIFFSTREAM_ZERO_LEN];
  uint8_t end[DIFFSTREAM_END_LEN];
  char err[256];

  (void)state;
  init_data();
  h.block_size = 1000;
  assert_int_equal(diffstream_enc_new(&h, hdr, &e, err, sizeof err), -1);
  assert_null(e);
  assert_non_null(strstr(err, "block size 1000"));
  assert_int_equal(diffstream_enc_new(&sample_hdr, hdr, &e, err, sizeof err),
                   0);
  assert_int_equal(diffstream_enc_data(e, VOL, vol_data, BS, pre, post, err,
                                       sizeof err), -1);
  assert_non_null(strstr(err, "outside the volume"));
  assert_int_equal(diffstream_enc_data(e, 1, vol_data, BS, pre, post, err,
                                       sizeof err), -1);
  assert_int_equal(diffstream_enc_zero(e, 4 * BS, BS, zero, err, sizeof err),
                   0);
  assert_int_equal(diffstream_enc_zero(e, 2 * BS, BS, zero, err, sizeof err),
                   -1);
  assert_non_null(strstr(err, "overlaps or precedes"));
  assert_int_equal(diffstream_enc_end(e, end, err, sizeof err), 0);
  assert_int_equal(diffstream_enc_zero(e, 8 * BS, BS, zero, err, sizeof err),
                   -1);
  assert_non_null(strstr(err, "after the END"));
  diffstream_enc_free(e);
  /* from an empty volume: the END must come after the last block */
  h = sample_hdr;
  h.from_id = 0;
  h.from_size = 0;
  assert_int_equal(diffstream_enc_new(&h, hdr, &e, err, sizeof err), 0);
  assert_int_equal(diffstream_enc_zero(e, 0, VOL - BS, zero, err, sizeof err),
                   0);
  assert_int_equal(diffstream_enc_end(e, end, err, sizeof err), -1);
  assert_int_equal(diffstream_enc_zero(e, VOL - BS, BS, zero, err,
                                       sizeof err), 0);
  assert_int_equal(diffstream_enc_end(e, end, err, sizeof err), 0);
  diffstream_enc_free(e);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_encoder_matches_doc),
    cmocka_unit_test(test_roundtrip),
    cmocka_unit_test(test_chunk_boundaries),
    cmocka_unit_test(test_truncated),
    cmocka_unit_test(test_bit_flips),
    cmocka_unit_test(test_bad_extents),
    cmocka_unit_test(test_from_empty),
    cmocka_unit_test(test_huge_lengths),
    cmocka_unit_test(test_max_record),
    cmocka_unit_test(test_end_and_after),
    cmocka_unit_test(test_bad_headers),
    cmocka_unit_test(test_encoder_refuses),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
