/* The snapshot store's object formats (store/format.c): every object kind
 * encoded by the store compared byte for byte with an independent encoding
 * written here from docs/STORE.md, parsed back to the same values; every
 * parser given every truncation and every single-bit flip of a valid object
 * (refused, never a crash: run under ASan each parse gets a buffer of
 * exactly its length), and objects whose CRC is right but whose fields are
 * not (counts past the buffer, runs and entries out of order, ordinals and
 * ids out of range, ...), each refused with a message naming the kind. */
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

#include "crc32c.h"
#include "format.h"
#include "util.h"

/* ---- an independent encoder (docs/STORE.md) ---- */

static void
put_le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

/* The CRC-32C of everything before the last 4 bytes, into them. */
static void
recrc(uint8_t *p, size_t len)
{
  put_le32(p + len - 4, crc32c(0, p, len - 4));
}

/* A pack's CRC sits 12 bytes before its end (n | crc | "DXPKEND1"). */
static void
recrc_pack(uint8_t *p, size_t len)
{
  put_le32(p + len - 12, crc32c(0, p, len - 12));
}

static void
bb_crc(struct bb *b)
{
  bb_le(b, 0, 4);
  recrc(b->p, b->len);
}

static void
fill_hash(struct store_hash *h, unsigned seed)
{
  for (unsigned i = 0; i < STORE_HASH_LEN; i++)
    h->b[i] = (uint8_t)(seed * 131 + i * 7 + 1);
}

/* ---- the sample objects ---- */

enum kind { K_CONFIG, K_PACK, K_INDEX, K_MANIFEST, K_CATALOG };
static const char *const kind_name[] = { "config", "pack", "index",
                                         "manifest", "catalog" };

/* Parse with the right parser from an exact-size heap copy; err gets the
 * message.  Returns the parser's result. */
static int
parse_any(enum kind k, const uint8_t *buf, size_t len, char *err,
          size_t errlen)
{
  uint8_t *copy = malloc(len ? len : 1);
  int rc = -1;

  assert_non_null(copy);
  if (len)
    memcpy(copy, buf, len);
  err[0] = '\0';
  switch (k) {
  case K_CONFIG: {
    struct store_config c;
    rc = format_config_parse(copy, len, &c, err, errlen);
    break;
  }
  case K_PACK: {
    struct pack_entry *e = NULL;
    uint32_t n = 99;
    rc = format_pack_parse(copy, len, &e, &n, err, errlen);
    if (rc != 0 && (e != NULL || n != 0))
      fail_msg("pack parse failed but left entries");
    free(e);
    break;
  }
  case K_INDEX: {
    struct index_obj ix;
    rc = format_index_parse(copy, len, &ix, err, errlen);
    if (rc != 0 && (ix.packs || ix.entries || ix.n_packs || ix.n_entries))
      fail_msg("index parse failed but left its arrays");
    format_index_free(&ix);
    break;
  }
  case K_MANIFEST: {
    struct manifest m;
    rc = format_manifest_parse(copy, len, &m, err, errlen);
    copy = NULL;                /* owned by the parser */
    if (rc == 0)
      format_manifest_free(&m);
    else if (m.runs || m.buf)
      fail_msg("manifest parse failed but left its arrays");
    break;
  }
  case K_CATALOG: {
    struct catalog c;
    rc = format_catalog_parse(copy, len, &c, err, errlen);
    if (rc != 0 && (c.snaps || c.index))
      fail_msg("catalog parse failed but left its arrays");
    format_catalog_free(&c);
    break;
  }
  }
  free(copy);
  return rc;
}

static const struct store_config sample_config = {
  .format = STORE_FORMAT_VERSION,
  .block_size = STORE_BLOCK,
  .uuid = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
  .created_ns = 1700000000123456789ull,
};

static void
raw_config(struct bb *b, uint32_t format, uint32_t block_size)
{
  bb_bytes(b, "DXSTORE1", 8);
  bb_le(b, format, 4);
  bb_le(b, block_size, 4);
  bb_bytes(b, sample_config.uuid, 16);
  bb_le(b, sample_config.created_ns, 8);
  bb_le(b, 0, 4);               /* reserved (not in docs/STORE.md) */
  bb_crc(b);
}

/* A pack of three blobs: two raw blocks and one "zstd" blob of 100 bytes
 * (the parser does not decompress), trailer built here. */
#define PACK_N 3
static void
raw_pack(struct bb *b, struct pack_entry e[PACK_N])
{
  static const uint32_t lens[PACK_N] = { STORE_BLOCK, 100, STORE_BLOCK };
  static const uint32_t flags[PACK_N] = { 0, PACK_FLAG_ZSTD, 0 };

  bb_bytes(b, "DXPACK01", 8);
  for (unsigned i = 0; i < PACK_N; i++) {
    uint8_t blob[STORE_BLOCK];
    memset(blob, 0x30 + (int)i, sizeof blob);
    fill_hash(&e[i].hash, 10 + i);
    e[i].offset = (uint32_t)b->len;
    e[i].stored_len = lens[i];
    e[i].flags = flags[i];
    bb_bytes(b, blob, lens[i]);
  }
  for (unsigned i = 0; i < PACK_N; i++) {
    bb_bytes(b, e[i].hash.b, STORE_HASH_LEN);
    bb_le(b, e[i].offset, 4);
    bb_le(b, e[i].stored_len, 4);
    bb_le(b, e[i].flags, 4);
  }
  bb_le(b, PACK_N, 4);
  bb_le(b, 0, 4);
  bb_bytes(b, "DXPKEND1", 8);
  recrc_pack(b->p, b->len);
}

