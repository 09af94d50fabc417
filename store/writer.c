/* Taking a snapshot into the store: blocks are hashed, looked up (a block
 * already stored is not stored again), compressed when that pays and
 * packed; the commit writes the last pack, one index object for this
 * snapshot's packs, the manifest (a delta on the newest snapshot, or a
 * full map), and finally the catalog, the one commit point. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-internal.h"
#include "util.h"

struct w_entry {
  uint64_t block;
  struct store_hash hash;
};

struct w_zero {
  uint64_t start, count;
};

struct store_writer {
  struct store *s;
  struct snap_meta meta;
  bool full;
  const struct manifest *parent;
  uint64_t blocks;              /* of the volume */
  struct w_entry *e;
  size_t n, cap;
  struct w_zero *z;
  size_t nz, capz;
  struct htab pending;          /* blobs packed by this writer */
  struct pack_builder *pb;
  struct index_obj ix;          /* this writer's packs */
  ZSTD_CCtx *zc;
  struct store_writer_stats st;
  struct store_writer *next;    /* s->writers */
};

int
store_writer_begin(struct store *s, const struct snap_meta *meta, bool full,
                   struct store_writer **out, char *err, size_t errlen)
{
  const struct catalog *c = store_catalog(s);
  struct store_writer *w;

  *out = NULL;
  if (!s->writer) {
    snprintf(err, errlen, "%s: opened read-only", store_desc(s));
    return -EROFS;
  }
  if (meta->size_bytes == 0 || meta->size_bytes % STORE_BLOCK != 0) {
    snprintf(err, errlen, "%s: volume size %llu is not a positive multiple "
             "of %u", store_desc(s), (unsigned long long)meta->size_bytes,
             STORE_BLOCK);
    return -EINVAL;
  }
  w = calloc(1, sizeof *w);
  if (!w)
    abort();
  w->s = s;
  w->meta = *meta;
  w->blocks = meta->size_bytes / STORE_BLOCK;
  /* The parent of a delta is found at commit (the newest snapshot then).
   * A volume that changed size starts over with a full map (at commit: the
   * parent's map, cut or extended with zeros, under this one's blocks), as
   * blocks not given keep the parent's contents. */
  w->full = full || (meta->id == 0 && c->n_snaps == 0);
  if (meta->id != 0 && meta->id < c->next_id) {
    snprintf(err, errlen, "%s: snapshot id %llu is taken (the next free one "
             "is %llu)", store_desc(s), (unsigned long long)meta->id,
             (unsigned long long)c->next_id);
    free(w);
    return -EEXIST;
  }
  htab_init(&w->pending);
  w->pb = pack_builder_new();
  w->zc = ZSTD_createCCtx();
  if (!w->zc)
    abort();
  w->next = s->writers;
  s->writers = w;
  *out = w;
  return 0;
}

void
store_writer_abort(struct store_writer *w)
{
  struct store_writer **pp;

  if (!w)
    return;
  for (pp = &w->s->writers; *pp; pp = &(*pp)->next)
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  free(w->e);
  free(w->z);
  htab_free(&w->pending);
  pack_builder_free(w->pb);
  format_index_free(&w->ix);
  ZSTD_freeCCtx(w->zc);
  free(w);
}

void
store_writers_live(const struct store *s, struct htab *live,
                   struct htab *packs)
{
  for (const struct store_writer *w = s->writers; w; w = w->next) {
    for (size_t i = 0; live && i < w->n; i++)
      htab_put(live, &w->e[i].hash, 1);
    for (uint32_t p = 0; packs && p < w->ix.n_packs; p++)
      htab_put(packs, &w->ix.packs[p], 1);
  }
}

bool
store_writers_delta_open(const struct store *s)
{
  for (const struct store_writer *w = s->writers; w; w = w->next)
    if (!w->full)
      return true;
  return false;
}

void
store_writer_stats(const struct store_writer *w,
                   struct store_writer_stats *st)
{
  *st = w->st;
}

static int
w_flush_pack(struct store_writer *w, char *err, size_t errlen)
{
  uint64_t bytes;
  int rc;

  /* The pack and w->ix are this writer's alone until the commit. */
  store_io_release(w->s);
  rc = pack_builder_finish(w->pb, w->s->b, &w->ix, &bytes, err, errlen);
  store_io_retake(w->s);

  if (rc == 0)
    w->st.stored_bytes += bytes;
  return rc;
}

