/* A snapshot store opened for reading or writing: its config, the
 * catalog, every index object the catalog names (loaded into one table of
 * blob locations), manifests on demand, and blob reads that check what
 * they return against its hash. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zstd.h>

#include "htab.h"
#include "store-internal.h"
#include "util.h"

static void
store_forget(struct store *s)
{
  for (size_t i = 0; i < s->n_mans; i++) {
    format_manifest_free(s->mans[i].m);
    free(s->mans[i].m);
  }
  free(s->mans);
  s->mans = NULL;
  s->n_mans = 0;
  free(s->blobs);
  free(s->packs);
  s->blobs = NULL;
  s->packs = NULL;
  s->n_blobs = s->cap_blobs = s->n_packs = s->cap_packs = 0;
  htab_free(&s->blob_ix);
  htab_free(&s->pack_ix);
}

static uint32_t
store_pack_ordinal(struct store *s, const struct store_hash *name)
{
  int64_t v = htab_get(&s->pack_ix, name);

  if (v >= 0)
    return (uint32_t)v;
  if (s->n_packs == s->cap_packs) {
    s->cap_packs = s->cap_packs ? s->cap_packs * 2 : 64;
    s->packs = realloc(s->packs, s->cap_packs * sizeof *s->packs);
    if (!s->packs)
      abort();
  }
  s->packs[s->n_packs] = *name;
  htab_put(&s->pack_ix, name, (uint32_t)s->n_packs);
  return (uint32_t)s->n_packs++;
}

void
store_add_index(struct store *s, const struct store_hash *name,
                const struct index_obj *ix)
{
  (void)name;
  for (uint32_t i = 0; i < ix->n_entries; i++) {
    const struct index_entry *e = &ix->entries[i];
    struct index_entry *b;

    if (htab_get(&s->blob_ix, &e->hash) >= 0)
      continue;                 /* stored twice: the first one serves */
    if (s->n_blobs == s->cap_blobs) {
      s->cap_blobs = s->cap_blobs ? s->cap_blobs * 2 : 1024;
      s->blobs = realloc(s->blobs, s->cap_blobs * sizeof *s->blobs);
      if (!s->blobs)
        abort();
    }
    b = &s->blobs[s->n_blobs];
    *b = *e;
    b->pack = store_pack_ordinal(s, &ix->packs[e->pack]);
    htab_put(&s->blob_ix, &e->hash, (uint32_t)s->n_blobs++);
  }
}

/* Read and check an object whose name is its hash. */
int
store_get_object(struct store *s, enum store_kind k,
                 const struct store_hash *name, void **buf, size_t *len,
                 char *err, size_t errlen)
{
  struct store_hash h;
  char hex[65];
  int rc;

  rc = s->b->ops->get(s->b, k, name, buf, len, err, errlen);
  if (rc < 0)
    return rc;
  format_hash(*buf, *len, &h);
  if (memcmp(h.b, name->b, STORE_HASH_LEN) != 0) {
    format_hash_hex(name, hex);
    snprintf(err, errlen, "%s: %s object %s is damaged (its contents do "
             "not hash to its name)", s->b->desc, backend_kind_name(k), hex);
    free(*buf);
    *buf = NULL;
    return -EILSEQ;
  }
  return 0;
}

static int
store_load_index(struct store *s, const struct store_hash *name, char *err,
                 size_t errlen)
{
  struct index_obj ix;
  char sub[256], hex[65];
  void *buf;
  size_t len;
  int rc;

  rc = store_get_object(s, KIND_INDEX, name, &buf, &len, err, errlen);
  if (rc < 0)
    return rc;
  if (format_index_parse(buf, len, &ix, sub, sizeof sub) == -1) {
    format_hash_hex(name, hex);
    snprintf(err, errlen, "%s: index object %s: %s", s->b->desc, hex, sub);
    free(buf);
    return -EILSEQ;
  }
  free(buf);
  store_add_index(s, name, &ix);
  format_index_free(&ix);
  return 0;
}

