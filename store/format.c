/* The snapshot store's object formats (docs/STORE.md): little-endian
 * fields, a CRC-32C over each object, no I/O.  Parsers check every length
 * against the buffer before reading, and every count against what the
 * buffer can hold before allocating. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crc32c.h"
#include "format.h"
#include "util.h"

static const char CONFIG_MAGIC[8] = "DXSTORE1";
static const char PACK_MAGIC[8] = "DXPACK01";
static const char PACK_END[8] = "DXPKEND1";
static const char INDEX_MAGIC[8] = "DXINDEX1";
static const char SNAP_MAGIC[8] = "DXSNAP01";
static const char CATALOG_MAGIC[8] = "DXCATLG1";

/* ---- hashes ---- */

void
format_hash(const void *buf, size_t len, struct store_hash *out)
{
  unsigned int n = STORE_HASH_LEN;

  if (EVP_Digest(buf, len, out->b, &n, EVP_sha256(), NULL) != 1 ||
      n != STORE_HASH_LEN)
    abort();                    /* SHA-256 cannot fail on valid input */
}

void
format_hash_hex(const struct store_hash *h, char out[65])
{
  static const char hex[] = "0123456789abcdef";

  for (unsigned i = 0; i < STORE_HASH_LEN; i++) {
    out[2 * i] = hex[h->b[i] >> 4];
    out[2 * i + 1] = hex[h->b[i] & 15];
  }
  out[64] = '\0';
}

static int
hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

int
format_hash_parse_hex(const char *s, struct store_hash *out)
{
  for (unsigned i = 0; i < STORE_HASH_LEN; i++) {
    int hi = hexval(s[2 * i]), lo = hi < 0 ? -1 : hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return -1;
    out->b[i] = (uint8_t)(hi << 4 | lo);
  }
  return s[64] == '\0' ? 0 : -1;
}

bool
format_hash_is_zero(const struct store_hash *h)
{
  return util_is_zero(h->b, STORE_HASH_LEN);
}

/* ---- byte writer / reader ---- */

struct wbuf {
  uint8_t *p;
  size_t len, cap;
};

static void
w_reserve(struct wbuf *w, size_t more)
{
  if (w->len + more <= w->cap)
    return;
  while (w->len + more > w->cap)
    w->cap = w->cap ? w->cap * 2 : 256;
  w->p = realloc(w->p, w->cap);
  if (!w->p)
    abort();
}

static void
w_bytes(struct wbuf *w, const void *b, size_t n)
{
  w_reserve(w, n);
  memcpy(w->p + w->len, b, n);
  w->len += n;
}

static void
w_u8(struct wbuf *w, uint8_t v)
{
  w_bytes(w, &v, 1);
}

static void
w_u16(struct wbuf *w, uint16_t v)
{
  uint8_t b[2] = { (uint8_t)v, (uint8_t)(v >> 8) };
  w_bytes(w, b, 2);
}

static void
w_u32(struct wbuf *w, uint32_t v)
{
  uint8_t b[4];
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  w_bytes(w, b, 4);
}

static void
w_u64(struct wbuf *w, uint64_t v)
{
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  w_bytes(w, b, 8);
}

/* Append the CRC-32C of everything so far. */
static void
w_crc(struct wbuf *w)
{
  w_u32(w, crc32c(0, w->p, w->len));
}

struct rbuf {
  const uint8_t *p;
  size_t len, pos;
  bool bad;
};

static const uint8_t *
r_take(struct rbuf *r, size_t n)
{
  const uint8_t *q;

  if (r->bad || n > r->len - r->pos) {
    r->bad = true;
    return NULL;
  }
  q = r->p + r->pos;
  r->pos += n;
  return q;
}

static uint64_t
r_le(struct rbuf *r, unsigned n)
{
  const uint8_t *q = r_take(r, n);
  uint64_t v = 0;

  if (!q)
    return 0;
  for (unsigned i = 0; i < n; i++)
    v |= (uint64_t)q[i] << (8 * i);
  return v;
}

