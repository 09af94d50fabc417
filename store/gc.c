/* Deleting a snapshot and collecting garbage (docs/STORE.md):
 *
 * delete: the child of the deleted snapshot gets a new manifest (the
 * deleted delta merged under its own, or a full map when the deleted one
 * was its base), and the catalog drops the snapshot: the commit point.
 *
 * gc: mark every blob a manifest of the catalog names; repack the packs
 * that hold dead blobs (live blobs copied as stored into new packs), write
 * one index object for everything live, switch the catalog to it; then
 * sweep every object the catalog does not reach.  A crash before the
 * catalog is replaced leaves garbage, after it leaves unreferenced
 * objects; the next gc (store_gc(full=false) when a writer opens the
 * store) removes both. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-internal.h"
#include "util.h"

int
store_delete(struct store *s, uint64_t id, struct gc_stats *st, char *err,
             size_t errlen)
{
  const struct catalog *c = store_catalog(s);
  const struct catalog_snap *cs = store_catalog_find(s, id);
  const struct manifest *m, *cm = NULL;
  struct manifest nm;
  struct store_map smap = { 0 };
  struct catalog nc = { 0 };
  struct snap_run *runs = NULL;
  uint32_t nruns;
  struct store_hash child_name;
  struct gc_stats dummy;
  char damaged[512];
  uint8_t *buf = NULL;
  uint64_t before;
  size_t len, pos;
  int rc;

  if (!st)
    st = &dummy;
  memset(st, 0, sizeof *st);
  if (!cs) {
    snprintf(err, errlen, "%s: no snapshot %llu", store_desc(s),
             (unsigned long long)id);
    return -ENOENT;
  }
  pos = (size_t)(cs - c->snaps);
  /* A snapshot being written is a delta on the newest one, found at its
   * commit: with that one gone it would miss the changes it holds. */
  if (pos + 1 == c->n_snaps && store_writers_delta_open(s)) {
    snprintf(err, errlen, "%s: snapshot %llu is the newest, and a snapshot "
             "being written builds on it: delete it once that one is "
             "complete", store_desc(s), (unsigned long long)id);
    return -EBUSY;
  }
  /* A snapshot whose manifest is damaged or gone (verify says so) can
   * still be dropped, as long as no snapshot is built on it. */
  if (store_manifest(s, id, &m, damaged, sizeof damaged) < 0)
    m = NULL;
  if ((rc = store_usage(s, &before, err, errlen)) < 0)
    return rc;
  if (pos + 1 < c->n_snaps) {
    if ((rc = store_manifest(s, c->snaps[pos + 1].id, &cm, err, errlen)) < 0)
      return rc;
    if (cm->parent != id)
      cm = NULL;                /* a full map: it needs nothing of ours */
  }
  if (!m && cm) {
    snprintf(err, errlen, "%s (snapshot %llu is built on it: delete the "
             "snapshots after it first, newest first)", damaged,
             (unsigned long long)cm->id);
    return -EILSEQ;
  }
  child_name = cm ? c->snaps[pos + 1].manifest : (struct store_hash){ { 0 } };
  if (cm) {
    nm = *cm;
    nm.buf = NULL;
    if (m->parent == 0) {
      if ((rc = store_map_resolve(s, id, &smap, err, errlen)) < 0)
        goto out;
      map_overlay(smap.runs, smap.n_runs, cm->runs, cm->n_runs, false, &runs,
                  &nruns);
      nm.parent = 0;
      nm.chain = 0;
    } else {
      map_overlay(m->runs, m->n_runs, cm->runs, cm->n_runs, true, &runs,
                  &nruns);
      nm.parent = m->parent;
      nm.chain = cm->chain > 1 ? cm->chain - 1 : 1;
    }
    nm.runs = runs;
    nm.n_runs = nruns;
    if (format_manifest_encode(&nm, &buf, &len) == -1) {
      snprintf(err, errlen, "%s: internal error merging snapshot %llu into "
               "%llu", store_desc(s), (unsigned long long)id,
               (unsigned long long)cm->id);
      rc = -EINVAL;
      goto out;
    }
    if (len > STORE_MAX_OBJECT) {
      snprintf(err, errlen, "%s: deleting snapshot %llu would give snapshot "
               "%llu a map of %zu bytes, more than a store object may (%u)",
               store_desc(s), (unsigned long long)id,
               (unsigned long long)cm->id, len, STORE_MAX_OBJECT);
      rc = -EFBIG;
      goto out;
    }
    format_hash(buf, len, &child_name);
    rc = s->b->ops->put(s->b, KIND_SNAP, &child_name, buf, len, err, errlen);
    if (rc < 0)
      goto out;
  }
  nc.next_id = c->next_id;
  nc.snaps = malloc((c->n_snaps ? c->n_snaps : 1) * sizeof *nc.snaps);
  nc.index = malloc((c->n_index ? c->n_index : 1) * sizeof *nc.index);
  if (!nc.snaps || !nc.index)
    abort();
  for (size_t i = 0; i < c->n_snaps; i++) {
    if (i == pos)
      continue;
    nc.snaps[nc.n_snaps] = c->snaps[i];
    if (cm && i == pos + 1)
      nc.snaps[nc.n_snaps].manifest = child_name;
    nc.n_snaps++;
  }
  memcpy(nc.index, c->index, c->n_index * sizeof *nc.index);
  nc.n_index = c->n_index;
  if ((rc = store_replace_catalog(s, &nc, err, errlen)) < 0)
    goto out;
  /* Cached manifests no longer match the catalog. */
  if ((rc = store_reload(s, err, errlen)) < 0)
    goto out;
  rc = store_gc(s, true, st, err, errlen);
  st->bytes_before = before;   /* not counting the child's new manifest */