/* Offsets inside raw_pack's trailer. */
static size_t
pack_entry_off(size_t len, unsigned i)
{
  return len - FORMAT_PACK_FOOTER_LEN - (PACK_N - i) * FORMAT_PACK_ENTRY_LEN;
}

#define IX_PACKS 2
#define IX_N 5
static void
sample_index(struct index_obj *ix)
{
  ix->n_packs = IX_PACKS;
  ix->n_entries = IX_N;
  ix->packs = calloc(IX_PACKS, sizeof *ix->packs);
  ix->entries = calloc(IX_N, sizeof *ix->entries);
  assert_true(ix->packs && ix->entries);
  fill_hash(&ix->packs[0], 200);
  fill_hash(&ix->packs[1], 201);
  /* given out of hash order: the encoder sorts */
  for (unsigned i = 0; i < IX_N; i++) {
    struct index_entry *e = &ix->entries[i];
    fill_hash(&e->hash, 50 + i);
    e->hash.b[0] = (uint8_t)(0xf0 - 0x20 * i);
    e->pack = i % IX_PACKS;
    e->offset = 8 + 4096 * i;
    e->stored_len = i == 2 ? 77 : STORE_BLOCK;
    e->flags = i == 2 ? PACK_FLAG_ZSTD : 0;
  }
}

static int
entry_cmp(const void *a, const void *b)
{
  return memcmp(a, b, STORE_HASH_LEN);
}

/* Entries must already be in the order to write. */
static void
raw_index(struct bb *b, const struct index_obj *ix, uint32_t n_packs,
          uint32_t n_entries)
{
  bb_bytes(b, "DXINDEX1", 8);
  bb_le(b, n_packs, 4);
  bb_le(b, n_entries, 4);
  for (uint32_t i = 0; i < ix->n_packs; i++)
    bb_bytes(b, ix->packs[i].b, STORE_HASH_LEN);
  for (uint32_t i = 0; i < ix->n_entries; i++) {
    const struct index_entry *e = &ix->entries[i];
    bb_bytes(b, e->hash.b, STORE_HASH_LEN);
    bb_le(b, e->pack, 4);
    bb_le(b, e->offset, 4);
    bb_le(b, e->stored_len, 4);
    bb_le(b, e->flags, 4);
  }
  bb_crc(b);
}

/* A manifest: 256 blocks (1 MiB), a delta with data and zero runs. */
#define MAN_BLOCKS 256
static struct store_hash man_hashes[6];
static struct snap_run man_runs[] = {
  { 2, 1, RUN_DATA, &man_hashes[0] },
  { 10, 10, RUN_ZERO, NULL },
  { 20, 3, RUN_DATA, &man_hashes[1] },
  { 254, 2, RUN_DATA, &man_hashes[4] },
};

static void
sample_manifest(struct manifest *m, bool full)
{
  memset(m, 0, sizeof *m);
  for (unsigned i = 0; i < ARRAY_SIZE(man_hashes); i++)
    fill_hash(&man_hashes[i], 300 + i);
  m->id = 7;
  m->parent = full ? 0 : 5;
  m->chain = full ? 0 : 2;
  m->created_ns = 1700000000987654321ull;
  m->epoch = 42;
  m->reason = SNAP_SCHEDULE;
  m->flags = 0;
  snprintf(m->name, sizeof m->name, "nightly \"db\"");
  m->size_bytes = (uint64_t)MAN_BLOCKS * STORE_BLOCK;
  memset(m->volume_uuid, 0xab, 16);
  m->stored_bytes = 123456;
  m->runs = man_runs;
  m->n_runs = ARRAY_SIZE(man_runs);
}

/* Fields given separately so that bad ones can be written. */
struct raw_man {
  uint64_t id, parent;
  uint32_t chain;
  const char *name;
  size_t name_len;
  uint32_t name_len_field;      /* as written */
  uint64_t size_bytes;
  uint32_t n_runs;              /* as written; runs[] holds real_runs */
  const struct snap_run *runs;
  uint32_t real_runs;
  uint32_t max_hashes;          /* hashes written per data run, at most */
};