static int
store_load_catalog(struct store *s, char *err, size_t errlen)
{
  char sub[256];
  void *buf;
  size_t len;
  int rc;

  format_catalog_free(&s->cat);
  rc = s->b->ops->ref_get(s->b, &buf, &len, err, errlen);
  if (rc == -ENOENT) {
    s->cat.next_id = 1;         /* a store with no snapshot yet */
    return 0;
  }
  if (rc < 0)
    return rc;
  if (format_catalog_parse(buf, len, &s->cat, sub, sizeof sub) == -1) {
    snprintf(err, errlen, "%s: %s (the previous catalog is in "
             "catalog.prev)", s->b->desc, sub);
    free(buf);
    return -EILSEQ;
  }
  free(buf);
  return 0;
}

int
store_reload(struct store *s, char *err, size_t errlen)
{
  int rc;

  store_forget(s);
  if ((rc = store_load_catalog(s, err, errlen)) < 0)
    return rc;
  for (uint32_t i = 0; i < s->cat.n_index; i++)
    if ((rc = store_load_index(s, &s->cat.index[i], err, errlen)) < 0)
      return rc;
  return 0;
}

static int
store_init_config(struct store *s, char *err, size_t errlen)
{
  uint8_t buf[FORMAT_CONFIG_LEN];

  s->cfg.format = STORE_FORMAT_VERSION;
  s->cfg.block_size = STORE_BLOCK;
  util_uuid_generate(s->cfg.uuid);
  s->cfg.created_ns = util_wall_ns();
  format_config_encode(&s->cfg, buf);
  return s->b->ops->config_put(s->b, buf, sizeof buf, err, errlen);
}

int
store_open(const char *dir, int flags, struct store **out, char *err,
           size_t errlen)
{
  struct store *s = calloc(1, sizeof *s);
  char sub[256];
  void *buf = NULL;
  size_t len;
  int rc;

  if (!s)
    abort();
  *out = NULL;
  s->writer = flags & STORE_WRITE;
  rc = backend_dir_open(dir, (flags & STORE_CREATE ? BACKEND_CREATE : 0) |
                        (s->writer ? BACKEND_WRITE : 0), &s->b, err, errlen);
  if (rc < 0) {
    free(s);
    return rc;
  }
  rc = s->b->ops->config_get(s->b, &buf, &len, sub, sizeof sub);
  if (rc == -ENOENT && (flags & STORE_CREATE)) {
    if ((rc = store_init_config(s, err, errlen)) < 0)
      goto fail;
  } else if (rc == -ENOENT) {
    snprintf(err, errlen, "%s: not a duplex snapshot store (no config "
             "file)", dir);
    goto fail;
  } else if (rc < 0) {
    snprintf(err, errlen, "%s", sub);
    goto fail;
  } else {
    if (format_config_parse(buf, len, &s->cfg, sub, sizeof sub) == -1) {
      snprintf(err, errlen, "%s: %s", dir, sub);
      rc = -EILSEQ;
      goto fail;
    }
  }
  free(buf);
  buf = NULL;
  if ((rc = store_reload(s, err, errlen)) < 0)
    goto fail;
  *out = s;
  return 0;

fail:
  free(buf);
  store_close(s);
  return rc < 0 ? rc : -EINVAL;
}

void
store_close(struct store *s)
{
  if (!s)
    return;
  store_forget(s);
  format_catalog_free(&s->cat);
  if (s->zctx)
    ZSTD_freeDCtx(s->zctx);
  if (s->b)
    s->b->ops->close(s->b);
  free(s);
}

const char *
store_desc(const struct store *s)
{
  return s->b->desc;
}

struct backend *
store_backend(struct store *s)
{
  return s->b;
}

const struct store_config *
store_config(const struct store *s)
{
  return &s->cfg;
}

const struct catalog *
store_catalog(const struct store *s)
{
  return &s->cat;
}

int
store_usage(struct store *s, uint64_t *bytes, char *err, size_t errlen)
{
  return s->b->ops->usage(s->b, bytes, err, errlen);
}