static uint8_t r_u8(struct rbuf *r) { return (uint8_t)r_le(r, 1); }
static uint16_t r_u16(struct rbuf *r) { return (uint16_t)r_le(r, 2); }
static uint32_t r_u32(struct rbuf *r) { return (uint32_t)r_le(r, 4); }
static uint64_t r_u64(struct rbuf *r) { return r_le(r, 8); }

static void
r_copy(struct rbuf *r, void *dst, size_t n)
{
  const uint8_t *q = r_take(r, n);

  if (q)
    memcpy(dst, q, n);
  else
    memset(dst, 0, n);
}

static size_t
r_left(const struct rbuf *r)
{
  return r->bad ? 0 : r->len - r->pos;
}

static uint32_t
get_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

/* Magic at the start and a CRC-32C of everything before the last 4
 * bytes; on success r covers the body (after the magic, before the CRC). */
static int
r_open(struct rbuf *r, const void *buf, size_t len, const char magic[8],
       const char *what, char *err, size_t errlen)
{
  if (len > STORE_MAX_OBJECT) {
    snprintf(err, errlen, "%s: %zu bytes, more than any valid one", what,
             len);
    return -1;
  }
  if (len < 12 || memcmp(buf, magic, 8) != 0) {
    snprintf(err, errlen, "%s: not a duplex %s object (bad magic or %zu "
             "bytes only)", what, what, len);
    return -1;
  }
  if (crc32c(0, buf, len - 4) != get_le32((const uint8_t *)buf + len - 4)) {
    snprintf(err, errlen, "%s: checksum mismatch (torn or damaged)", what);
    return -1;
  }
  r->p = buf;
  r->len = len - 4;
  r->pos = 8;
  r->bad = false;
  return 0;
}

/* The body was read exactly. */
static int
r_close(struct rbuf *r, const char *what, char *err, size_t errlen)
{
  if (r->bad) {
    snprintf(err, errlen, "%s: truncated (a length field points past the "
             "end)", what);
    return -1;
  }
  if (r->pos != r->len) {
    snprintf(err, errlen, "%s: %zu unexpected bytes at the end", what,
             r->len - r->pos);
    return -1;
  }
  return 0;
}

/* ---- config ---- */

void
format_config_encode(const struct store_config *c,
                     uint8_t out[FORMAT_CONFIG_LEN])
{
  struct wbuf w = { 0 };

  w_bytes(&w, CONFIG_MAGIC, 8);
  w_u32(&w, c->format);
  w_u32(&w, c->block_size);
  w_bytes(&w, c->uuid, 16);
  w_u64(&w, c->created_ns);
  w_u32(&w, 0);                 /* reserved */
  w_crc(&w);
  if (w.len != FORMAT_CONFIG_LEN)
    abort();
  memcpy(out, w.p, w.len);
  free(w.p);
}

int
format_config_parse(const void *buf, size_t len, struct store_config *c,
                    char *err, size_t errlen)
{
  struct rbuf r;

  if (r_open(&r, buf, len, CONFIG_MAGIC, "config", err, errlen) == -1)
    return -1;
  c->format = r_u32(&r);
  c->block_size = r_u32(&r);
  r_copy(&r, c->uuid, 16);
  c->created_ns = r_u64(&r);
  (void)r_u32(&r);
  if (r_close(&r, "config", err, errlen) == -1)
    return -1;
  if (c->format != STORE_FORMAT_VERSION) {
    snprintf(err, errlen, "config: store format %u; this duplex reads "
             "format %u", c->format, STORE_FORMAT_VERSION);
    return -1;
  }
  if (c->block_size != STORE_BLOCK) {
    snprintf(err, errlen, "config: block size %u; this duplex uses %u",
             c->block_size, STORE_BLOCK);
    return -1;
  }
  return 0;
}

/* ---- pack ---- */

size_t
format_pack_overhead(uint32_t n)
{
  return FORMAT_PACK_HDR_LEN + (size_t)n * FORMAT_PACK_ENTRY_LEN +
         FORMAT_PACK_FOOTER_LEN;
}

void
format_pack_header(uint8_t out[FORMAT_PACK_HDR_LEN])
{
  memcpy(out, PACK_MAGIC, 8);
}