static void
raw_manifest(struct bb *b, const struct raw_man *r)
{
  const struct manifest *m;
  struct manifest s;

  sample_manifest(&s, false);
  m = &s;
  bb_bytes(b, "DXSNAP01", 8);
  bb_le(b, r->id, 8);
  bb_le(b, r->parent, 8);
  bb_le(b, r->chain, 4);
  bb_le(b, m->created_ns, 8);
  bb_le(b, m->epoch, 8);
  bb_le(b, m->reason, 1);
  bb_le(b, m->flags, 1);
  bb_le(b, r->name_len_field, 2);
  bb_bytes(b, r->name, r->name_len);
  bb_le(b, r->size_bytes, 8);
  bb_bytes(b, m->volume_uuid, 16);
  bb_le(b, m->stored_bytes, 8);
  bb_le(b, r->n_runs, 4);
  for (uint32_t i = 0; i < r->real_runs; i++) {
    bb_le(b, r->runs[i].start, 8);
    bb_le(b, r->runs[i].count, 4);
    bb_le(b, r->runs[i].kind, 1);
    if (r->runs[i].kind == RUN_DATA)
      bb_bytes(b, r->runs[i].hashes,
               (size_t)MIN(r->runs[i].count, r->max_hashes) *
                   STORE_HASH_LEN);
  }
  bb_crc(b);
}

static struct raw_man
good_raw_man(void)
{
  struct manifest m;
  struct raw_man r;

  sample_manifest(&m, false);
  r.id = m.id;
  r.parent = m.parent;
  r.chain = m.chain;
  r.name = "nightly \"db\"";
  r.name_len = r.name_len_field = (uint32_t)strlen(r.name);
  r.size_bytes = m.size_bytes;
  r.n_runs = r.real_runs = m.n_runs;
  r.runs = man_runs;
  r.max_hashes = UINT32_MAX;
  return r;
}

static struct catalog_snap cat_snaps[3];
static struct store_hash cat_index[2];

static void
sample_catalog(struct catalog *c)
{
  static const uint64_t ids[3] = { 3, 7, 11 };

  for (unsigned i = 0; i < 3; i++) {
    cat_snaps[i].id = ids[i];
    fill_hash(&cat_snaps[i].manifest, 400 + i);
  }
  fill_hash(&cat_index[0], 500);
  fill_hash(&cat_index[1], 501);
  memset(c, 0, sizeof *c);
  c->generation = 9;
  c->next_id = 12;
  c->snaps = cat_snaps;
  c->n_snaps = 3;
  c->index = cat_index;
  c->n_index = 2;
}

static void
raw_catalog(struct bb *b, uint64_t next_id, const uint64_t *ids,
            uint32_t n_snaps_written, uint32_t n_snaps,
            uint32_t n_index_written, uint32_t n_index)
{
  bb_bytes(b, "DXCATLG1", 8);
  bb_le(b, 9, 8);
  bb_le(b, next_id, 8);
  bb_le(b, n_snaps_written, 4);
  for (uint32_t i = 0; i < n_snaps; i++) {
    struct store_hash h;
    fill_hash(&h, 400 + i);
    bb_le(b, ids[i], 8);
    bb_bytes(b, h.b, STORE_HASH_LEN);
  }
  bb_le(b, n_index_written, 4);
  for (uint32_t i = 0; i < n_index; i++) {
    struct store_hash h;
    fill_hash(&h, 500 + i);
    bb_bytes(b, h.b, STORE_HASH_LEN);
  }
  bb_crc(b);
}

/* ---- round trips ---- */

static void
test_hash_hex(void **state)
{
  struct store_hash h, back;
  char hex[65];

  (void)state;
  format_hash("abc", 3, &h);
  format_hash_hex(&h, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223"
                           "b00361a396177a9cb410ff61f20015ad");
  assert_int_equal(format_hash_parse_hex(hex, &back), 0);
  assert_memory_equal(h.b, back.b, STORE_HASH_LEN);
  hex[10] = 'A';
  assert_int_equal(format_hash_parse_hex(hex, &back), -1);
  hex[10] = 'a';
  assert_int_equal(format_hash_parse_hex("ba78", &back), -1);
  assert_false(format_hash_is_zero(&h));
  memset(&h, 0, sizeof h);
  assert_true(format_hash_is_zero(&h));
  for (unsigned r = SNAP_MANUAL; r <= SNAP_BEFORE_RESTORE; r++) {
    unsigned back_r = 0;
    assert_int_equal(format_reason_parse(format_reason_name(r), &back_r), 0);
    assert_int_equal(back_r, r);
  }
  assert_string_equal(format_reason_name(9), "unknown");
}

static void
test_config_roundtrip(void **state)
{
  uint8_t buf[FORMAT_CONFIG_LEN];
  struct store_config c;
  struct bb raw = { 0 };
  char err[256];

  (void)state;
  format_config_encode(&sample_config, buf);
  raw_config(&raw, STORE_FORMAT_VERSION, STORE_BLOCK);
  assert_int_equal(raw.len, FORMAT_CONFIG_LEN);
  assert_memory_equal(buf, raw.p, FORMAT_CONFIG_LEN);
  assert_int_equal(format_config_parse(buf, sizeof buf, &c, err, sizeof err),
                   0);
  assert_int_equal(c.format, sample_config.format);
  assert_int_equal(c.block_size, sample_config.block_size);
  assert_memory_equal(c.uuid, sample_config.uuid, 16);
  assert_true(c.created_ns == sample_config.created_ns);
  free(raw.p);
}