const struct catalog_snap *
store_catalog_find(const struct store *s, uint64_t id)
{
  size_t lo = 0, hi = s->cat.n_snaps;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->cat.snaps[mid].id == id)
      return &s->cat.snaps[mid];
    if (s->cat.snaps[mid].id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

int
store_manifest(struct store *s, uint64_t id, const struct manifest **out,
               char *err, size_t errlen)
{
  const struct catalog_snap *cs = store_catalog_find(s, id);
  struct manifest *m;
  char sub[256], hex[65];
  void *buf;
  size_t len;
  int rc;

  *out = NULL;
  for (size_t i = 0; i < s->n_mans; i++)
    if (s->mans[i].id == id) {
      *out = s->mans[i].m;
      return 0;
    }
  if (!cs) {
    snprintf(err, errlen, "%s: no snapshot %llu", s->b->desc,
             (unsigned long long)id);
    return -ENOENT;
  }
  rc = store_get_object(s, KIND_SNAP, &cs->manifest, &buf, &len, err,
                        errlen);
  if (rc < 0)
    return rc;
  m = calloc(1, sizeof *m);
  if (!m)
    abort();
  if (format_manifest_parse(buf, len, m, sub, sizeof sub) == -1) {
    format_hash_hex(&cs->manifest, hex);
    snprintf(err, errlen, "%s: snapshot %llu: manifest %s: %s", s->b->desc,
             (unsigned long long)id, hex, sub);
    free(m);
    return -EILSEQ;
  }
  if (m->id != id) {
    format_hash_hex(&cs->manifest, hex);
    snprintf(err, errlen, "%s: snapshot %llu: manifest %s belongs to "
             "snapshot %llu", s->b->desc, (unsigned long long)id, hex,
             (unsigned long long)m->id);
    format_manifest_free(m);
    free(m);
    return -EILSEQ;
  }
  s->mans = realloc(s->mans, (s->n_mans + 1) * sizeof *s->mans);
  if (!s->mans)
    abort();
  s->mans[s->n_mans].id = id;
  s->mans[s->n_mans].m = m;
  s->n_mans++;
  *out = m;
  return 0;
}

const struct index_entry *
store_find_blob(const struct store *s, const struct store_hash *h,
                const struct store_hash **pack)
{
  int64_t v = htab_get(&s->blob_ix, h);

  if (v < 0)
    return NULL;
  if (pack)
    *pack = &s->packs[s->blobs[v].pack];
  return &s->blobs[v];
}

/* Decompress (if needed) and check one stored blob. */
int
store_decode_blob(struct store *s, const struct store_hash *h,
                  const void *stored, size_t stored_len, uint32_t flags,
                  void *out, char *err, size_t errlen)
{
  struct store_hash got;
  char hex[65];

  if (flags & PACK_FLAG_ZSTD) {
    size_t n;
    if (!s->zctx && !(s->zctx = ZSTD_createDCtx()))
      abort();
    n = ZSTD_decompressDCtx(s->zctx, out, STORE_BLOCK, stored, stored_len);
    if (ZSTD_isError(n) || n != STORE_BLOCK) {
      format_hash_hex(h, hex);
      snprintf(err, errlen, "%s: block %s does not decompress: %s",
               s->b->desc, hex, ZSTD_isError(n) ? ZSTD_getErrorName(n)
               : "wrong length");
      return -EILSEQ;
    }
  } else if (stored_len != STORE_BLOCK) {
    format_hash_hex(h, hex);
    snprintf(err, errlen, "%s: block %s is stored with %zu bytes, not %u",
             s->b->desc, hex, stored_len, STORE_BLOCK);
    return -EILSEQ;
  } else {
    memcpy(out, stored, STORE_BLOCK);
  }
  format_hash(out, STORE_BLOCK, &got);
  if (memcmp(got.b, h->b, STORE_HASH_LEN) != 0) {
    format_hash_hex(h, hex);
    snprintf(err, errlen, "%s: block %s is damaged (its contents do not "
             "hash to its name)", s->b->desc, hex);
    return -EILSEQ;
  }
  return 0;
}

/* Only the blob is read (a range of its pack), and checked against its
 * own hash: reads of a snapshot whose blocks are spread over many packs
 * cost one small read each, and damage in one blob leaves the others of
 * the pack readable. */
int
store_read_blob(struct store *s, const struct store_hash *h, void *out,
                char *err, size_t errlen)
{
  const struct store_hash *pack;
  const struct index_entry *e = store_find_blob(s, h, &pack);
  uint8_t stored[2 * STORE_BLOCK];
  char hex[65], sub[512];
  int rc;

  if (!e) {
    format_hash_hex(h, hex);
    snprintf(err, errlen, "%s: block %s is missing (no index entry)",
             s->b->desc, hex);
    return -ENOENT;
  }
  if (e->stored_len > sizeof stored) {
    format_hash_hex(h, hex);
    snprintf(err, errlen, "%s: block %s is stored with %u bytes, more than "
             "any block takes (the index is damaged)", s->b->desc, hex,
             e->stored_len);
    return -EILSEQ;
  }
  rc = s->b->ops->get_range(s->b, KIND_PACK, pack, e->offset, stored,
                            e->stored_len, sub, sizeof sub);
  if (rc < 0) {
    format_hash_hex(h, hex);
    snprintf(err, errlen, "block %.16s...: %s", hex, sub);
    return rc;
  }
  return store_decode_blob(s, h, stored, e->stored_len, e->flags, out, err,
                           errlen);
}

/* 4 Mi entries of 48 bytes: 192 MiB, with room for the pack list. */
uint32_t store_index_max_entries = 4u << 20;

static int
store_entry_pack_cmp(const void *a, const void *b)
{
  const struct index_entry *x = a, *y = b;

  if (x->pack != y->pack)
    return x->pack < y->pack ? -1 : 1;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int
store_put_index(struct store *s, const struct index_obj *ix,
                struct store_hash **names, uint32_t *n_names,
                uint64_t *bytes, char *err, size_t errlen)
{
  uint32_t max = store_index_max_entries ? store_index_max_entries : 1;
  struct index_entry *e;
  int rc = 0;

  *names = NULL;
  *n_names = 0;
  *bytes = 0;
  if (ix->n_entries == 0)
    return 0;
  /* By pack, so that each part lists few packs. */
  e = malloc(ix->n_entries * sizeof *e);
  if (!e)
    abort();
  memcpy(e, ix->entries, ix->n_entries * sizeof *e);
  qsort(e, ix->n_entries, sizeof *e, store_entry_pack_cmp);
  for (uint32_t at = 0; at < ix->n_entries && rc == 0; at += max) {
    uint32_t n = MIN(max, ix->n_entries - at), last = UINT32_MAX;
    struct index_obj part = { 0 };
    struct store_hash name;
    uint8_t *buf;
    size_t len;

    part.packs = malloc(MIN(n, ix->n_packs) * sizeof *part.packs);
    part.entries = malloc(n * sizeof *part.entries);
    *names = realloc(*names, (*n_names + 1) * sizeof **names);
    if (!part.packs || !part.entries || !*names)
      abort();
    for (uint32_t k = 0; k < n; k++) {
      if (e[at + k].pack != last) {
        last = e[at + k].pack;
        part.packs[part.n_packs++] = ix->packs[last];
      }
      part.entries[k] = e[at + k];
      part.entries[k].pack = part.n_packs - 1;
    }
    part.n_entries = n;
    format_index_encode(&part, &buf, &len);
    format_hash(buf, len, &name);
    rc = s->b->ops->put(s->b, KIND_INDEX, &name, buf, len, err, errlen);
    if (rc == 0) {
      (*names)[(*n_names)++] = name;
      *bytes += len;
    }
    free(buf);
    format_index_free(&part);
  }
  free(e);
  if (rc < 0) {
    free(*names);
    *names = NULL;
    *n_names = 0;
  }
  return rc;
}

int
store_write_catalog(struct store *s, struct catalog *c, char *err,
                    size_t errlen)
{
  uint8_t *buf;
  size_t len;
  int rc;

  if (!s->writer) {
    snprintf(err, errlen, "%s: opened read-only", s->b->desc);
    return -EROFS;
  }
  c->generation = s->cat.generation + 1;
  if (format_catalog_encode(c, &buf, &len) == -1) {
    snprintf(err, errlen, "%s: internal error: catalog out of order",
             s->b->desc);
    return -EINVAL;
  }
  rc = s->b->ops->ref_put(s->b, buf, len, err, errlen);
  free(buf);
  return rc;
}

void
store_install_catalog(struct store *s, struct catalog *c)
{
  /* Manifests of snapshots that are gone, or replaced, are dropped from
   * the cache by the caller (store_reload) when it matters. */
  format_catalog_free(&s->cat);
  s->cat = *c;
  memset(c, 0, sizeof *c);
}

int
store_replace_catalog(struct store *s, struct catalog *c, char *err,
                      size_t errlen)
{
  int rc = store_write_catalog(s, c, err, errlen);

  if (rc == 0)
    store_install_catalog(s, c);
  return rc;
}

void (*store_io_released_hook)(void);

void
store_set_io_lock(struct store *s, pthread_mutex_t *lock)
{
  s->io_lock = lock;
}