size_t
format_pack_trailer(const struct pack_entry *e, uint32_t n,
                    uint32_t crc_so_far, uint8_t *out)
{
  struct wbuf w = { 0 };
  uint32_t crc;
  size_t len;

  for (uint32_t i = 0; i < n; i++) {
    w_bytes(&w, e[i].hash.b, STORE_HASH_LEN);
    w_u32(&w, e[i].offset);
    w_u32(&w, e[i].stored_len);
    w_u32(&w, e[i].flags);
  }
  w_u32(&w, n);
  crc = crc32c(crc_so_far, w.p, w.len);
  w_u32(&w, crc);
  w_bytes(&w, PACK_END, 8);
  len = w.len;
  memcpy(out, w.p, len);
  free(w.p);
  return len;
}

int
format_pack_parse(const void *buf, size_t len, struct pack_entry **out,
                  uint32_t *nout, char *err, size_t errlen)
{
  const uint8_t *b = buf;
  struct pack_entry *e = NULL;
  struct rbuf r;
  size_t tstart;
  uint32_t n, crc;

  *out = NULL;
  *nout = 0;
  if (len > STORE_MAX_OBJECT) {
    snprintf(err, errlen, "pack: %zu bytes, more than any valid one", len);
    return -1;
  }
  if (len < FORMAT_PACK_HDR_LEN + FORMAT_PACK_FOOTER_LEN ||
      memcmp(b, PACK_MAGIC, 8) != 0 || memcmp(b + len - 8, PACK_END, 8) != 0) {
    snprintf(err, errlen, "pack: not a duplex pack (bad magic or %zu bytes "
             "only)", len);
    return -1;
  }
  n = get_le32(b + len - 16);
  crc = get_le32(b + len - 12);
  if ((len - FORMAT_PACK_HDR_LEN - FORMAT_PACK_FOOTER_LEN) /
          FORMAT_PACK_ENTRY_LEN < n) {
    snprintf(err, errlen, "pack: %u entries do not fit in %zu bytes", n, len);
    return -1;
  }
  if (crc32c(0, b, len - 12) != crc) {
    snprintf(err, errlen, "pack: checksum mismatch (torn or damaged)");
    return -1;
  }
  tstart = len - FORMAT_PACK_FOOTER_LEN - (size_t)n * FORMAT_PACK_ENTRY_LEN;
  r.p = b;
  r.len = len - FORMAT_PACK_FOOTER_LEN;
  r.pos = tstart;
  r.bad = false;
  if (n) {
    e = calloc(n, sizeof *e);
    if (!e)
      abort();
  }
  for (uint32_t i = 0; i < n; i++) {
    r_copy(&r, e[i].hash.b, STORE_HASH_LEN);
    e[i].offset = r_u32(&r);
    e[i].stored_len = r_u32(&r);
    e[i].flags = r_u32(&r);
    if (e[i].offset < FORMAT_PACK_HDR_LEN || e[i].stored_len == 0 ||
        e[i].offset > tstart || e[i].stored_len > tstart - e[i].offset ||
        (e[i].flags & ~PACK_FLAG_ZSTD) != 0) {
      snprintf(err, errlen, "pack: entry %u (offset %u, %u bytes, flags %u) "
               "lies outside the blob area or is malformed", i, e[i].offset,
               e[i].stored_len, e[i].flags);
      free(e);
      return -1;
    }
  }
  *out = e;
  *nout = n;
  return 0;
}

/* ---- index ---- */

static int
hash_cmp(const void *a, const void *b)
{
  return memcmp(a, b, STORE_HASH_LEN);
}

int
format_index_encode(struct index_obj *ix, uint8_t **out, size_t *len)
{
  struct wbuf w = { 0 };

  qsort(ix->entries, ix->n_entries, sizeof *ix->entries, hash_cmp);
  w_bytes(&w, INDEX_MAGIC, 8);
  w_u32(&w, ix->n_packs);
  w_u32(&w, ix->n_entries);
  for (uint32_t i = 0; i < ix->n_packs; i++)
    w_bytes(&w, ix->packs[i].b, STORE_HASH_LEN);
  for (uint32_t i = 0; i < ix->n_entries; i++) {
    const struct index_entry *e = &ix->entries[i];
    if (e->pack >= ix->n_packs)
      abort();
    w_bytes(&w, e->hash.b, STORE_HASH_LEN);
    w_u32(&w, e->pack);
    w_u32(&w, e->offset);
    w_u32(&w, e->stored_len);
    w_u32(&w, e->flags);
  }
  w_crc(&w);
  *out = w.p;
  *len = w.len;
  return 0;
}