static void
test_pack_roundtrip(void **state)
{
  struct pack_entry e[PACK_N], *got = NULL;
  struct bb raw = { 0 };
  uint8_t *mine;
  size_t blob_end, tlen;
  uint32_t n;
  char err[256];

  (void)state;
  raw_pack(&raw, e);
  /* The store's trailer after the same header and blobs. */
  blob_end = raw.len - PACK_N * FORMAT_PACK_ENTRY_LEN -
             FORMAT_PACK_FOOTER_LEN;
  mine = malloc(raw.len);
  assert_non_null(mine);
  memcpy(mine, raw.p, blob_end);
  tlen = format_pack_trailer(e, PACK_N, crc32c(0, mine, blob_end),
                             mine + blob_end);
  assert_int_equal(blob_end + tlen, raw.len);
  assert_int_equal(format_pack_overhead(PACK_N),
                   FORMAT_PACK_HDR_LEN + tlen);
  assert_memory_equal(mine, raw.p, raw.len);
  {
    uint8_t hdr[FORMAT_PACK_HDR_LEN];
    format_pack_header(hdr);
    assert_memory_equal(hdr, "DXPACK01", 8);
  }
  assert_int_equal(format_pack_parse(mine, raw.len, &got, &n, err,
                                     sizeof err), 0);
  assert_int_equal(n, PACK_N);
  for (unsigned i = 0; i < PACK_N; i++) {
    assert_memory_equal(got[i].hash.b, e[i].hash.b, STORE_HASH_LEN);
    assert_int_equal(got[i].offset, e[i].offset);
    assert_int_equal(got[i].stored_len, e[i].stored_len);
    assert_int_equal(got[i].flags, e[i].flags);
  }
  free(got);
  free(mine);
  free(raw.p);

  /* An empty pack is a valid (if useless) object. */
  {
    uint8_t empty[FORMAT_PACK_HDR_LEN + FORMAT_PACK_FOOTER_LEN];
    format_pack_header(empty);
    tlen = format_pack_trailer(NULL, 0, crc32c(0, empty, 8), empty + 8);
    assert_int_equal(tlen, FORMAT_PACK_FOOTER_LEN);
    assert_int_equal(format_pack_parse(empty, sizeof empty, &got, &n, err,
                                       sizeof err), 0);
    assert_int_equal(n, 0);
    free(got);
  }
}

static void
test_index_roundtrip(void **state)
{
  struct index_obj ix, back;
  struct bb raw = { 0 };
  uint8_t *buf;
  size_t len;
  char err[256];

  (void)state;
  sample_index(&ix);
  assert_int_equal(format_index_encode(&ix, &buf, &len), 0);
  /* encode sorted the entries in place */
  for (unsigned i = 1; i < IX_N; i++)
    assert_true(entry_cmp(&ix.entries[i - 1], &ix.entries[i]) < 0);
  raw_index(&raw, &ix, IX_PACKS, IX_N);
  assert_int_equal(len, 8 + 8 + IX_PACKS * 32 + IX_N * 48 + 4);
  assert_int_equal(raw.len, len);
  assert_memory_equal(buf, raw.p, len);
  assert_int_equal(format_index_parse(buf, len, &back, err, sizeof err), 0);
  assert_int_equal(back.n_packs, IX_PACKS);
  assert_int_equal(back.n_entries, IX_N);
  assert_memory_equal(back.packs, ix.packs, IX_PACKS * sizeof *ix.packs);
  for (unsigned i = 0; i < IX_N; i++) {
    assert_memory_equal(back.entries[i].hash.b, ix.entries[i].hash.b, 32);
    assert_int_equal(back.entries[i].pack, ix.entries[i].pack);
    assert_int_equal(back.entries[i].offset, ix.entries[i].offset);
    assert_int_equal(back.entries[i].stored_len, ix.entries[i].stored_len);
    assert_int_equal(back.entries[i].flags, ix.entries[i].flags);
  }
  format_index_free(&back);
  format_index_free(&ix);
  free(buf);
  free(raw.p);
}

static void
check_manifest_equal(const struct manifest *a, const struct manifest *b)
{
  assert_true(a->id == b->id);
  assert_true(a->parent == b->parent);
  assert_int_equal(a->chain, b->chain);
  assert_true(a->created_ns == b->created_ns);
  assert_true(a->epoch == b->epoch);
  assert_int_equal(a->reason, b->reason);
  assert_int_equal(a->flags, b->flags);
  assert_string_equal(a->name, b->name);
  assert_true(a->size_bytes == b->size_bytes);
  assert_memory_equal(a->volume_uuid, b->volume_uuid, 16);
  assert_true(a->stored_bytes == b->stored_bytes);
  assert_int_equal(a->n_runs, b->n_runs);
  for (uint32_t i = 0; i < a->n_runs; i++) {
    assert_true(a->runs[i].start == b->runs[i].start);
    assert_int_equal(a->runs[i].count, b->runs[i].count);
    assert_int_equal(a->runs[i].kind, b->runs[i].kind);
    if (a->runs[i].kind == RUN_DATA)
      assert_memory_equal(a->runs[i].hashes, b->runs[i].hashes,
                          a->runs[i].count * STORE_HASH_LEN);
    else
      assert_null(b->runs[i].hashes);
  }
}