out:
  free(buf);
  free(runs);
  store_map_free(&smap);
  format_catalog_free(&nc);
  return rc;
}

/* ---- gc ---- */

struct gc {
  struct store *s;
  struct htab live;             /* blob hashes some manifest names */
  struct htab claimed;          /* live blobs given a place already */
  struct htab keep[KIND_COUNT]; /* objects the new catalog reaches */
  struct gc_stats *st;
  char *err;
  size_t errlen;
  int rc;
  bool unreadable;              /* a manifest could not be read */
};

static int
gc_mark(struct gc *g)
{
  const struct catalog *c = store_catalog(g->s);
  const struct manifest *m;
  char sub[512];

  for (uint32_t i = 0; i < c->n_snaps; i++) {
    htab_put(&g->keep[KIND_SNAP], &c->snaps[i].manifest, 1);
    if (store_manifest(g->s, c->snaps[i].id, &m, sub, sizeof sub) < 0) {
      /* Which blocks it needs is unknown: nothing is repacked (every
       * blob kept) until it is deleted or repaired. */
      g->unreadable = true;
      continue;
    }
    for (uint32_t r = 0; r < m->n_runs; r++)
      if (m->runs[r].kind == RUN_DATA)
        for (uint32_t k = 0; k < m->runs[r].count; k++)
          htab_put(&g->live, &m->runs[r].hashes[k], 1);
  }
  /* Blobs a snapshot being written found in the store stay live: its
   * commit will name them. */
  store_writers_live(g->s, &g->live, NULL);
  return 0;
}

static int
gc_load_index(struct gc *g, const struct store_hash *name,
              struct index_obj *ix)
{
  char sub[256], hex[65];
  void *buf;
  size_t len;
  int rc;

  rc = store_get_object(g->s, KIND_INDEX, name, &buf, &len, g->err,
                        g->errlen);
  if (rc < 0)
    return rc;
  if (format_index_parse(buf, len, ix, sub, sizeof sub) == -1) {
    format_hash_hex(name, hex);
    snprintf(g->err, g->errlen, "%s: index %s: %s", store_desc(g->s), hex,
             sub);
    free(buf);
    return -EILSEQ;
  }
  free(buf);
  return 0;
}

/* Copy the live, unclaimed blobs of one pack into pb (flushing into nix
 * as it fills). */
static int
gc_repack(struct gc *g, const struct store_hash *pack,
          struct pack_builder *pb, struct index_obj *nix)
{
  struct pack_entry *e = NULL;
  uint32_t n;
  char sub[256], hex[65];
  void *buf;
  size_t len;
  uint64_t bytes;
  int rc;

  rc = store_get_object(g->s, KIND_PACK, pack, &buf, &len, g->err,
                        g->errlen);
  if (rc < 0)
    return rc;
  if (format_pack_parse(buf, len, &e, &n, sub, sizeof sub) == -1) {
    format_hash_hex(pack, hex);
    snprintf(g->err, g->errlen, "%s: pack %s: %s", store_desc(g->s), hex,
             sub);
    free(buf);
    return -EILSEQ;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (htab_get(&g->live, &e[i].hash) < 0 ||
        !htab_add(&g->claimed, &e[i].hash, 1))
      continue;
    if (pack_builder_add(pb, &e[i].hash, (uint8_t *)buf + e[i].offset,
                         e[i].stored_len, e[i].flags) == 1) {
      rc = pack_builder_finish(pb, g->s->b, nix, &bytes, g->err, g->errlen);
      if (rc < 0)
        break;
      pack_builder_add(pb, &e[i].hash, (uint8_t *)buf + e[i].offset,
                       e[i].stored_len, e[i].flags);
    }
  }
  free(e);
  free(buf);
  return rc;
}