int
format_index_parse(const void *buf, size_t len, struct index_obj *ix,
                   char *err, size_t errlen)
{
  struct rbuf r;

  memset(ix, 0, sizeof *ix);
  if (r_open(&r, buf, len, INDEX_MAGIC, "index", err, errlen) == -1)
    return -1;
  ix->n_packs = r_u32(&r);
  ix->n_entries = r_u32(&r);
  if (r_left(&r) / STORE_HASH_LEN < ix->n_packs ||
      (r_left(&r) - (size_t)ix->n_packs * STORE_HASH_LEN) /
              FORMAT_INDEX_ENTRY_LEN != ix->n_entries ||
      (r_left(&r) - (size_t)ix->n_packs * STORE_HASH_LEN) %
              FORMAT_INDEX_ENTRY_LEN != 0) {
    snprintf(err, errlen, "index: %u packs and %u entries do not match its "
             "%zu bytes", ix->n_packs, ix->n_entries, len);
    ix->n_packs = ix->n_entries = 0;
    return -1;
  }
  ix->packs = calloc(ix->n_packs ? ix->n_packs : 1, sizeof *ix->packs);
  ix->entries = calloc(ix->n_entries ? ix->n_entries : 1,
                       sizeof *ix->entries);
  if (!ix->packs || !ix->entries)
    abort();
  for (uint32_t i = 0; i < ix->n_packs; i++)
    r_copy(&r, ix->packs[i].b, STORE_HASH_LEN);
  for (uint32_t i = 0; i < ix->n_entries; i++) {
    struct index_entry *e = &ix->entries[i];
    r_copy(&r, e->hash.b, STORE_HASH_LEN);
    e->pack = r_u32(&r);
    e->offset = r_u32(&r);
    e->stored_len = r_u32(&r);
    e->flags = r_u32(&r);
    if (e->pack >= ix->n_packs || e->stored_len == 0 ||
        (e->flags & ~PACK_FLAG_ZSTD) != 0 ||
        (i > 0 && hash_cmp(&ix->entries[i - 1].hash, &e->hash) >= 0)) {
      snprintf(err, errlen, "index: entry %u is malformed (pack %u of %u, "
               "%u bytes, flags %u, or out of order)", i, e->pack,
               ix->n_packs, e->stored_len, e->flags);
      format_index_free(ix);
      return -1;
    }
  }
  if (r_close(&r, "index", err, errlen) == -1) {
    format_index_free(ix);
    return -1;
  }
  return 0;
}

void
format_index_free(struct index_obj *ix)
{
  free(ix->packs);
  free(ix->entries);
  memset(ix, 0, sizeof *ix);
}

/* ---- manifest ---- */

const char *
format_reason_name(unsigned reason)
{
  switch (reason) {
  case SNAP_MANUAL: return "manual";
  case SNAP_SCHEDULE: return "schedule";
  case SNAP_BEFORE_RESYNC: return "before-resync";
  case SNAP_BEFORE_RESTORE: return "before-restore";
  }
  return "unknown";
}

int
format_reason_parse(const char *s, unsigned *reason)
{
  for (unsigned r = SNAP_MANUAL; r <= SNAP_BEFORE_RESTORE; r++)
    if (strcmp(s, format_reason_name(r)) == 0) {
      *reason = r;
      return 0;
    }
  return -1;
}