static void
test_manifest_roundtrip(void **state)
{
  (void)state;
  for (int full = 0; full < 2; full++) {
    struct manifest m, back, again;
    struct raw_man r = good_raw_man();
    struct bb raw = { 0 };
    uint8_t *buf, *buf2;
    size_t len, len2;
    char err[256];

    sample_manifest(&m, full);
    if (full) {
      r.parent = 0;
      r.chain = 0;
    }
    assert_int_equal(format_manifest_encode(&m, &buf, &len), 0);
    raw_manifest(&raw, &r);
    assert_int_equal(raw.len, len);
    assert_memory_equal(buf, raw.p, len);
    if (format_manifest_parse(buf, len, &back, err, sizeof err) != 0)
      fail_msg("%s", err);
    check_manifest_equal(&m, &back);
    /* re-encoding the parsed one gives the same bytes */
    assert_int_equal(format_manifest_encode(&back, &buf2, &len2), 0);
    assert_int_equal(len2, raw.len);
    assert_memory_equal(buf2, raw.p, len2);
    assert_int_equal(format_manifest_parse(buf2, len2, &again, err,
                                           sizeof err), 0);
    check_manifest_equal(&m, &again);
    format_manifest_free(&back);
    format_manifest_free(&again);
    free(raw.p);
  }
}

static void
test_manifest_encode_refuses(void **state)
{
  struct manifest m;
  struct snap_run bad[2];
  uint8_t *buf = NULL;
  size_t len;

  (void)state;
  sample_manifest(&m, false);
  /* overlapping runs */
  bad[0] = man_runs[0];
  bad[1] = man_runs[0];
  m.runs = bad;
  m.n_runs = 2;
  assert_int_equal(format_manifest_encode(&m, &buf, &len), -1);
  /* an empty run, an unknown kind */
  bad[1] = man_runs[1];
  bad[1].count = 0;
  assert_int_equal(format_manifest_encode(&m, &buf, &len), -1);
  bad[1] = man_runs[1];
  bad[1].kind = 3;
  assert_int_equal(format_manifest_encode(&m, &buf, &len), -1);
}

static void
test_catalog_roundtrip(void **state)
{
  static const uint64_t ids[3] = { 3, 7, 11 };
  struct catalog c, back;
  struct bb raw = { 0 };
  uint8_t *buf;
  size_t len;
  char err[256];

  (void)state;
  sample_catalog(&c);
  assert_int_equal(format_catalog_encode(&c, &buf, &len), 0);
  raw_catalog(&raw, 12, ids, 3, 3, 2, 2);
  assert_int_equal(raw.len, len);
  assert_memory_equal(buf, raw.p, len);
  assert_int_equal(format_catalog_parse(buf, len, &back, err, sizeof err), 0);
  assert_true(back.generation == 9 && back.next_id == 12);
  assert_int_equal(back.n_snaps, 3);
  assert_int_equal(back.n_index, 2);
  assert_memory_equal(back.snaps, c.snaps, 3 * sizeof *c.snaps);
  assert_memory_equal(back.index, c.index, 2 * sizeof *c.index);
  format_catalog_free(&back);
  free(buf);
  free(raw.p);

  /* An empty catalog, and an encoder refusing ids out of order. */
  memset(&c, 0, sizeof c);
  c.next_id = 1;
  assert_int_equal(format_catalog_encode(&c, &buf, &len), 0);
  assert_int_equal(format_catalog_parse(buf, len, &back, err, sizeof err), 0);
  assert_int_equal(back.n_snaps + back.n_index, 0);
  format_catalog_free(&back);
  free(buf);
  sample_catalog(&c);
  cat_snaps[1].id = 3;
  assert_int_equal(format_catalog_encode(&c, &buf, &len), -1);
}

/* ---- damage: every truncation, every bit ---- */

/* One valid object of each kind. */
static void
sample_object(enum kind k, struct bb *b)
{
  memset(b, 0, sizeof *b);
  switch (k) {
  case K_CONFIG:
    raw_config(b, STORE_FORMAT_VERSION, STORE_BLOCK);
    break;
  case K_PACK: {
    struct pack_entry e[PACK_N];
    raw_pack(b, e);
    break;
  }
  case K_INDEX: {
    struct index_obj ix;
    sample_index(&ix);
    qsort(ix.entries, IX_N, sizeof *ix.entries, entry_cmp);
    raw_index(b, &ix, IX_PACKS, IX_N);
    format_index_free(&ix);
    break;
  }
  case K_MANIFEST: {
    struct raw_man r = good_raw_man();
    raw_manifest(b, &r);
    break;
  }
  case K_CATALOG: {
    static const uint64_t ids[3] = { 3, 7, 11 };
    raw_catalog(b, 12, ids, 3, 3, 2, 2);
    break;
  }
  }
}