int
store_writer_zero(struct store_writer *w, uint64_t start, uint64_t count,
                  char *err, size_t errlen)
{
  if (start > w->blocks || count > w->blocks - start) {
    snprintf(err, errlen, "%s: zero range at block %llu (%llu blocks) lies "
             "past the volume's %llu blocks", store_desc(w->s),
             (unsigned long long)start, (unsigned long long)count,
             (unsigned long long)w->blocks);
    return -EINVAL;
  }
  if (count == 0)
    return 0;
  w->st.zero_blocks += count;
  if (w->nz && w->z[w->nz - 1].start + w->z[w->nz - 1].count == start) {
    w->z[w->nz - 1].count += count;   /* blocks given in order coalesce */
    return 0;
  }
  if (w->nz == w->capz) {
    w->capz = w->capz ? w->capz * 2 : 64;
    w->z = realloc(w->z, w->capz * sizeof *w->z);
    if (!w->z)
      abort();
  }
  w->z[w->nz].start = start;
  w->z[w->nz].count = count;
  w->nz++;
  return 0;
}

int
store_writer_block(struct store_writer *w, uint64_t block, const void *data,
                   char *err, size_t errlen)
{
  uint8_t packed[STORE_BLOCK];
  struct store_hash h;
  uint32_t flags;
  size_t len;
  int rc;

  if (block >= w->blocks) {
    snprintf(err, errlen, "%s: block %llu lies past the volume's %llu "
             "blocks", store_desc(w->s), (unsigned long long)block,
             (unsigned long long)w->blocks);
    return -EINVAL;
  }
  if (util_is_zero(data, STORE_BLOCK))
    return store_writer_zero(w, block, 1, err, errlen);
  format_hash(data, STORE_BLOCK, &h);
  if (w->n == w->cap) {
    w->cap = w->cap ? w->cap * 2 : 1024;
    w->e = realloc(w->e, w->cap * sizeof *w->e);
    if (!w->e)
      abort();
  }
  w->e[w->n].block = block;
  w->e[w->n].hash = h;
  w->n++;
  w->st.blocks++;
  if (store_find_blob(w->s, &h, NULL) || htab_get(&w->pending, &h) >= 0) {
    w->st.dedup_blobs++;
    return 0;
  }
  len = pack_compress(w->zc, data, packed, &flags);
  if (pack_builder_add(w->pb, &h, packed, len, flags) == 1) {
    if ((rc = w_flush_pack(w, err, errlen)) < 0)
      return rc;
    pack_builder_add(w->pb, &h, packed, len, flags);
  }
  htab_put(&w->pending, &h, 1);
  w->st.new_blobs++;
  return 0;
}

static int
w_entry_cmp(const void *a, const void *b)
{
  const struct w_entry *x = a, *y = b;

  return x->block < y->block ? -1 : x->block > y->block;
}

static int
w_zero_cmp(const void *a, const void *b)
{
  const struct w_zero *x = a, *y = b;

  return x->start < y->start ? -1 : x->start > y->start;
}

/* This snapshot's own entries as runs (the delta, zero runs included);
 * the hashes are copied into *hashes, which the runs point into. */
static int
w_build_runs(struct store_writer *w, struct snap_run **out, uint32_t *nout,
             struct store_hash **hashes, char *err, size_t errlen)
{
  struct snap_run *r = NULL;
  size_t nr = 0, capr = 0, i = 0, j = 0;
  struct store_hash *hs = NULL;

  if (w->n)                     /* no array yet when nothing was given */
    qsort(w->e, w->n, sizeof *w->e, w_entry_cmp);
  if (w->nz)
    qsort(w->z, w->nz, sizeof *w->z, w_zero_cmp);
  if (w->n) {
    hs = malloc(w->n * sizeof *hs);
    if (!hs)
      abort();
  }
  while (i < w->n || j < w->nz) {
    bool data = j >= w->nz || (i < w->n && w->e[i].block < w->z[j].start);
    uint64_t start = data ? w->e[i].block : w->z[j].start;
    uint64_t end = data ? start + 1 : start + w->z[j].count;
    struct snap_run *last = nr ? &r[nr - 1] : NULL;

    if (last && start < last->start + last->count) {
      snprintf(err, errlen, "%s: block %llu was given twice for one "
               "snapshot", store_desc(w->s), (unsigned long long)start);
      free(r);
      free(hs);
      return -EINVAL;
    }
    if (data)
      hs[i] = w->e[i].hash;
    /* A zero range may be longer than a run can say (2^32 blocks). */
    while (start < end) {
      uint64_t piece = MIN(end - start, UINT32_MAX);
      last = nr ? &r[nr - 1] : NULL;
      if (last && last->start + last->count == start &&
          last->kind == (data ? RUN_DATA : RUN_ZERO) &&
          last->count + piece <= UINT32_MAX) {
        last->count += (uint32_t)piece;
      } else {
        if (nr == capr) {
          capr = capr ? capr * 2 : 64;
          r = realloc(r, capr * sizeof *r);
          if (!r)
            abort();
        }
        r[nr].start = start;
        r[nr].count = (uint32_t)piece;
        r[nr].kind = data ? RUN_DATA : RUN_ZERO;
        r[nr].hashes = data ? &hs[i] : NULL;
        nr++;
      }
      start += piece;
    }
    if (data)
      i++;
    else
      j++;
  }
  *out = r;
  *nout = (uint32_t)nr;
  *hashes = hs;
  return 0;
}