int
format_manifest_encode(const struct manifest *m, uint8_t **out, size_t *len)
{
  struct wbuf w = { 0 };
  size_t nlen = strlen(m->name);
  uint64_t prev_end = 0;

  if (nlen > STORE_NAME_MAX)
    return -1;
  w_bytes(&w, SNAP_MAGIC, 8);
  w_u64(&w, m->id);
  w_u64(&w, m->parent);
  w_u32(&w, m->chain);
  w_u64(&w, m->created_ns);
  w_u64(&w, m->epoch);
  w_u8(&w, m->reason);
  w_u8(&w, m->flags);
  w_u16(&w, (uint16_t)nlen);
  w_bytes(&w, m->name, nlen);
  w_u64(&w, m->size_bytes);
  w_bytes(&w, m->volume_uuid, 16);
  w_u64(&w, m->stored_bytes);
  w_u32(&w, m->n_runs);
  for (uint32_t i = 0; i < m->n_runs; i++) {
    const struct snap_run *run = &m->runs[i];
    if (run->count == 0 || run->start < prev_end ||
        (run->kind != RUN_DATA && run->kind != RUN_ZERO)) {
      free(w.p);
      return -1;
    }
    prev_end = run->start + run->count;
    w_u64(&w, run->start);
    w_u32(&w, run->count);
    w_u8(&w, run->kind);
    if (run->kind == RUN_DATA)
      w_bytes(&w, run->hashes, (size_t)run->count * STORE_HASH_LEN);
  }
  w_crc(&w);
  *out = w.p;
  *len = w.len;
  return 0;
}

int
format_manifest_parse(void *buf, size_t len, struct manifest *m, char *err,
                      size_t errlen)
{
  struct rbuf r;
  uint64_t prev_end = 0, blocks;
  uint16_t nlen;

  memset(m, 0, sizeof *m);
  m->buf = buf;
  if (r_open(&r, buf, len, SNAP_MAGIC, "manifest", err, errlen) == -1)
    goto bad;
  m->id = r_u64(&r);
  m->parent = r_u64(&r);
  m->chain = r_u32(&r);
  m->created_ns = r_u64(&r);
  m->epoch = r_u64(&r);
  m->reason = r_u8(&r);
  m->flags = r_u8(&r);
  nlen = r_u16(&r);
  if (nlen > STORE_NAME_MAX) {
    snprintf(err, errlen, "manifest: name of %u bytes", nlen);
    goto bad;
  }
  r_copy(&r, m->name, nlen);
  m->name[nlen] = '\0';
  if (memchr(m->name, '\0', nlen) != NULL) {
    snprintf(err, errlen, "manifest: name holds a NUL byte");
    goto bad;
  }
  m->size_bytes = r_u64(&r);
  r_copy(&r, m->volume_uuid, 16);
  m->stored_bytes = r_u64(&r);
  m->n_runs = r_u32(&r);
  if (r.bad) {
    snprintf(err, errlen, "manifest: truncated header");
    goto bad;
  }
  if (m->id == 0 || m->parent >= m->id || (m->parent == 0) != (m->chain == 0)) {
    snprintf(err, errlen, "manifest: id %llu, parent %llu, chain %u do not "
             "fit together", (unsigned long long)m->id,
             (unsigned long long)m->parent, m->chain);
    goto bad;
  }
  if (m->size_bytes == 0 || m->size_bytes % STORE_BLOCK != 0) {
    snprintf(err, errlen, "manifest: volume size %llu is not a positive "
             "multiple of %u", (unsigned long long)m->size_bytes,
             STORE_BLOCK);
    goto bad;
  }
  blocks = m->size_bytes / STORE_BLOCK;
  /* Each run takes at least 13 bytes. */
  if (m->n_runs > r_left(&r) / 13) {
    snprintf(err, errlen, "manifest: %u runs do not fit in %zu bytes",
             m->n_runs, len);
    goto bad;
  }
  m->runs = calloc(m->n_runs ? m->n_runs : 1, sizeof *m->runs);
  if (!m->runs)
    abort();
  for (uint32_t i = 0; i < m->n_runs; i++) {
    struct snap_run *run = &m->runs[i];
    run->start = r_u64(&r);
    run->count = r_u32(&r);
    run->kind = r_u8(&r);
    if (r.bad || run->count == 0 || run->start < prev_end ||
        run->start > blocks || run->count > blocks - run->start ||
        (run->kind != RUN_DATA && run->kind != RUN_ZERO)) {
      snprintf(err, errlen, "manifest: run %u (block %llu, %u blocks, kind "
               "%u) is malformed, overlaps the one before or lies past the "
               "volume's %llu blocks", i, (unsigned long long)run->start,
               run->count, run->kind, (unsigned long long)blocks);
      goto bad;
    }
    prev_end = run->start + run->count;
    if (run->kind == RUN_DATA) {
      if (r_left(&r) / STORE_HASH_LEN < run->count) {
        snprintf(err, errlen, "manifest: run %u: %u hashes do not fit", i,
                 run->count);
        goto bad;
      }
      run->hashes = (const struct store_hash *)r_take(&r,
          (size_t)run->count * STORE_HASH_LEN);
    }
  }
  if (r_close(&r, "manifest", err, errlen) == -1)
    goto bad;
  return 0;

bad:
  format_manifest_free(m);
  return -1;
}