/* The parser refuses, and says which kind of object it refused. */
static void
expect_refused(enum kind k, const uint8_t *buf, size_t len, const char *says,
               const char *what)
{
  char err[512];
  size_t kl = strlen(kind_name[k]);

  if (parse_any(k, buf, len, err, sizeof err) != -1)
    fail_msg("%s: %s accepted", kind_name[k], what);
  if (strncmp(err, kind_name[k], kl) != 0 || err[kl] != ':')
    fail_msg("%s: %s: message \"%s\" does not start with \"%s:\"",
             kind_name[k], what, err, kind_name[k]);
  if (says && !strstr(err, says))
    fail_msg("%s: %s: message \"%s\" does not say \"%s\"", kind_name[k],
             what, err, says);
}

static void
test_truncations(void **state)
{
  (void)state;
  for (enum kind k = K_CONFIG; k <= K_CATALOG; k++) {
    struct bb b;
    char err[512], what[64];

    sample_object(k, &b);
    if (parse_any(k, b.p, b.len, err, sizeof err) != 0)
      fail_msg("%s: the sample is refused: %s", kind_name[k], err);
    for (size_t l = 0; l < b.len; l++) {
      snprintf(what, sizeof what, "first %zu of %zu bytes", l, b.len);
      expect_refused(k, b.p, l, NULL, what);
    }
    /* and the whole object with bytes after it */
    {
      uint8_t *more = calloc(1, b.len + 9);
      assert_non_null(more);
      memcpy(more, b.p, b.len);
      expect_refused(k, more, b.len + 9, NULL, "9 bytes appended");
      free(more);
    }
    free(b.p);
  }
}

static void
test_bit_flips(void **state)
{
  (void)state;
  for (enum kind k = K_CONFIG; k <= K_CATALOG; k++) {
    struct bb b;
    char what[64];
    size_t flips = 0;

    sample_object(k, &b);
    for (size_t i = 0; i < b.len; i++)
      for (int bit = 0; bit < 8; bit++) {
        b.p[i] ^= (uint8_t)(1u << bit);
        snprintf(what, sizeof what, "bit %d of byte %zu flipped", bit, i);
        expect_refused(k, b.p, b.len, NULL, what);
        b.p[i] ^= (uint8_t)(1u << bit);
        flips++;
      }
    assert_int_equal(flips, b.len * 8);
    free(b.p);
  }
}

/* ---- valid CRC, wrong fields ---- */

static void
test_config_fields(void **state)
{
  struct bb b = { 0 };

  (void)state;
  raw_config(&b, 2, STORE_BLOCK);
  expect_refused(K_CONFIG, b.p, b.len, "format 2", "format 2");
  free(b.p);
  memset(&b, 0, sizeof b);
  raw_config(&b, STORE_FORMAT_VERSION, 8192);
  expect_refused(K_CONFIG, b.p, b.len, "block size 8192", "8 KiB blocks");
  free(b.p);
  /* the right CRC over 4 more bytes */
  memset(&b, 0, sizeof b);
  raw_config(&b, STORE_FORMAT_VERSION, STORE_BLOCK);
  b.p = realloc(b.p, b.len + 4);
  memset(b.p + b.len, 0, 4);
  b.len += 4;
  recrc(b.p, b.len);
  expect_refused(K_CONFIG, b.p, b.len, "unexpected bytes", "longer");
  free(b.p);
}

static void
test_pack_fields(void **state)
{
  static const struct {
    unsigned entry;
    int field;                  /* 0 offset, 1 stored_len, 2 flags, 3 n */
    uint32_t value;
    const char *says;
  } cases[] = {
    { 0, 0, 0, "entry 0" },                     /* offset inside header */
    { 0, 0, 7, "entry 0" },
    { 1, 1, 0, "entry 1" },                     /* empty blob */
    { 2, 0, UINT32_MAX, "entry 2" },            /* offset past the end */
    { 2, 1, STORE_BLOCK + 1, "entry 2" },       /* runs into the trailer */
    { 2, 1, UINT32_MAX, "entry 2" },
    { 1, 2, 2, "entry 1" },                     /* unknown flag */
    { 0, 3, PACK_N + 1, NULL },                 /* entries from the blobs */
    { 0, 3, 1000000, "do not fit" },            /* more than the bytes */
    { 0, 3, UINT32_MAX, "do not fit" },
  };

  (void)state;
  for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
    struct bb b;
    char what[64];

    sample_object(K_PACK, &b);
    if (cases[c].field == 3) {
      put_le32(b.p + b.len - 16, cases[c].value);
    } else {
      size_t at = pack_entry_off(b.len, cases[c].entry) + 32 +
                  4 * (size_t)cases[c].field;
      put_le32(b.p + at, cases[c].value);
    }
    recrc_pack(b.p, b.len);
    snprintf(what, sizeof what, "case %zu", c);
    expect_refused(K_PACK, b.p, b.len, cases[c].says, what);
    free(b.p);
  }
}

