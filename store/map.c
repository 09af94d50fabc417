/* A snapshot's block map resolved from its manifest chain: the full map
 * at the base, each delta laid over it in order.  Runs only; hashes stay
 * in the manifests (loaded by the store for as long as it is open). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-internal.h"
#include "util.h"

struct runvec {
  struct snap_run *r;
  uint32_t n, cap;
};

static void
rv_push(struct runvec *v, uint64_t start, uint64_t count, uint8_t kind,
        const struct store_hash *hashes)
{
  struct snap_run *last = v->n ? &v->r[v->n - 1] : NULL;

  if (count == 0)
    return;
  /* Merge with the run before when contiguous (hashes only when they
   * continue in memory, as pieces of one split run do). */
  if (last && last->start + last->count == start && last->kind == kind &&
      (kind == RUN_ZERO || last->hashes + last->count == hashes) &&
      (uint64_t)last->count + count <= UINT32_MAX) {
    last->count += (uint32_t)count;
    return;
  }
  while (count > UINT32_MAX) {
    rv_push(v, start, UINT32_MAX, kind, hashes);
    start += UINT32_MAX;
    if (hashes)
      hashes += UINT32_MAX;
    count -= UINT32_MAX;
  }
  if (v->n == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 64;
    v->r = realloc(v->r, v->cap * sizeof *v->r);
    if (!v->r)
      abort();
  }
  v->r[v->n].start = start;
  v->r[v->n].count = (uint32_t)count;
  v->r[v->n].kind = kind;
  v->r[v->n].hashes = kind == RUN_DATA ? hashes : NULL;
  v->n++;
}

/* The part [from, to) of run r. */
static void
rv_push_part(struct runvec *v, const struct snap_run *r, uint64_t from,
             uint64_t to, bool keep_zero)
{
  if (from >= to || (r->kind == RUN_ZERO && !keep_zero))
    return;
  rv_push(v, from, to - from, r->kind,
          r->kind == RUN_DATA ? r->hashes + (from - r->start) : NULL);
}

int
map_overlay(const struct snap_run *base, uint32_t nb,
            const struct snap_run *top, uint32_t nt, bool keep_zero,
            struct snap_run **out, uint32_t *nout)
{
  struct runvec v = { 0 };
  uint32_t i = 0, j = 0;
  uint64_t pos = 0;             /* base is emitted up to here */

  /* Walk base runs, cutting out every top run; top runs are emitted in
   * order as they are reached. */
  while (i < nb || j < nt) {
    if (j < nt && (i >= nb || top[j].start <= MAX(base[i].start, pos))) {
      const struct snap_run *t = &top[j++];
      rv_push_part(&v, t, t->start, t->start + t->count, keep_zero);
      pos = MAX(pos, t->start + t->count);
      continue;
    }
    {
      const struct snap_run *b = &base[i];
      uint64_t from = MAX(b->start, pos);
      uint64_t to = b->start + b->count;
      if (j < nt && top[j].start < to)
        to = top[j].start;
      if (from < to)
        rv_push_part(&v, b, from, to, keep_zero);
      pos = MAX(pos, to);
      if (pos >= b->start + b->count)
        i++;
    }
  }
  *out = v.r;
  *nout = v.n;
  return 0;
}