void
format_manifest_free(struct manifest *m)
{
  free(m->runs);
  free(m->buf);
  m->runs = NULL;
  m->buf = NULL;
  m->n_runs = 0;
}

/* ---- catalog ---- */

int
format_catalog_encode(const struct catalog *c, uint8_t **out, size_t *len)
{
  struct wbuf w = { 0 };

  w_bytes(&w, CATALOG_MAGIC, 8);
  w_u64(&w, c->generation);
  w_u64(&w, c->next_id);
  w_u32(&w, c->n_snaps);
  for (uint32_t i = 0; i < c->n_snaps; i++) {
    if (i > 0 && c->snaps[i].id <= c->snaps[i - 1].id) {
      free(w.p);
      return -1;
    }
    w_u64(&w, c->snaps[i].id);
    w_bytes(&w, c->snaps[i].manifest.b, STORE_HASH_LEN);
  }
  w_u32(&w, c->n_index);
  for (uint32_t i = 0; i < c->n_index; i++)
    w_bytes(&w, c->index[i].b, STORE_HASH_LEN);
  w_crc(&w);
  *out = w.p;
  *len = w.len;
  return 0;
}

int
format_catalog_parse(const void *buf, size_t len, struct catalog *c,
                     char *err, size_t errlen)
{
  struct rbuf r;

  memset(c, 0, sizeof *c);
  if (r_open(&r, buf, len, CATALOG_MAGIC, "catalog", err, errlen) == -1)
    return -1;
  c->generation = r_u64(&r);
  c->next_id = r_u64(&r);
  c->n_snaps = r_u32(&r);
  if (c->n_snaps > r_left(&r) / (8 + STORE_HASH_LEN)) {
    snprintf(err, errlen, "catalog: %u snapshots do not fit in %zu bytes",
             c->n_snaps, len);
    c->n_snaps = 0;
    return -1;
  }
  c->snaps = calloc(c->n_snaps ? c->n_snaps : 1, sizeof *c->snaps);
  if (!c->snaps)
    abort();
  for (uint32_t i = 0; i < c->n_snaps; i++) {
    c->snaps[i].id = r_u64(&r);
    r_copy(&r, c->snaps[i].manifest.b, STORE_HASH_LEN);
    if (c->snaps[i].id == 0 || c->snaps[i].id >= c->next_id ||
        (i > 0 && c->snaps[i].id <= c->snaps[i - 1].id)) {
      snprintf(err, errlen, "catalog: snapshot %u has id %llu (out of order "
               "or not below next id %llu)", i,
               (unsigned long long)c->snaps[i].id,
               (unsigned long long)c->next_id);
      format_catalog_free(c);
      return -1;
    }
  }
  c->n_index = r_u32(&r);
  if (c->n_index > r_left(&r) / STORE_HASH_LEN) {
    snprintf(err, errlen, "catalog: %u index objects do not fit in %zu "
             "bytes", c->n_index, len);
    c->n_index = 0;
    format_catalog_free(c);
    return -1;
  }
  c->index = calloc(c->n_index ? c->n_index : 1, sizeof *c->index);
  if (!c->index)
    abort();
  for (uint32_t i = 0; i < c->n_index; i++)
    r_copy(&r, c->index[i].b, STORE_HASH_LEN);
  if (r_close(&r, "catalog", err, errlen) == -1) {
    format_catalog_free(c);
    return -1;
  }
  return 0;
}

void
format_catalog_free(struct catalog *c)
{
  free(c->snaps);
  free(c->index);
  memset(c, 0, sizeof *c);
}