static void
test_index_fields(void **state)
{
  enum { PACKS, ENTRIES, ORDER, DUP, ORDINAL, EMPTY, FLAGS, NCASES };

  (void)state;
  for (int c = 0; c < NCASES; c++) {
    struct index_obj ix;
    struct bb b = { 0 };
    uint32_t np = IX_PACKS, ne = IX_N;
    const char *says = NULL;

    sample_index(&ix);
    qsort(ix.entries, IX_N, sizeof *ix.entries, entry_cmp);
    switch (c) {
    case PACKS: np = IX_PACKS + 1; says = "do not match"; break;
    case ENTRIES: ne = IX_N + 1; says = "do not match"; break;
    case ORDER: {
      struct index_entry t = ix.entries[1];
      ix.entries[1] = ix.entries[2];
      ix.entries[2] = t;
      says = "entry 2";
      break;
    }
    case DUP: ix.entries[3].hash = ix.entries[2].hash; says = "entry 3";
      break;
    case ORDINAL: ix.entries[4].pack = IX_PACKS; says = "pack 2 of 2"; break;
    case EMPTY: ix.entries[0].stored_len = 0; says = "entry 0"; break;
    case FLAGS: ix.entries[1].flags = 4; says = "flags 4"; break;
    }
    raw_index(&b, &ix, np, ne);
    expect_refused(K_INDEX, b.p, b.len, says, "bad fields");
    free(b.p);
    format_index_free(&ix);
  }
  /* counts far past the buffer */
  for (int c = 0; c < 2; c++) {
    struct bb b;
    sample_object(K_INDEX, &b);
    put_le32(b.p + 8 + 4 * c, UINT32_MAX);
    recrc(b.p, b.len);
    expect_refused(K_INDEX, b.p, b.len, "do not match", "huge count");
    free(b.p);
  }
}

static void
test_manifest_fields(void **state)
{
  static struct store_hash h[4];
  /* each is a list of runs of a 256-block volume */
  static const struct snap_run order[] = { { 20, 3, RUN_DATA, h },
                                           { 10, 2, RUN_ZERO, NULL } };
  static const struct snap_run overlap[] = { { 10, 5, RUN_ZERO, NULL },
                                             { 14, 1, RUN_DATA, h } };
  static const struct snap_run same[] = { { 10, 1, RUN_DATA, h },
                                          { 10, 1, RUN_DATA, h } };
  static const struct snap_run past[] = { { 255, 2, RUN_DATA, h } };
  static const struct snap_run after[] = { { 256, 1, RUN_ZERO, NULL } };
  static const struct snap_run wrap[] = {
    { UINT64_MAX - 1, 4, RUN_ZERO, NULL } };
  static const struct snap_run empty[] = { { 3, 0, RUN_ZERO, NULL } };
  static const struct snap_run kind[] = { { 3, 1, 3, NULL } };
  static const struct snap_run many[] = { { 0, 200, RUN_ZERO, NULL },
                                          { 200, 4, RUN_DATA, h } };
  static char longname[256];
  struct {
    const char *what, *says;
    struct raw_man r;
  } cases[32];
  size_t n = 0;

  (void)state;
  memset(longname, 'x', sizeof longname);
#define CASE(w, s, ...)                                                     \
  do {                                                                      \
    cases[n].what = (w);                                                    \
    cases[n].says = (s);                                                    \
    cases[n].r = good_raw_man();                                            \
    { struct raw_man *r = &cases[n].r; __VA_ARGS__; }                       \
    n++;                                                                    \
  } while (0)
#define RUNS(a) r->runs = (a), r->n_runs = r->real_runs = ARRAY_SIZE(a)
  CASE("runs out of order", "run 1", RUNS(order));
  CASE("runs overlapping", "run 1", RUNS(overlap));
  CASE("the same run twice", "run 1", RUNS(same));
  CASE("run past the volume", "run 0", RUNS(past));
  CASE("run after the volume", "run 0", RUNS(after));
  CASE("run wrapping around", "run 0", RUNS(wrap));
  CASE("empty run", "run 0", RUNS(empty));
  CASE("unknown run kind", "kind 3", RUNS(kind));
  CASE("n_runs larger than the buffer", "do not fit", r->n_runs = 100000);
  CASE("n_runs UINT32_MAX", "do not fit", r->n_runs = UINT32_MAX);
  CASE("one run more than written", NULL, r->n_runs = r->real_runs + 1);
  CASE("one run less than written", "unexpected bytes",
       r->n_runs = r->real_runs - 1);
  CASE("hashes past the end", "hashes do not fit", RUNS(many);
       r->max_hashes = 2);
  CASE("parent == id", "do not fit together", r->parent = r->id);
  CASE("parent > id", "do not fit together", r->parent = r->id + 1);
  CASE("id 0", "do not fit together", r->id = 0; r->parent = 0;
       r->chain = 0);
  CASE("full map with a chain", "do not fit together", r->parent = 0);
  CASE("delta with chain 0", "do not fit together", r->chain = 0);
  CASE("size not a multiple of 4096", "volume size",
       r->size_bytes = MAN_BLOCKS * STORE_BLOCK + 512);
  CASE("size 0", "volume size", r->size_bytes = 0);
  CASE("name with a NUL", "NUL", r->name = "night\0ly";
       r->name_len = r->name_len_field = 8);
  CASE("name of 256 bytes", "name of 256 bytes", r->name = longname;
       r->name_len = r->name_len_field = 256);
  CASE("name length 65535", "name of 65535 bytes",
       r->name_len_field = 65535);
  CASE("name longer than written", NULL, r->name_len_field = 200);
#undef CASE
#undef RUNS
  for (size_t i = 0; i < ARRAY_SIZE(h); i++)
    fill_hash(&h[i], 600 + (unsigned)i);
  for (size_t c = 0; c < n; c++) {
    struct bb b = { 0 };
    raw_manifest(&b, &cases[c].r);
    expect_refused(K_MANIFEST, b.p, b.len, cases[c].says, cases[c].what);
    free(b.p);
  }
  /* The longest name is fine, and a zero run may reach the last block. */
  {
    static char name255[256];
    static const struct snap_run tail[] = { { 0, 1, RUN_DATA, h },
                                            { 1, 255, RUN_ZERO, NULL } };
    struct raw_man r = good_raw_man();
    struct bb b = { 0 };
    char err[256];

    memset(name255, 'y', 255);
    r.name = name255;
    r.name_len = r.name_len_field = 255;
    r.runs = tail;
    r.n_runs = r.real_runs = 2;
    raw_manifest(&b, &r);
    if (parse_any(K_MANIFEST, b.p, b.len, err, sizeof err) != 0)
      fail_msg("a 255-byte name and a run to the last block: %s", err);
    free(b.p);
  }
}