int
store_map_resolve(struct store *s, uint64_t id, struct store_map *out,
                  char *err, size_t errlen)
{
  const struct manifest *chain[STORE_CHAIN_MAX + 2];
  const struct manifest *m;
  unsigned n = 0;
  struct snap_run *cur = NULL, *next;
  uint32_t ncur = 0, nnext;
  uint64_t at = id;
  int rc;

  memset(out, 0, sizeof *out);
  for (;;) {
    if ((rc = store_manifest(s, at, &m, err, errlen)) < 0) {
      if (at != id && rc == -ENOENT)
        snprintf(err, errlen, "%s: snapshot %llu needs snapshot %llu, "
                 "which is gone", store_desc(s), (unsigned long long)id,
                 (unsigned long long)at);
      return rc;
    }
    if (n == ARRAY_SIZE(chain)) {
      snprintf(err, errlen, "%s: snapshot %llu: chain of deltas longer "
               "than %u", store_desc(s), (unsigned long long)id, n);
      return -EILSEQ;
    }
    chain[n++] = m;
    if (m->parent == 0)
      break;
    at = m->parent;
  }
  if (chain[n - 1]->size_bytes != chain[0]->size_bytes) {
    snprintf(err, errlen, "%s: snapshot %llu: its base is %llu bytes, it "
             "is %llu", store_desc(s), (unsigned long long)id,
             (unsigned long long)chain[n - 1]->size_bytes,
             (unsigned long long)chain[0]->size_bytes);
    return -EILSEQ;
  }
  /* Base first (its zero runs dropped), then each delta. */
  map_overlay(NULL, 0, chain[n - 1]->runs, chain[n - 1]->n_runs, false, &cur,
              &ncur);
  for (unsigned k = n - 1; k-- > 0;) {
    map_overlay(cur, ncur, chain[k]->runs, chain[k]->n_runs, false, &next,
                &nnext);
    free(cur);
    cur = next;
    ncur = nnext;
  }
  out->blocks = chain[0]->size_bytes / STORE_BLOCK;
  out->runs = cur;
  out->n_runs = ncur;
  return 0;
}

void
store_map_free(struct store_map *m)
{
  free(m->runs);
  memset(m, 0, sizeof *m);
}

const struct store_hash *
store_map_lookup(const struct store_map *m, uint64_t block)
{
  uint32_t lo = 0, hi = m->n_runs;

  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const struct snap_run *r = &m->runs[mid];
    if (block < r->start)
      hi = mid;
    else if (block >= r->start + r->count)
      lo = mid + 1;
    else
      return r->kind == RUN_DATA ? &r->hashes[block - r->start] : NULL;
  }
  return NULL;
}

/* The entry of a map at block b, with the length of the stretch from b on
 * that the answer holds for (same run, or the same gap). */
static const struct store_hash *
map_at(const struct store_map *m, uint32_t *i, uint64_t b, uint64_t *len)
{
  while (*i < m->n_runs && m->runs[*i].start + m->runs[*i].count <= b)
    (*i)++;
  if (*i < m->n_runs && m->runs[*i].start <= b) {
    const struct snap_run *r = &m->runs[*i];
    *len = r->start + r->count - b;
    return &r->hashes[b - r->start];
  }
  *len = (*i < m->n_runs ? m->runs[*i].start : m->blocks) - b;
  return NULL;
}

int
map_diff(const struct store_map *a, const struct store_map *b,
         map_diff_fn fn, void *arg)
{
  uint64_t blocks = MAX(a->blocks, b->blocks), pos = 0;
  uint64_t dstart = 0, dlen = 0;
  uint32_t ia = 0, ib = 0;
  int rc;

  while (pos < blocks) {
    uint64_t la, lb, n, k;
    const struct store_hash *ha = pos < a->blocks ? map_at(a, &ia, pos, &la)
                                                  : NULL;
    const struct store_hash *hb = pos < b->blocks ? map_at(b, &ib, pos, &lb)
                                                  : NULL;
    if (pos >= a->blocks)
      la = blocks - pos;
    if (pos >= b->blocks)
      lb = blocks - pos;
    n = MIN(la, lb);
    for (k = 0; k < n; k++) {
      bool same;
      if (!ha && !hb) {
        k = n;                  /* both zero for the whole stretch */
        break;
      }
      same = ha && hb && memcmp(ha[k].b, hb[k].b, STORE_HASH_LEN) == 0;
      if (same)
        continue;
      if (dlen && dstart + dlen == pos + k) {
        dlen++;
      } else {
        if (dlen && (rc = fn(dstart, dlen, arg)) != 0)
          return rc;
        dstart = pos + k;
        dlen = 1;
      }
    }
    pos += n;
  }
  if (dlen)
    return fn(dstart, dlen, arg);
  return 0;
}