/* drop_same: leave out the entries that equal the parent's. */
static int
w_drop_same(struct store_writer *w, char *err, size_t errlen)
{
  struct store_map pm;
  struct w_zero *nz = NULL;
  size_t n = 0, nzn = 0, capz = 0;
  int rc;

  if ((rc = store_map_resolve(w->s, w->parent->id, &pm, err, errlen)) < 0)
    return rc;
  for (size_t i = 0; i < w->n; i++) {
    const struct store_hash *ph = w->e[i].block < pm.blocks
        ? store_map_lookup(&pm, w->e[i].block) : NULL;
    if (ph && memcmp(ph->b, w->e[i].hash.b, STORE_HASH_LEN) == 0)
      continue;
    w->e[n++] = w->e[i];
  }
  w->n = n;
  /* Zero ranges: only the blocks the parent holds data in. */
  for (size_t i = 0; i < w->nz; i++)
    for (uint64_t b = w->z[i].start; b < w->z[i].start + w->z[i].count; b++) {
      if (b < pm.blocks && !store_map_lookup(&pm, b))
        continue;
      if (nzn && nz[nzn - 1].start + nz[nzn - 1].count == b) {
        nz[nzn - 1].count++;
        continue;
      }
      if (nzn == capz) {
        capz = capz ? capz * 2 : 64;
        nz = realloc(nz, capz * sizeof *nz);
        if (!nz)
          abort();
      }
      nz[nzn].start = b;
      nz[nzn].count = 1;
      nzn++;
    }
  free(w->z);
  w->z = nz;
  w->nz = nzn;
  w->capz = capz;
  store_map_free(&pm);
  return 0;
}

static int
w_put_object(struct store_writer *w, enum store_kind k, const uint8_t *buf,
             size_t len, struct store_hash *name, char *err, size_t errlen)
{
  int rc;

  format_hash(buf, len, name);
  store_io_release(w->s);
  rc = w->s->b->ops->put(w->s->b, k, name, buf, len, err, errlen);
  store_io_retake(w->s);
  if (rc == 0)
    w->st.stored_bytes += len;
  return rc;
}

int
store_writer_commit(struct store_writer *w, uint64_t *id,
                    struct store_writer_stats *stp, char *err, size_t errlen)
{
  struct store *s = w->s;
  const struct catalog *c = store_catalog(s);
  struct manifest m;
  struct snap_run *runs = NULL, *full = NULL;
  struct store_hash *hs = NULL, *ix_names = NULL, man_name;
  struct store_map pmap = { 0 };
  struct catalog nc = { 0 };
  uint8_t *buf = NULL;
  size_t len;
  uint32_t nruns, nfull, n_ix = 0;
  uint64_t ix_bytes;
  int rc;

  *id = 0;
  if (!w->full) {
    if (c->n_snaps == 0) {
      snprintf(err, errlen, "%s: no snapshot to build this delta on",
               store_desc(s));
      rc = -ENOENT;
      goto out;
    }
    rc = store_manifest(s, c->snaps[c->n_snaps - 1].id, &w->parent, err,
                        errlen);
    if (rc < 0)
      goto out;
    if (w->meta.drop_same && (rc = w_drop_same(w, err, errlen)) < 0)
      goto out;
  }
  if (w->meta.id != 0 && w->meta.id < c->next_id) {
    snprintf(err, errlen, "%s: snapshot id %llu is taken", store_desc(s),
             (unsigned long long)w->meta.id);
    rc = -EEXIST;
    goto out;
  }
  if ((rc = w_flush_pack(w, err, errlen)) < 0)
    goto out;
  store_io_release(s);
  rc = store_put_index(s, &w->ix, &ix_names, &n_ix, &ix_bytes, err, errlen);
  store_io_retake(s);
  if (rc < 0)
    goto out;
  w->st.stored_bytes += ix_bytes;
  if ((rc = w_build_runs(w, &runs, &nruns, &hs, err, errlen)) < 0)
    goto out;