static void
test_catalog_fields(void **state)
{
  static const uint64_t ordered[3] = { 3, 7, 11 };
  static const uint64_t unordered[3] = { 3, 11, 7 };
  static const uint64_t dup[3] = { 3, 7, 7 };
  static const uint64_t zero[3] = { 0, 7, 11 };
  static const struct {
    const char *what, *says;
    uint64_t next_id;
    const uint64_t *ids;
    uint32_t ns_written, ni_written;
  } cases[] = {
    { "ids out of order", "snapshot 2 has id 7", 12, unordered, 3, 2 },
    { "an id twice", "snapshot 2 has id 7", 12, dup, 3, 2 },
    { "id 0", "snapshot 0 has id 0", 12, zero, 3, 2 },
    { "id == next_id", "not below next id 11", 11, ordered, 3, 2 },
    { "id > next_id", "not below next id 5", 5, ordered, 3, 2 },
    { "n_snaps too large", "do not fit", 12, ordered, 1000, 2 },
    { "n_snaps UINT32_MAX", "do not fit", 12, ordered, UINT32_MAX, 2 },
    { "n_index too large", "index objects do not fit", 12, ordered, 3, 3 },
    { "n_index UINT32_MAX", "index objects do not fit", 12, ordered, 3,
      UINT32_MAX },
    { "n_index too small", "unexpected bytes", 12, ordered, 3, 1 },
    { "n_snaps too small", NULL, 12, ordered, 2, 2 },
  };

  (void)state;
  for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
    struct bb b = { 0 };
    raw_catalog(&b, cases[c].next_id, cases[c].ids, cases[c].ns_written, 3,
                cases[c].ni_written, 2);
    expect_refused(K_CATALOG, b.p, b.len, cases[c].says, cases[c].what);
    free(b.p);
  }
}

/* Objects past STORE_MAX_OBJECT are refused before anything is read (the
 * length is all that is looked at). */
static void
test_too_large(void **state)
{
  uint8_t hdr[64] = { 0 };
  char err[256];
  struct store_config c;
  struct pack_entry *e;
  uint32_t n;
  struct index_obj ix;
  struct catalog cat;

  (void)state;
  assert_int_equal(format_config_parse(hdr, (size_t)STORE_MAX_OBJECT + 1, &c,
                                       err, sizeof err), -1);
  assert_non_null(strstr(err, "config:"));
  assert_int_equal(format_pack_parse(hdr, (size_t)STORE_MAX_OBJECT + 1, &e,
                                     &n, err, sizeof err), -1);
  assert_non_null(strstr(err, "pack:"));
  assert_int_equal(format_index_parse(hdr, (size_t)STORE_MAX_OBJECT + 1, &ix,
                                      err, sizeof err), -1);
  assert_non_null(strstr(err, "index:"));
  assert_int_equal(format_catalog_parse(hdr, (size_t)STORE_MAX_OBJECT + 1,
                                        &cat, err, sizeof err), -1);
  assert_non_null(strstr(err, "catalog:"));
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_hash_hex),
    cmocka_unit_test(test_config_roundtrip),
    cmocka_unit_test(test_pack_roundtrip),
    cmocka_unit_test(test_index_roundtrip),
    cmocka_unit_test(test_manifest_roundtrip),
    cmocka_unit_test(test_manifest_encode_refuses),
    cmocka_unit_test(test_catalog_roundtrip),
    cmocka_unit_test(test_truncations),
    cmocka_unit_test(test_bit_flips),
    cmocka_unit_test(test_config_fields),
    cmocka_unit_test(test_pack_fields),
    cmocka_unit_test(test_index_fields),
    cmocka_unit_test(test_manifest_fields),
    cmocka_unit_test(test_catalog_fields),
    cmocka_unit_test(test_too_large),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
