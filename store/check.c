/* Verify: every pack a snapshot needs is read whole, its name checked
 * against its contents, and every blob in it decompressed and re-hashed;
 * then every block of every snapshot (or of one) is looked up, and each
 * one that is missing or damaged is reported by snapshot and byte offset
 * (consecutive blocks with the same problem as one range). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-internal.h"
#include "util.h"

struct check {
  struct store *s;
  uint8_t *pack_state;          /* per store pack: 0 unchecked, 1 ok, 2 bad,
                                   3 needed */
  struct htab bad;              /* blob hash -> 1 when damaged */
  check_report_fn fn;
  void *arg;
  long problems;
  /* the range being reported */
  uint64_t r_snap, r_start, r_len;
  const char *r_what;
  char r_buf[300];
};

static void
check_flush(struct check *k)
{
  char msg[400];

  if (!k->r_len)
    return;
  if (k->r_len == 1)
    snprintf(msg, sizeof msg, "%s", k->r_what);
  else
    snprintf(msg, sizeof msg, "%s (%" PRIu64 " blocks, %" PRIu64 " bytes)",
             k->r_what, k->r_len, k->r_len * STORE_BLOCK);
  k->fn(k->r_snap, k->r_start * STORE_BLOCK, msg, k->arg);
  k->problems++;
  k->r_len = 0;
}

/* One damaged block of a snapshot; what must stay valid until flushed. */
static void
check_block(struct check *k, uint64_t snap, uint64_t block, const char *what)
{
  if (k->r_len && k->r_snap == snap && k->r_start + k->r_len == block &&
      strcmp(k->r_what, what) == 0) {
    k->r_len++;
    return;
  }
  check_flush(k);
  snprintf(k->r_buf, sizeof k->r_buf, "%s", what);
  k->r_what = k->r_buf;
  k->r_snap = snap;
  k->r_start = block;
  k->r_len = 1;
}

static void
check_problem(struct check *k, uint64_t snap, const char *what)
{
  check_flush(k);
  k->fn(snap, UINT64_MAX, what, k->arg);
  k->problems++;
}

/* Read pack p whole and check each blob the store's index places in it.
 * A damaged blob is reported through the snapshot blocks that use it; the
 * pack itself only when it cannot be read, or when it does not hash to its
 * name although every blob in it is good (damage between the blobs). */
static void
check_pack(struct check *k, uint32_t p)
{
  struct store *s = k->s;
  struct store_hash got;
  char err[512], hex[65];
  uint8_t block[STORE_BLOCK];
  void *buf = NULL;
  size_t len, bad = 0;
  bool pack_ok;

  pack_ok = s->b->ops->get(s->b, KIND_PACK, &s->packs[p], &buf, &len, err,
                           sizeof err) == 0;
  if (!pack_ok)
    check_problem(k, 0, err);
  k->pack_state[p] = pack_ok ? 1 : 2;
  for (size_t i = 0; i < s->n_blobs; i++) {
    const struct index_entry *e = &s->blobs[i];
    if (e->pack != p)
      continue;
    if (!pack_ok) {
      htab_put(&k->bad, &e->hash, 2);
      continue;
    }
    if ((uint64_t)e->offset + e->stored_len > len ||
        store_decode_blob(s, &e->hash, (uint8_t *)buf + e->offset,
                          e->stored_len, e->flags, block, err,
                          sizeof err) != 0) {
      htab_put(&k->bad, &e->hash, 1);
      bad++;
    }
  }
  if (pack_ok) {
    format_hash(buf, len, &got);
    if (memcmp(got.b, s->packs[p].b, STORE_HASH_LEN) != 0 && bad == 0) {
      format_hash_hex(&s->packs[p], hex);
      snprintf(err, sizeof err, "%s: pack object %s is damaged outside its "
               "blobs (its contents do not hash to its name; every block "
               "it holds still reads)", store_desc(s), hex);
      check_problem(k, 0, err);
    }
  }
  free(buf);
}

/* Walk one snapshot: mode 0 marks the packs it needs, mode 1 reports. */
static int
check_snapshot(struct check *k, uint64_t id, int mode, char *err,
               size_t errlen)
{
  struct store_map map;
  char what[300];
  int rc;

  rc = store_map_resolve(k->s, id, &map, err, errlen);
  if (rc < 0) {
    if (mode == 1) {
      snprintf(what, sizeof what, "cannot be read: %s", err);
      check_problem(k, id, what);
    }
    return 0;
  }
  for (uint32_t r = 0; r < map.n_runs; r++) {
    const struct snap_run *run = &map.runs[r];
    for (uint32_t b = 0; b < run->count; b++) {
      const struct store_hash *pack;
      const struct index_entry *e = store_find_blob(k->s, &run->hashes[b],
                                                    &pack);
      char hex[65];
      if (mode == 0) {
        if (e && k->pack_state[e->pack] == 0)
          k->pack_state[e->pack] = 3;
        continue;
      }
      if (!e) {
        format_hash_hex(&run->hashes[b], hex);
        snprintf(what, sizeof what, "block missing from the store (no "
                 "index entry for %.16s...)", hex);
        check_block(k, id, run->start + b, what);
      } else if (htab_get(&k->bad, &run->hashes[b]) >= 0) {
        format_hash_hex(pack, hex);
        snprintf(what, sizeof what, "block damaged or unreadable (pack "
                 "%.16s...)", hex);
        check_block(k, id, run->start + b, what);
      }
    }
  }
  check_flush(k);
  store_map_free(&map);
  return 0;
}

long
store_check(struct store *s, uint64_t id, check_report_fn fn, void *arg,
            char *err, size_t errlen)
{
  const struct catalog *c = store_catalog(s);
  struct check k = { .s = s, .fn = fn, .arg = arg };
  long rc = 0;

  if (id && !store_catalog_find(s, id)) {
    snprintf(err, errlen, "%s: no snapshot %" PRIu64, store_desc(s), id);
    return -ENOENT;
  }
  htab_init(&k.bad);
  k.pack_state = calloc(s->n_packs ? s->n_packs : 1, 1);
  if (!k.pack_state)
    abort();
  for (uint32_t i = 0; i < c->n_snaps; i++)
    if (!id || c->snaps[i].id == id)
      check_snapshot(&k, c->snaps[i].id, 0, err, errlen);
  for (uint32_t p = 0; p < s->n_packs; p++)
    if (k.pack_state[p] == 3 || (!id && k.pack_state[p] == 0))
      check_pack(&k, p);
  for (uint32_t i = 0; i < c->n_snaps; i++)
    if (!id || c->snaps[i].id == id)
      check_snapshot(&k, c->snaps[i].id, 1, err, errlen);
  rc = k.problems;
  htab_free(&k.bad);
  free(k.pack_state);
  return rc;
}