/* Repack and switch the catalog to one index of everything live. */
static int
gc_compact(struct gc *g)
{
  struct store *s = g->s;
  const struct catalog *c = store_catalog(s);
  uint32_t n_old = c->n_index;  /* c is the new catalog once replaced */
  struct index_obj *old = NULL, nix = { 0 };
  struct pack_builder *pb = NULL;
  struct htab dead_packs;       /* packs holding a dead or duplicate blob */
  struct catalog nc = { 0 };
  uint64_t bytes;
  bool any_dead = false;
  int rc = 0;

  htab_init(&dead_packs);
  old = calloc(c->n_index ? c->n_index : 1, sizeof *old);
  if (!old)
    abort();
  for (uint32_t i = 0; i < c->n_index; i++)
    if ((rc = gc_load_index(g, &c->index[i], &old[i])) < 0)
      goto out;
  /* Which packs hold something dead (or a second copy of a blob). */
  {
    struct htab seen;
    htab_init(&seen);
    for (uint32_t i = 0; i < c->n_index; i++)
      for (uint32_t k = 0; k < old[i].n_entries; k++) {
        const struct index_entry *e = &old[i].entries[k];
        if (htab_get(&g->live, &e->hash) < 0 ||
            !htab_add(&seen, &e->hash, 1)) {
          htab_put(&dead_packs, &old[i].packs[e->pack], 1);
          any_dead = true;
        }
      }
    htab_free(&seen);
  }
  if (!any_dead && c->n_index <= 1) {
    for (uint32_t i = 0; i < c->n_index; i++) {
      htab_put(&g->keep[KIND_INDEX], &c->index[i], 1);
      for (uint32_t p = 0; p < old[i].n_packs; p++)
        htab_put(&g->keep[KIND_PACK], &old[i].packs[p], 1);
    }
    goto out;
  }
  /* Blobs of clean packs keep their place; the rest are copied. */
  for (uint32_t i = 0; i < c->n_index; i++)
    for (uint32_t k = 0; k < old[i].n_entries; k++) {
      const struct index_entry *e = &old[i].entries[k];
      const struct store_hash *p = &old[i].packs[e->pack];
      uint32_t ord;
      if (htab_get(&dead_packs, p) >= 0 || htab_get(&g->live, &e->hash) < 0 ||
          !htab_add(&g->claimed, &e->hash, 1))
        continue;
      {
        int64_t v = htab_get(&g->keep[KIND_PACK], p);
        if (v < 0) {
          ord = nix.n_packs;
          nix.packs = realloc(nix.packs, (nix.n_packs + 1) *
                                             sizeof *nix.packs);
          if (!nix.packs)
            abort();
          nix.packs[nix.n_packs++] = *p;
          htab_put(&g->keep[KIND_PACK], p, ord);
        } else {
          ord = (uint32_t)v;
        }
      }
      nix.entries = realloc(nix.entries, (nix.n_entries + 1) *
                                             sizeof *nix.entries);
      if (!nix.entries)
        abort();
      nix.entries[nix.n_entries] = *e;
      nix.entries[nix.n_entries].pack = ord;
      nix.n_entries++;
    }
  pb = pack_builder_new();
  for (uint32_t i = 0; i < c->n_index; i++)
    for (uint32_t p = 0; p < old[i].n_packs; p++) {
      const struct store_hash *pk = &old[i].packs[p];
      if (htab_get(&dead_packs, pk) < 0)
        continue;
      if ((rc = gc_repack(g, pk, pb, &nix)) < 0)
        goto out;
      htab_put(&dead_packs, pk, 2);     /* done: not again from another
                                           index naming it */
      g->st->packs_rewritten++;
    }
  if ((rc = pack_builder_finish(pb, s->b, &nix, &bytes, g->err,
                                g->errlen)) < 0)
    goto out;
  for (uint32_t p = 0; p < nix.n_packs; p++)
    htab_put(&g->keep[KIND_PACK], &nix.packs[p], p);
  nc.next_id = c->next_id;
  nc.n_snaps = c->n_snaps;
  nc.snaps = malloc((c->n_snaps ? c->n_snaps : 1) * sizeof *nc.snaps);
  nc.index = malloc(sizeof *nc.index);
  if (!nc.snaps || !nc.index)
    abort();
  memcpy(nc.snaps, c->snaps, c->n_snaps * sizeof *nc.snaps);
  {
    struct store_hash *names;
    uint32_t n_names;
    if ((rc = store_put_index(s, &nix, &names, &n_names, &bytes, g->err,
                              g->errlen)) < 0)
      goto out;
    for (uint32_t i = 0; i < n_names; i++)
      htab_put(&g->keep[KIND_INDEX], &names[i], 1);
    if (n_names) {
      free(nc.index);
      nc.index = names;
      nc.n_index = n_names;
    }
  }
  if ((rc = store_replace_catalog(s, &nc, g->err, g->errlen)) < 0)
    goto out;
  rc = store_reload(s, g->err, g->errlen);

out:
  for (uint32_t i = 0; i < n_old && old; i++)
    format_index_free(&old[i]);
  free(old);
  format_index_free(&nix);
  format_catalog_free(&nc);
  pack_builder_free(pb);
  htab_free(&dead_packs);
  return rc;
}