  memset(&m, 0, sizeof m);
  m.id = w->meta.id ? w->meta.id : c->next_id;
  m.created_ns = w->meta.created_ns;
  m.epoch = w->meta.epoch;
  m.reason = w->meta.reason;
  snprintf(m.name, sizeof m.name, "%s", w->meta.name);
  m.size_bytes = w->meta.size_bytes;
  memcpy(m.volume_uuid, w->meta.volume_uuid, 16);
  if (!w->full && (w->parent->chain + 1 > STORE_CHAIN_MAX ||
                   w->parent->size_bytes != w->meta.size_bytes)) {
    /* Time for a full map again: the parent's map with this delta. */
    if ((rc = store_map_resolve(s, w->parent->id, &pmap, err, errlen)) < 0)
      goto out;
    map_overlay(pmap.runs, pmap.n_runs, runs, nruns, false, &full, &nfull);
    while (nfull > 0 && full[nfull - 1].start >= w->blocks)
      nfull--;                  /* a volume that shrank */
    if (nfull > 0 && full[nfull - 1].start + full[nfull - 1].count > w->blocks)
      full[nfull - 1].count = (uint32_t)(w->blocks - full[nfull - 1].start);
    m.runs = full;
    m.n_runs = nfull;
  } else if (w->full) {
    map_overlay(NULL, 0, runs, nruns, false, &full, &nfull);
    m.runs = full;
    m.n_runs = nfull;
  } else {
    m.parent = w->parent->id;
    m.chain = w->parent->chain + 1;
    m.runs = runs;
    m.n_runs = nruns;
  }
  /* stored_bytes includes the manifest itself: its size does not depend
   * on the value. */
  if (format_manifest_encode(&m, &buf, &len) == -1) {
    snprintf(err, errlen, "%s: internal error: snapshot runs out of order",
             store_desc(s));
    rc = -EINVAL;
    goto out;
  }
  free(buf);
  buf = NULL;
  if (len > STORE_MAX_OBJECT) {
    snprintf(err, errlen, "%s: the map of this snapshot would take %zu "
             "bytes, more than a store object may (%u): snapshots of a "
             "volume with more than %u Mi non-zero blocks cannot be stored",
             store_desc(s), len, STORE_MAX_OBJECT,
             STORE_MAX_OBJECT / STORE_HASH_LEN >> 20);
    rc = -EFBIG;
    goto out;
  }
  m.stored_bytes = w->st.stored_bytes + len;
  format_manifest_encode(&m, &buf, &len);
  if ((rc = w_put_object(w, KIND_SNAP, buf, len, &man_name, err, errlen)) < 0)
    goto out;

  nc.next_id = m.id + 1;
  nc.n_snaps = c->n_snaps + 1;
  nc.snaps = malloc(nc.n_snaps * sizeof *nc.snaps);
  nc.n_index = c->n_index + n_ix;
  nc.index = malloc((nc.n_index ? nc.n_index : 1) * sizeof *nc.index);
  if (!nc.snaps || !nc.index)
    abort();
  if (c->n_snaps)               /* a new store has no arrays yet */
    memcpy(nc.snaps, c->snaps, c->n_snaps * sizeof *nc.snaps);
  nc.snaps[c->n_snaps].id = m.id;
  nc.snaps[c->n_snaps].manifest = man_name;
  if (c->n_index)
    memcpy(nc.index, c->index, c->n_index * sizeof *nc.index);
  if (n_ix)
    memcpy(nc.index + c->n_index, ix_names, n_ix * sizeof *ix_names);
  /* Readers see the old catalog until it is installed. */
  store_io_release(s);
  rc = store_write_catalog(s, &nc, err, errlen);
  store_io_retake(s);
  if (rc < 0)
    goto out;
  store_install_catalog(s, &nc);
  if (n_ix)
    store_add_index(s, &ix_names[0], &w->ix);
  *id = m.id;
  w->st.stored_bytes = m.stored_bytes;
  if (stp)
    *stp = w->st;

out:
  free(buf);
  free(runs);
  free(full);
  free(hs);
  free(ix_names);
  store_map_free(&pmap);
  format_catalog_free(&nc);
  if (rc == 0)
    store_writer_abort(w);      /* frees; the snapshot is committed */
  return rc;
}