/* Keep what the current catalog reaches (no repacking). */
static int
gc_keep_current(struct gc *g)
{
  const struct catalog *c = store_catalog(g->s);
  struct index_obj ix;
  int rc;

  for (uint32_t i = 0; i < c->n_index; i++) {
    if ((rc = gc_load_index(g, &c->index[i], &ix)) < 0)
      return rc;
    htab_put(&g->keep[KIND_INDEX], &c->index[i], 1);
    for (uint32_t p = 0; p < ix.n_packs; p++)
      htab_put(&g->keep[KIND_PACK], &ix.packs[p], 1);
    format_index_free(&ix);
  }
  for (uint32_t i = 0; i < c->n_snaps; i++)
    htab_put(&g->keep[KIND_SNAP], &c->snaps[i].manifest, 1);
  /* The packs a snapshot being written has put: not in the catalog yet. */
  store_writers_live(g->s, NULL, &g->keep[KIND_PACK]);
  return 0;
}

struct gc_sweep {
  struct gc *g;
  enum store_kind k;
  struct store_hash *doomed;
  size_t n, cap;
};

static int
gc_sweep_one(const struct store_hash *name, uint64_t size, void *arg)
{
  struct gc_sweep *sw = arg;

  (void)size;
  if (htab_get(&sw->g->keep[sw->k], name) >= 0)
    return 0;
  if (sw->n == sw->cap) {
    sw->cap = sw->cap ? sw->cap * 2 : 64;
    sw->doomed = realloc(sw->doomed, sw->cap * sizeof *sw->doomed);
    if (!sw->doomed)
      abort();
  }
  sw->doomed[sw->n++] = *name;
  return 0;
}

static int
gc_sweep(struct gc *g)
{
  struct backend *b = g->s->b;
  int rc = 0;

  /* Manifests and indexes first, packs last: a crash in between leaves
   * packs nothing names, never a name without its pack. */
  static const enum store_kind order[] = { KIND_SNAP, KIND_INDEX, KIND_PACK };
  for (size_t o = 0; o < ARRAY_SIZE(order) && rc == 0; o++) {
    struct gc_sweep sw = { .g = g, .k = order[o] };
    rc = b->ops->list(b, order[o], gc_sweep_one, &sw, g->err, g->errlen);
    for (size_t i = 0; rc == 0 && i < sw.n; i++) {
      rc = b->ops->del(b, order[o], &sw.doomed[i], g->err, g->errlen);
      if (rc == 0) {
        g->st->objects_deleted++;
        if (order[o] == KIND_PACK)
          g->st->packs_deleted++;
      }
    }
    free(sw.doomed);
  }
  return rc;
}

int
store_gc(struct store *s, bool full, struct gc_stats *st, char *err,
         size_t errlen)
{
  struct gc g = { .s = s, .st = st, .err = err, .errlen = errlen };
  struct gc_stats dummy;
  int rc;

  if (!st)
    st = g.st = &dummy;
  memset(st, 0, sizeof *st);
  if (!s->writer) {
    snprintf(err, errlen, "%s: opened read-only", store_desc(s));
    return -EROFS;
  }
  htab_init(&g.live);
  htab_init(&g.claimed);
  for (int k = 0; k < KIND_COUNT; k++)
    htab_init(&g.keep[k]);
  if ((rc = store_usage(s, &st->bytes_before, err, errlen)) < 0)
    goto out;
  if (full) {
    if ((rc = gc_mark(&g)) < 0 ||
        (!g.unreadable && (rc = gc_compact(&g)) < 0))
      goto out;
    /* The catalog may have changed: keep exactly what it reaches now. */
    for (int k = 0; k < KIND_COUNT; k++) {
      htab_free(&g.keep[k]);
      htab_init(&g.keep[k]);
    }
  }
  if ((rc = gc_keep_current(&g)) < 0 || (rc = gc_sweep(&g)) < 0)
    goto out;
  rc = store_usage(s, &st->bytes_after, err, errlen);

out:
  htab_free(&g.live);
  htab_free(&g.claimed);
  for (int k = 0; k < KIND_COUNT; k++)
    htab_free(&g.keep[k]);
  return rc;
}
