/* The snapshot store on real directories (mkdtemp): snapshots of volume
 * images kept in memory, read back block by block and compared byte for
 * byte; dedup and growth figures; diffs against brute force; delete and gc
 * checked against the live set computed from the images; interrupted
 * deletes rebuilt from copies of the store; verify after damage; restore
 * onto empty, older and garbage files; aborted writers; the lock; a writer
 * letting go of its callers' lock while it writes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "htab.h"
#include "store-internal.h"
#include "store.h"
#include "util.h"

#define BS STORE_BLOCK

/* ---- helpers: randomness, directories ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t
rnd(void)
{
  uint64_t x = rng_state;

  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545f4914f6cdd1dull;
}

static uint64_t
rnd_below(uint64_t n)
{
  return rnd() % n;
}

static void
rnd_fill(void *buf, size_t len)
{
  uint8_t *p = buf;

  for (size_t i = 0; i < len; i += 8) {
    uint64_t v = rnd();
    memcpy(p + i, &v, MIN(8, len - i));
  }
}

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void
rm_rf(const char *path)
{
  nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void
run(const char *fmt, ...)
{
  char cmd[1024];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  if (system(cmd) != 0)
    fail_msg("command failed: %s", cmd);
}

struct tdir {
  char root[64];
  char store[128];
};

static void
tdir_make(struct tdir *t)
{
  snprintf(t->root, sizeof t->root, "/tmp/test-store.XXXXXX");
  assert_non_null(mkdtemp(t->root));
  snprintf(t->store, sizeof t->store, "%s/store", t->root);
}

static struct store *
open_store(const char *dir, int flags)
{
  struct store *s;
  char err[1024];

  if (store_open(dir, flags, &s, err, sizeof err) != 0)
    fail_msg("store_open %s: %s", dir, err);
  return s;
}

static void *
read_file(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  uint8_t *p;
  long n;

  if (!f)
    fail_msg("%s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  p = malloc(n ? (size_t)n : 1);
  assert_non_null(p);
  assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return p;
}

static void
write_file(const char *path, const void *buf, size_t len)
{
  FILE *f = fopen(path, "wb");

  if (!f)
    fail_msg("%s: %s", path, strerror(errno));
  assert_int_equal(fwrite(buf, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

/* The objects of one kind in a store directory (names from the files). */
struct names {
  struct store_hash *h;
  size_t n;
};

static void
list_objects(const char *store, const char *kind, struct names *out)
{
  char top[256];
  DIR *d;
  struct dirent *e;

  memset(out, 0, sizeof *out);
  snprintf(top, sizeof top, "%s/objects/%s", store, kind);
  d = opendir(top);
  if (!d)
    return;
  while ((e = readdir(d)) != NULL) {
    char sub[600];
    DIR *ds;
    struct dirent *f;
    if (e->d_name[0] == '.')
      continue;
    snprintf(sub, sizeof sub, "%s/%s", top, e->d_name);
    ds = opendir(sub);
    assert_non_null(ds);
    while ((f = readdir(ds)) != NULL) {
      if (f->d_name[0] == '.')
        continue;
      out->h = realloc(out->h, (out->n + 1) * sizeof *out->h);
      assert_non_null(out->h);
      if (format_hash_parse_hex(f->d_name, &out->h[out->n]) != 0)
        fail_msg("foreign file %s/%s", sub, f->d_name);
      out->n++;
    }
    closedir(ds);
  }
  closedir(d);
}

static size_t
count_objects(const char *store)
{
  static const char *const kinds[] = { "pack", "index", "snap" };
  size_t n = 0;

  for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
    struct names nm;
    list_objects(store, kinds[k], &nm);
    n += nm.n;
    free(nm.h);
  }
  return n;
}

static void
object_path(const char *store, const char *kind, const struct store_hash *h,
            char *out, size_t outlen)
{
  char hex[65];

  format_hash_hex(h, hex);
  snprintf(out, outlen, "%s/objects/%s/%.2s/%s", store, kind, hex, hex);
}

/* ---- a volume that changes, and its snapshots ---- */

struct vol {
  uint64_t blocks;
  uint8_t *img;                 /* current contents */
  uint8_t *dirty;               /* 0 untouched, 1 written, 2 trimmed */
  /* the image of every snapshot taken, by id */
  uint8_t **snap_img;
  uint64_t n_snap;              /* ids 1..n_snap */
};

static void
vol_init(struct vol *v, uint64_t blocks)
{
  memset(v, 0, sizeof *v);
  v->blocks = blocks;
  v->img = calloc(blocks, BS);
  v->dirty = calloc(blocks, 1);
  assert_true(v->img && v->dirty);
}

static void
vol_free(struct vol *v)
{
  for (uint64_t i = 0; i <= v->n_snap; i++)
    free(v->snap_img ? v->snap_img[i] : NULL);
  free(v->snap_img);
  free(v->img);
  free(v->dirty);
  memset(v, 0, sizeof *v);
}

static uint8_t *
vol_block(struct vol *v, uint64_t b)
{
  return v->img + b * BS;
}

static void
vol_write(struct vol *v, uint64_t b, const void *data)
{
  memcpy(vol_block(v, b), data, BS);
  v->dirty[b] = 1;
}

static void
vol_write_random(struct vol *v, uint64_t b)
{
  rnd_fill(vol_block(v, b), BS);
  v->dirty[b] = 1;
}

/* Text-like contents: compressible, so stored with zstd. */
static void
vol_write_text(struct vol *v, uint64_t b)
{
  uint8_t *p = vol_block(v, b);
  unsigned tag = (unsigned)rnd_below(1000000);

  for (unsigned i = 0; i < BS; i++)
    p[i] = (uint8_t)("the quick brown fox "[i % 20] + (i % 512 == 0));
  snprintf((char *)p, 16, "blk%u", tag);
  v->dirty[b] = 1;
}

static void
vol_trim(struct vol *v, uint64_t b, uint64_t n)
{
  memset(vol_block(v, b), 0, n * BS);
  memset(v->dirty + b, 2, n);
}

/* Scattered changes: random writes, compressible writes, a block copied
 * from elsewhere (dedup), rewrites to identical contents, zero writes and
 * trims. */
static void
vol_churn(struct vol *v, unsigned writes)
{
  uint8_t copy[BS];

  for (unsigned i = 0; i < writes; i++) {
    uint64_t b = rnd_below(v->blocks);
    switch (rnd_below(8)) {
    case 0:
      vol_write_text(v, b);
      break;
    case 1:                     /* the same contents again */
      memcpy(copy, vol_block(v, b), BS);
      vol_write(v, b, copy);
      break;
    case 2: {                   /* a copy of another block */
      uint64_t from = rnd_below(v->blocks);
      memcpy(copy, vol_block(v, from), BS);
      vol_write(v, b, copy);
      break;
    }
    case 3:                     /* zeros written */
      memset(copy, 0, BS);
      vol_write(v, b, copy);
      break;
    case 4: {                   /* a trimmed range */
      uint64_t n = 1 + rnd_below(MIN(16, v->blocks - b));
      vol_trim(v, b, n);
      break;
    }
    default:
      vol_write_random(v, b);
    }
  }
}

/* The whole volume written with a mix: random, zero, text, repeats. */
static void
vol_fill(struct vol *v)
{
  uint8_t same[BS];

  rnd_fill(same, BS);
  for (uint64_t b = 0; b < v->blocks; b++) {
    unsigned k = (unsigned)rnd_below(10);
    if (k < 6)
      vol_write_random(v, b);
    else if (k < 8)
      ;                         /* zero */
    else if (k < 9)
      vol_write(v, b, same);
    else
      vol_write_text(v, b);
  }
}

/* Take a snapshot of the volume: its dirty blocks (all with full), in
 * reverse order every other time (the writer takes any order). */
static uint64_t
vol_snapshot(struct store *s, struct vol *v, bool full,
             struct store_writer_stats *stp)
{
  struct snap_meta meta = { 0 };
  struct store_writer *w;
  struct store_writer_stats st;
  char err[1024];
  uint64_t id;
  bool rev = v->n_snap % 2;

  snprintf(meta.name, sizeof meta.name, "snap %" PRIu64, v->n_snap + 1);
  meta.created_ns = 1700000000000000000ull + v->n_snap * 1000000000ull;
  meta.epoch = v->n_snap + 1;
  meta.reason = SNAP_SCHEDULE;
  meta.size_bytes = v->blocks * BS;
  if (store_writer_begin(s, &meta, full, &w, err, sizeof err) != 0)
    fail_msg("writer_begin: %s", err);
  for (uint64_t i = 0; i < v->blocks; i++) {
    uint64_t b = rev ? v->blocks - 1 - i : i;
    int rc = 0;
    if (full || v->dirty[b] == 1) {
      rc = store_writer_block(w, b, vol_block(v, b), err, sizeof err);
    } else if (v->dirty[b] == 2) {
      uint64_t n = 1;
      if (rev) {
        while (b >= n && v->dirty[b - n] == 2)
          n++;
        rc = store_writer_zero(w, b - n + 1, n, err, sizeof err);
      } else {
        while (b + n < v->blocks && v->dirty[b + n] == 2)
          n++;
        rc = store_writer_zero(w, b, n, err, sizeof err);
      }
      i += n - 1;
    }
    if (rc != 0)
      fail_msg("writer: %s", err);
  }
  if (store_writer_commit(w, &id, &st, err, sizeof err) != 0)
    fail_msg("commit: %s", err);
  memset(v->dirty, 0, v->blocks);
  v->n_snap++;
  assert_true(id == v->n_snap);
  v->snap_img = realloc(v->snap_img, (v->n_snap + 1) * sizeof *v->snap_img);
  assert_non_null(v->snap_img);
  v->snap_img[0] = NULL;
  v->snap_img[id] = malloc(v->blocks * BS);
  assert_non_null(v->snap_img[id]);
  memcpy(v->snap_img[id], v->img, v->blocks * BS);
  if (stp)
    *stp = st;
  return id;
}

/* Every block of snapshot id through its resolved map equals img. */
static void
check_read_back(struct store *s, uint64_t id, const uint8_t *img,
                uint64_t blocks)
{
  struct store_map map;
  uint8_t buf[BS];
  char err[1024];
  uint64_t prev_end = 0;

  if (store_map_resolve(s, id, &map, err, sizeof err) != 0)
    fail_msg("resolve %" PRIu64 ": %s", id, err);
  assert_true(map.blocks == blocks);
  for (uint32_t r = 0; r < map.n_runs; r++) {
    if (map.runs[r].kind != RUN_DATA || map.runs[r].count == 0 ||
        map.runs[r].start < prev_end ||
        map.runs[r].start + map.runs[r].count > blocks)
      fail_msg("snapshot %" PRIu64 ": resolved run %u is malformed", id, r);
    prev_end = map.runs[r].start + map.runs[r].count;
  }
  for (uint64_t b = 0; b < blocks; b++) {
    const struct store_hash *h = store_map_lookup(&map, b);
    const uint8_t *want = img + b * BS;
    if (!h) {
      if (!util_is_zero(want, BS))
        fail_msg("snapshot %" PRIu64 ": block %" PRIu64 " reads as zeros",
                 id, b);
      continue;
    }
    if (store_read_blob(s, h, buf, err, sizeof err) != 0)
      fail_msg("snapshot %" PRIu64 ": block %" PRIu64 ": %s", id, b, err);
    if (memcmp(buf, want, BS) != 0)
      fail_msg("snapshot %" PRIu64 ": block %" PRIu64 " differs", id, b);
  }
  store_map_free(&map);
}

/* Every snapshot the catalog lists reads back as v kept it. */
static void
check_all(struct store *s, struct vol *v)
{
  const struct catalog *c = store_catalog(s);

  for (uint32_t i = 0; i < c->n_snaps; i++)
    check_read_back(s, c->snaps[i].id, v->snap_img[c->snaps[i].id],
                    v->blocks);
}

/* The hashes of the non-zero blocks of some snapshots' images. */
static void
live_set(struct vol *v, const uint64_t *ids, size_t n, struct htab *out)
{
  htab_init(out);
  for (size_t i = 0; i < n; i++)
    for (uint64_t b = 0; b < v->blocks; b++) {
      const uint8_t *p = v->snap_img[ids[i]] + b * BS;
      struct store_hash h;
      if (util_is_zero(p, BS))
        continue;
      format_hash(p, BS, &h);
      htab_put(out, &h, 1);
    }
}

/* The store holds exactly the blobs in `live`, each once, in packs the
 * index names; every object is reachable from the catalog. */
static void
check_store_exact(const char *dir, const struct htab *live)
{
  struct store *s = open_store(dir, 0);
  const struct catalog *c = store_catalog(s);
  struct names packs, idx, snaps;
  struct htab in_packs, named_packs, named;
  char err[1024];

  htab_init(&in_packs);
  htab_init(&named_packs);
  /* the store's table of blobs == live */
  assert_int_equal(s->n_blobs, live->n);
  for (size_t i = 0; i < s->n_blobs; i++)
    if (htab_get(live, &s->blobs[i].hash) < 0)
      fail_msg("the store keeps a blob no snapshot needs");
  for (size_t i = 0; i < live->cap; i++)
    if (live->slots[i].used &&
        !store_find_blob(s, &live->slots[i].key, NULL))
      fail_msg("a blob a snapshot needs is gone");
  /* the packs on disk hold each live blob once and nothing else */
  list_objects(dir, "pack", &packs);
  for (size_t p = 0; p < packs.n; p++) {
    char path[512];
    struct pack_entry *e;
    uint32_t n;
    size_t len;
    void *buf;
    object_path(dir, "pack", &packs.h[p], path, sizeof path);
    buf = read_file(path, &len);
    if (format_pack_parse(buf, len, &e, &n, err, sizeof err) != 0)
      fail_msg("%s: %s", path, err);
    for (uint32_t i = 0; i < n; i++) {
      if (htab_get(live, &e[i].hash) < 0)
        fail_msg("pack %s holds a dead blob", path);
      if (!htab_add(&in_packs, &e[i].hash, 1))
        fail_msg("a blob is stored twice (again in %s)", path);
    }
    free(e);
    free(buf);
  }
  assert_int_equal(in_packs.n, live->n);
  /* every object is named: packs by an index, indexes and manifests by
   * the catalog */
  for (size_t i = 0; i < s->n_packs; i++)
    htab_put(&named_packs, &s->packs[i], 1);
  for (size_t p = 0; p < packs.n; p++)
    if (htab_get(&named_packs, &packs.h[p]) < 0)
      fail_msg("a pack no index names is left");
  list_objects(dir, "index", &idx);
  htab_init(&named);
  for (uint32_t i = 0; i < c->n_index; i++)
    htab_put(&named, &c->index[i], 1);
  assert_int_equal(idx.n, c->n_index);
  for (size_t i = 0; i < idx.n; i++)
    assert_true(htab_get(&named, &idx.h[i]) >= 0);
  htab_free(&named);
  list_objects(dir, "snap", &snaps);
  htab_init(&named);
  for (uint32_t i = 0; i < c->n_snaps; i++)
    htab_put(&named, &c->snaps[i].manifest, 1);
  assert_int_equal(snaps.n, c->n_snaps);
  for (size_t i = 0; i < snaps.n; i++)
    assert_true(htab_get(&named, &snaps.h[i]) >= 0);
  htab_free(&named);
  free(packs.h);
  free(idx.h);
  free(snaps.h);
  htab_free(&in_packs);
  htab_free(&named_packs);
  store_close(s);
}

/* Every object in the directory is reachable from the catalog (no
 * garbage), and every object the catalog reaches is there. */
static void
check_no_garbage(const char *dir)
{
  struct store *s = open_store(dir, 0);
  const struct catalog *c = store_catalog(s);
  struct names packs, idx, snaps;
  struct htab named;

  htab_init(&named);
  for (size_t i = 0; i < s->n_packs; i++)
    htab_put(&named, &s->packs[i], 1);
  list_objects(dir, "pack", &packs);
  assert_int_equal(packs.n, s->n_packs);
  for (size_t i = 0; i < packs.n; i++)
    if (htab_get(&named, &packs.h[i]) < 0)
      fail_msg("an unreferenced pack is left");
  htab_free(&named);
  htab_init(&named);
  for (uint32_t i = 0; i < c->n_index; i++)
    htab_put(&named, &c->index[i], 1);
  list_objects(dir, "index", &idx);
  assert_int_equal(idx.n, c->n_index);
  for (size_t i = 0; i < idx.n; i++)
    if (htab_get(&named, &idx.h[i]) < 0)
      fail_msg("an unreferenced index is left");
  htab_free(&named);
  htab_init(&named);
  for (uint32_t i = 0; i < c->n_snaps; i++)
    htab_put(&named, &c->snaps[i].manifest, 1);
  list_objects(dir, "snap", &snaps);
  assert_int_equal(snaps.n, c->n_snaps);
  for (size_t i = 0; i < snaps.n; i++)
    if (htab_get(&named, &snaps.h[i]) < 0)
      fail_msg("an unreferenced manifest is left");
  htab_free(&named);
  free(packs.h);
  free(idx.h);
  free(snaps.h);
  store_close(s);
}

static uint64_t
usage_of_open(struct store *s)
{
  uint64_t bytes;
  char err[1024];

  if (store_usage(s, &bytes, err, sizeof err) != 0)
    fail_msg("usage: %s", err);
  return bytes;
}

static uint64_t
usage_of(const char *dir)
{
  struct store *s = open_store(dir, 0);
  uint64_t bytes;
  char err[1024];

  if (store_usage(s, &bytes, err, sizeof err) != 0)
    fail_msg("usage: %s", err);
  store_close(s);
  return bytes;
}

/* ---- (a) the first snapshot: dedup, zero blocks ---- */

static void
test_first_snapshot(void **state)
{
  enum { BLOCKS = 1024, ZEROS = 300, REPEATS = 124 };
  struct tdir t;
  struct vol v;
  struct store *s;
  struct store_writer_stats st;
  const struct manifest *m;
  uint8_t same[BS];
  uint64_t perm[BLOCKS], id, hashes = 0, stored_len = 0, usage, want;
  size_t mlen;
  char err[1024], path[512];

  (void)state;
  tdir_make(&t);
  vol_init(&v, BLOCKS);
  rnd_fill(same, BS);
  /* at shuffled places: 300 zero blocks, 124 copies of one block, 600
   * distinct random blocks */
  for (uint64_t b = 0; b < BLOCKS; b++)
    perm[b] = b;
  for (uint64_t b = BLOCKS - 1; b > 0; b--) {
    uint64_t j = rnd_below(b + 1), x = perm[b];
    perm[b] = perm[j];
    perm[j] = x;
  }
  for (uint64_t i = ZEROS; i < BLOCKS; i++) {
    if (i < ZEROS + REPEATS)
      vol_write(&v, perm[i], same);
    else
      vol_write_random(&v, perm[i]);
  }
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  id = vol_snapshot(s, &v, true, &st);
  assert_true(id == 1);
  assert_true(st.blocks == BLOCKS - ZEROS);
  assert_true(st.zero_blocks == ZEROS);
  assert_true(st.new_blobs == BLOCKS - ZEROS - REPEATS + 1);
  assert_true(st.dedup_blobs == REPEATS - 1);
  /* each distinct block stored once, raw (random data) */
  assert_int_equal(s->n_blobs, BLOCKS - ZEROS - REPEATS + 1);
  for (size_t i = 0; i < s->n_blobs; i++) {
    stored_len += s->blobs[i].stored_len;
    assert_int_equal(s->blobs[i].flags, 0);
  }
  assert_true(stored_len == (uint64_t)s->n_blobs * BS);
  /* the full map has no zero run and one hash per non-zero block */
  if (store_manifest(s, id, &m, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_true(m->parent == 0 && m->chain == 0);
  for (uint32_t r = 0; r < m->n_runs; r++) {
    assert_int_equal(m->runs[r].kind, RUN_DATA);
    hashes += m->runs[r].count;
  }
  assert_true(hashes == BLOCKS - ZEROS);
  /* zero blocks cost nothing: the store is one pack of the blobs, one
   * index and the manifest, byte for byte */
  object_path(t.store, "snap", &store_catalog(s)->snaps[0].manifest, path,
              sizeof path);
  free(read_file(path, &mlen));
  want = format_pack_overhead((uint32_t)s->n_blobs) + stored_len +
         8 + 8 + 32 + (uint64_t)s->n_blobs * FORMAT_INDEX_ENTRY_LEN + 4 +
         mlen;
  if (store_usage(s, &usage, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_true(usage == want);
  assert_true(m->stored_bytes == want);
  assert_true(st.stored_bytes == want);
  check_read_back(s, id, v.snap_img[id], BLOCKS);
  store_close(s);
  /* and again from a fresh open (from disk, no caches) */
  s = open_store(t.store, 0);
  check_read_back(s, id, v.snap_img[id], BLOCKS);
  store_close(s);
  assert_int_equal(count_objects(t.store), 3);
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- (b) a chain of deltas across STORE_CHAIN_MAX, (d) diffs ---- */

struct diff_collect {
  uint8_t *bits;                /* one byte per block */
  uint64_t blocks, last_end, n;
  bool bad_order;
};

static int
diff_collect_fn(uint64_t start, uint64_t count, void *arg)
{
  struct diff_collect *d = arg;

  /* ranges come in order, are not empty and never touch each other */
  if (count == 0 || start + count > d->blocks ||
      (d->n && start <= d->last_end))
    d->bad_order = true;
  for (uint64_t b = start; b < start + count && b < d->blocks; b++)
    d->bits[b] = 1;
  d->last_end = start + count;
  d->n++;
  return 0;
}

/* map_diff of every pair of snapshots equals the blocks whose contents
 * differ in the images. */
static void
check_diffs(struct store *s, struct vol *v, uint64_t step)
{
  uint64_t n = v->n_snap;
  struct store_map *maps = calloc(n + 1, sizeof *maps);
  struct store_hash *hs = calloc(n + 1, v->blocks * sizeof *hs);
  struct diff_collect d = { .blocks = v->blocks };
  char err[1024];
  uint64_t pairs = 0;

  assert_true(maps && hs);
  d.bits = malloc(v->blocks);
  assert_non_null(d.bits);
  for (uint64_t id = 1; id <= n; id++) {
    if (store_map_resolve(s, id, &maps[id], err, sizeof err) != 0)
      fail_msg("%s", err);
    for (uint64_t b = 0; b < v->blocks; b++)
      format_hash(v->snap_img[id] + b * BS, BS, &hs[id * v->blocks + b]);
  }
  for (uint64_t a = 1; a <= n; a += step)
    for (uint64_t b = 1; b <= n; b++) {
      memset(d.bits, 0, v->blocks);
      d.n = 0;
      d.bad_order = false;
      assert_int_equal(map_diff(&maps[a], &maps[b], diff_collect_fn, &d), 0);
      if (d.bad_order)
        fail_msg("diff %" PRIu64 " %" PRIu64 ": ranges out of order, empty "
                 "or touching", a, b);
      for (uint64_t k = 0; k < v->blocks; k++) {
        bool differ = memcmp(&hs[a * v->blocks + k], &hs[b * v->blocks + k],
                             sizeof *hs) != 0;
        if (differ != (d.bits[k] != 0))
          fail_msg("diff %" PRIu64 " %" PRIu64 ": block %" PRIu64 " %s",
                   a, b, k, differ ? "differs but is not listed"
                   : "is listed but is the same");
      }
      if (a == b)
        assert_true(d.n == 0);
      pairs++;
    }
  for (uint64_t id = 1; id <= n; id++)
    store_map_free(&maps[id]);
  print_message("diff: %" PRIu64 " pairs of snapshots checked\n", pairs);
  free(maps);
  free(hs);
  free(d.bits);
}

static void
test_chain(void **state)
{
  enum { BLOCKS = 1024, SNAPS = 70 };
  struct tdir t;
  struct vol v;
  struct store *s;
  char err[1024];

  (void)state;
  tdir_make(&t);
  vol_init(&v, BLOCKS);
  vol_fill(&v);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  vol_snapshot(s, &v, false, NULL);
  for (unsigned i = 2; i <= SNAPS; i++) {
    uint64_t id;
    vol_churn(&v, 10 + (unsigned)rnd_below(50));
    id = vol_snapshot(s, &v, false, NULL);
    check_read_back(s, id, v.snap_img[id], BLOCKS);
  }
  /* a full map every STORE_CHAIN_MAX deltas */
  for (uint64_t id = 1; id <= SNAPS; id++) {
    const struct manifest *m;
    uint32_t chain = (uint32_t)((id - 1) % (STORE_CHAIN_MAX + 1));
    if (store_manifest(s, id, &m, err, sizeof err) != 0)
      fail_msg("%s", err);
    if (m->chain != chain || m->parent != (chain ? id - 1 : 0))
      fail_msg("snapshot %" PRIu64 ": chain %u parent %" PRIu64
               ", expected chain %u", id, m->chain, m->parent, chain);
  }
  store_close(s);
  s = open_store(t.store, 0);
  check_all(s, &v);
  check_diffs(s, &v, 3);
  store_close(s);
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- map_overlay and map_diff against brute force ---- */

/* Runs over [0, n): random gaps and lengths, kinds as allowed. */
static uint32_t
random_runs(struct snap_run *r, uint64_t n, bool zero_ok,
            const struct store_hash *pool, size_t pool_n)
{
  uint32_t k = 0;
  uint64_t pos = rnd_below(4);

  while (pos < n) {
    uint64_t len = 1 + rnd_below(MIN(12, n - pos));
    r[k].start = pos;
    r[k].count = (uint32_t)len;
    r[k].kind = zero_ok && rnd_below(3) == 0 ? RUN_ZERO : RUN_DATA;
    r[k].hashes = r[k].kind == RUN_DATA ? pool + rnd_below(pool_n - len)
                                        : NULL;
    k++;
    pos += len + rnd_below(3) * rnd_below(5);   /* often adjacent */
  }
  return k;
}

/* Per block: NULL (no entry), &zero_mark (a zero entry) or a hash. */
static const struct store_hash zero_mark;

static void
runs_to_blocks(const struct snap_run *r, uint32_t n,
               const struct store_hash **val, uint64_t blocks)
{
  for (uint32_t i = 0; i < n; i++)
    for (uint64_t b = r[i].start; b < r[i].start + r[i].count; b++)
      if (b < blocks)
        val[b] = r[i].kind == RUN_DATA ? &r[i].hashes[b - r[i].start]
                                       : &zero_mark;
}

static void
test_overlay_diff_random(void **state)
{
  enum { MAXB = 300, POOL = 2048, ITER = 3000 };
  static struct store_hash pool[POOL];
  static struct snap_run base[MAXB], top[MAXB];
  static const struct store_hash *want[MAXB], *got[MAXB], *tv[MAXB];

  (void)state;
  rnd_fill(pool, sizeof pool);
  for (unsigned it = 0; it < ITER; it++) {
    uint64_t n = 1 + rnd_below(MAXB - 1);
    uint32_t nb = random_runs(base, n, it % 2, pool, POOL);
    uint32_t nt = random_runs(top, n, true, pool, POOL);
    for (int keep = 0; keep < 2; keep++) {
      struct snap_run *out = NULL;
      uint32_t nout = 0;
      uint64_t prev_end = 0;
      memset(want, 0, sizeof want);
      memset(tv, 0, sizeof tv);
      runs_to_blocks(base, nb, want, n);
      runs_to_blocks(top, nt, tv, n);
      for (uint64_t b = 0; b < n; b++) {
        if (tv[b])
          want[b] = tv[b];
        if (!keep && want[b] == &zero_mark)
          want[b] = NULL;
      }
      assert_int_equal(map_overlay(base, nb, top, nt, keep, &out, &nout), 0);
      for (uint32_t i = 0; i < nout; i++) {
        if (out[i].count == 0 || out[i].start < prev_end ||
            (out[i].kind != RUN_DATA && (!keep || out[i].kind != RUN_ZERO)))
          fail_msg("iteration %u keep %d: output run %u malformed", it, keep,
                   i);
        prev_end = out[i].start + out[i].count;
        if (i && out[i].start == out[i - 1].start + out[i - 1].count &&
            out[i].kind == RUN_ZERO && out[i - 1].kind == RUN_ZERO)
          fail_msg("iteration %u: adjacent zero runs not merged", it);
      }
      memset(got, 0, sizeof got);
      runs_to_blocks(out, nout, got, n);
      if (prev_end > n)
        fail_msg("iteration %u: output past the blocks", it);
      for (uint64_t b = 0; b < n; b++)
        if (got[b] != want[b] &&
            !(got[b] && want[b] && got[b] != &zero_mark &&
              want[b] != &zero_mark &&
              memcmp(got[b], want[b], sizeof *got[b]) == 0))
          fail_msg("iteration %u keep %d: block %" PRIu64 " wrong", it, keep,
                   b);
      free(out);
    }
    /* map_diff of two data-only maps of sizes that may differ */
    {
      uint64_t na = n, nb2 = rnd_below(2) ? n : 1 + rnd_below(MAXB - 1);
      struct snap_run *ra = NULL, *rb = NULL;
      uint32_t nra, nrb;
      struct store_map ma, mb;
      struct diff_collect d = { 0 };
      uint64_t blocks = MAX(na, nb2);
      static uint8_t bits[MAXB];
      nt = random_runs(top, nb2, false, pool, POOL);
      map_overlay(NULL, 0, base, nb, false, &ra, &nra);
      map_overlay(NULL, 0, top, nt, false, &rb, &nrb);
      ma = (struct store_map){ na, ra, nra };
      mb = (struct store_map){ nb2, rb, nrb };
      memset(bits, 0, sizeof bits);
      d.bits = bits;
      d.blocks = blocks;
      assert_int_equal(map_diff(&ma, &mb, diff_collect_fn, &d), 0);
      assert_false(d.bad_order);
      memset(want, 0, sizeof want);
      memset(tv, 0, sizeof tv);
      runs_to_blocks(ra, nra, want, na);
      runs_to_blocks(rb, nrb, tv, nb2);
      for (uint64_t b = 0; b < blocks; b++) {
        bool differ = (want[b] == NULL) != (tv[b] == NULL) ||
                      (want[b] && memcmp(want[b], tv[b], 32) != 0);
        if (differ != (bits[b] != 0))
          fail_msg("iteration %u: diff at block %" PRIu64 " (sizes %" PRIu64
                   ", %" PRIu64 ")", it, b, na, nb2);
      }
      free(ra);
      free(rb);
    }
  }
}

/* ---- (c) growth for 1% scattered changes ---- */

static void
test_growth(void **state)
{
  enum { BLOCKS = 16384, ROUNDS = 3 };
  struct tdir t;
  struct vol v;
  struct store *s;
  char err[1024];
  uint64_t before, after;

  (void)state;
  tdir_make(&t);
  vol_init(&v, BLOCKS);
  for (uint64_t b = 0; b < BLOCKS; b++)
    vol_write_random(&v, b);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  vol_snapshot(s, &v, false, NULL);
  if (store_usage(s, &before, err, sizeof err) != 0)
    fail_msg("%s", err);
  for (unsigned r = 0; r < ROUNDS; r++) {
    uint64_t changed = 0, growth, id;
    struct store_writer_stats st;
    const struct manifest *m;
    double ratio;
    /* 1%: distinct scattered blocks, random contents */
    while (changed < BLOCKS / 100) {
      uint64_t b = rnd_below(BLOCKS);
      if (v.dirty[b])
        continue;
      vol_write_random(&v, b);
      changed++;
    }
    id = vol_snapshot(s, &v, false, &st);
    if (store_usage(s, &after, err, sizeof err) != 0 ||
        store_manifest(s, id, &m, err, sizeof err) != 0)
      fail_msg("%s", err);
    growth = after - before;
    ratio = (double)growth / (double)(changed * BS);
    print_message("growth: round %u: %" PRIu64 " blocks (%" PRIu64
                  " bytes) changed, the store grew by %" PRIu64
                  " bytes: ratio %.4f\n", r + 1, changed, changed * BS,
                  growth, ratio);
    assert_true(growth * 100 <= changed * BS * 152);
    assert_true(m->stored_bytes == growth);
    assert_true(st.new_blobs == changed);
    before = after;
  }
  store_close(s);
  s = open_store(t.store, 0);
  check_read_back(s, v.n_snap, v.snap_img[v.n_snap], BLOCKS);
  check_read_back(s, 1, v.snap_img[1], BLOCKS);
  store_close(s);
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- (e) delete ---- */

/* Five snapshots of a 512-block volume, the store closed. */
static void
build_five(struct tdir *t, struct vol *v, unsigned blocks)
{
  struct store *s;

  tdir_make(t);
  vol_init(v, blocks);
  vol_fill(v);
  s = open_store(t->store, STORE_CREATE | STORE_WRITE);
  for (unsigned i = 0; i < 5; i++) {
    if (i)
      vol_churn(v, 40);
    vol_snapshot(s, v, false, NULL);
  }
  store_close(s);
}

static void
remaining_ids(const char *dir, uint64_t *ids, size_t *n)
{
  struct store *s = open_store(dir, 0);
  const struct catalog *c = store_catalog(s);

  *n = c->n_snaps;
  for (uint32_t i = 0; i < c->n_snaps; i++)
    ids[i] = c->snaps[i].id;
  store_close(s);
}

static void
check_after_delete(const char *dir, struct vol *v)
{
  struct store *s;
  struct htab live;
  uint64_t ids[16];
  size_t n;

  remaining_ids(dir, ids, &n);
  s = open_store(dir, 0);
  check_all(s, v);
  store_close(s);
  live_set(v, ids, n, &live);
  check_store_exact(dir, &live);
  htab_free(&live);
}

static void
test_delete(void **state)
{
  static const struct {
    unsigned n;
    uint64_t ids[5];
  } scenarios[] = {
    { 1, { 1 } }, { 1, { 3 } }, { 1, { 5 } }, { 3, { 1, 3, 5 } },
    { 2, { 2, 1 } }, { 2, { 4, 5 } }, { 5, { 3, 1, 5, 2, 4 } },
    { 5, { 5, 4, 3, 2, 1 } }, { 5, { 1, 2, 3, 4, 5 } },
  };

  (void)state;
  for (size_t sc = 0; sc < ARRAY_SIZE(scenarios); sc++) {
    struct tdir t;
    struct vol v;

    build_five(&t, &v, 512);
    check_after_delete(t.store, &v);
    for (unsigned k = 0; k < scenarios[sc].n; k++) {
      uint64_t id = scenarios[sc].ids[k], before = usage_of(t.store);
      struct store *s = open_store(t.store, STORE_WRITE);
      struct gc_stats st;
      char err[1024];
      if (store_delete(s, id, &st, err, sizeof err) != 0)
        fail_msg("delete %" PRIu64 ": %s", id, err);
      assert_null(store_catalog_find(s, id));
      store_close(s);
      assert_true(st.bytes_before == before);
      assert_true(st.bytes_after == usage_of(t.store));
      assert_true(st.bytes_after <= st.bytes_before);
      check_after_delete(t.store, &v);
    }
    if (scenarios[sc].n == 5) {
      /* an empty store: no object at all, and it takes snapshots again */
      struct store *s;
      assert_int_equal(count_objects(t.store), 0);
      assert_true(usage_of(t.store) == 0);
      s = open_store(t.store, STORE_WRITE);
      assert_int_equal(store_catalog(s)->n_snaps, 0);
      vol_churn(&v, 10);
      check_read_back(s, vol_snapshot(s, &v, true, NULL), v.img, v.blocks);
      store_close(s);
      check_after_delete(t.store, &v);
    }
    vol_free(&v);
    rm_rf(t.root);
  }
}

/* Deleting an unknown snapshot, with no stats wanted, and on a reader. */
static void
test_delete_errors(void **state)
{
  struct tdir t;
  struct vol v;
  struct store *s;
  char err[1024];

  (void)state;
  build_five(&t, &v, 64);
  s = open_store(t.store, STORE_WRITE);
  err[0] = '\0';
  assert_int_equal(store_delete(s, 9, NULL, err, sizeof err), -ENOENT);
  assert_non_null(strstr(err, "no snapshot 9"));
  assert_int_equal(store_delete(s, 2, NULL, err, sizeof err), 0);
  assert_int_equal(store_gc(s, true, NULL, err, sizeof err), 0);
  store_close(s);
  check_after_delete(t.store, &v);
  s = open_store(t.store, 0);
  assert_int_equal(store_delete(s, 3, NULL, err, sizeof err), -EROFS);
  assert_int_equal(store_gc(s, false, NULL, err, sizeof err), -EROFS);
  assert_non_null(strstr(err, "read-only"));
  store_close(s);
  vol_free(&v);
  rm_rf(t.root);
}

/* A snapshot whose manifest is damaged can be deleted once nothing is
 * built on it; meanwhile deletes of others work, and gc keeps every blob
 * (it cannot tell which ones the damaged snapshot needs). */
static void
test_delete_damaged(void **state)
{
  struct tdir t;
  struct vol v;
  struct store *s;
  char err[1024], path[512];
  size_t len;
  uint8_t *p;

  (void)state;
  for (int which = 3; which <= 5; which += 2) {
    build_five(&t, &v, 256);
    s = open_store(t.store, 0);
    object_path(t.store, "snap", &store_catalog_find(s, which)->manifest,
                path, sizeof path);
    store_close(s);
    p = read_file(path, &len);
    p[len / 2] ^= 1;
    write_file(path, p, len);
    free(p);
    s = open_store(t.store, STORE_WRITE);
    if (which == 3) {
      uint64_t before = usage_of_open(s);
      /* 4 is a delta on 3: refused, saying so */
      assert_int_equal(store_delete(s, 3, NULL, err, sizeof err), -EILSEQ);
      assert_non_null(strstr(err, "snapshot 4 is built on it"));
      assert_int_equal(store_catalog(s)->n_snaps, 5);
      /* newest first: 5 and 4 go (nothing repacked while 3 is damaged) */
      if (store_delete(s, 5, NULL, err, sizeof err) != 0 ||
          store_delete(s, 4, NULL, err, sizeof err) != 0)
        fail_msg("delete above a damaged snapshot: %s", err);
      assert_true(usage_of_open(s) <= before);
    }
    if (store_delete(s, (uint64_t)which, NULL, err, sizeof err) != 0)
      fail_msg("delete of damaged snapshot %d: %s", which, err);
    store_close(s);
    check_after_delete(t.store, &v);
    vol_free(&v);
    rm_rf(t.root);
  }
}

/* ---- (f) interrupted delete / gc ---- */

static void
test_interrupted_delete(void **state)
{
  static const uint64_t victims[] = { 1, 3, 5 };

  (void)state;
  for (size_t vi = 0; vi < ARRAY_SIZE(victims); vi++) {
    struct tdir t;
    struct vol v;
    char a[160], x[160], path[400];
    size_t l0, l1;
    void *c0, *c1;

    build_five(&t, &v, 512);
    snprintf(a, sizeof a, "%s/after", t.root);
    snprintf(x, sizeof x, "%s/crashed", t.root);
    run("cp -a %s %s", t.store, a);
    {
      struct store *s = open_store(a, STORE_WRITE);
      char err[1024];
      if (store_delete(s, victims[vi], NULL, err, sizeof err) != 0)
        fail_msg("%s", err);
      store_close(s);
    }
    /* the delete replaced the catalog twice (drop, then compaction) */
    snprintf(path, sizeof path, "%s/catalog", t.store);
    c0 = read_file(path, &l0);
    snprintf(path, sizeof path, "%s/catalog.prev", a);
    c1 = read_file(path, &l1);
    assert_false(l0 == l1 && memcmp(c0, c1, l0) == 0);
    free(c0);
    free(c1);
    /* state 0: crash before the catalog was replaced (old catalog, old
     * and new objects); 1: after the delete's catalog, before the
     * compaction's; 2: after the last catalog, before the sweep */
    for (int st = 0; st < 3; st++) {
      static const char *const cat[] = { NULL, "catalog.prev", "catalog" };
      struct store *s;
      struct htab live;
      uint64_t ids[8];
      size_t n;
      char err[1024];

      rm_rf(x);
      run("cp -a %s %s && cp -a %s/objects/. %s/objects/", t.store, x, a, x);
      if (cat[st])
        run("cp %s/%s %s/catalog", a, cat[st], x);
      s = open_store(x, STORE_WRITE);
      if (store_gc(s, false, NULL, err, sizeof err) != 0)
        fail_msg("gc: %s", err);
      store_close(s);
      check_no_garbage(x);
      remaining_ids(x, ids, &n);
      assert_int_equal(n, st == 0 ? 5 : 4);
      for (size_t i = 0; i < n; i++)
        assert_true(st == 0 || ids[i] != victims[vi]);
      s = open_store(x, 0);
      check_all(s, &v);
      store_close(s);
      /* a full gc then frees exactly what is dead */
      s = open_store(x, STORE_WRITE);
      if (store_gc(s, true, NULL, err, sizeof err) != 0)
        fail_msg("gc: %s", err);
      store_close(s);
      live_set(&v, ids, n, &live);
      check_store_exact(x, &live);
      htab_free(&live);
    }
    vol_free(&v);
    rm_rf(t.root);
  }
}

/* ---- (g) verify ---- */

struct report {
  uint64_t snap, off, blocks;
  char what[400];
};

struct reports {
  struct report r[4096];
  size_t n;
};

static void
collect_report(uint64_t snap, uint64_t off, const char *what, void *arg)
{
  struct reports *rs = arg;
  struct report *r;
  const char *p;

  assert_true(rs->n < ARRAY_SIZE(rs->r));
  r = &rs->r[rs->n++];
  r->snap = snap;
  r->off = off;
  r->blocks = 1;
  snprintf(r->what, sizeof r->what, "%s", what);
  /* a range says "(N blocks, M bytes)" */
  p = strstr(what, " blocks, ");
  if (p) {
    while (p > what && p[-1] >= '0' && p[-1] <= '9')
      p--;
    r->blocks = strtoull(p, NULL, 10);
  }
}

/* The snapshot blocks reported (snap * 2^32 + block -> 1), and how many
 * reports were not tied to a snapshot block. */
static size_t
expand_reports(const struct reports *rs, struct htab *out)
{
  size_t other = 0;

  htab_init(out);
  for (size_t i = 0; i < rs->n; i++) {
    const struct report *r = &rs->r[i];
    if (!r->snap || r->off == UINT64_MAX) {
      other++;
      continue;
    }
    for (uint64_t k = 0; k < r->blocks; k++) {
      struct store_hash key = { { 0 } };
      uint64_t v = r->snap << 32 | (r->off / BS + k);
      memcpy(key.b, &v, 8);
      memcpy(key.b + 8, &v, 8);
      if (!htab_add(out, &key, 1))
        fail_msg("snapshot %" PRIu64 " block %" PRIu64 " reported twice",
                 r->snap, r->off / BS + k);
    }
  }
  return other;
}

static void
expect_key(struct htab *want, uint64_t snap, uint64_t block)
{
  struct store_hash key = { { 0 } };
  uint64_t v = snap << 32 | block;

  memcpy(key.b, &v, 8);
  memcpy(key.b + 8, &v, 8);
  htab_put(want, &key, 1);
}

static void
same_keys(const struct htab *got, const struct htab *want, const char *what)
{
  if (got->n != want->n)
    fail_msg("%s: %zu snapshot blocks reported, %zu expected", what, got->n,
             want->n);
  for (size_t i = 0; i < want->cap; i++)
    if (want->slots[i].used && htab_get(got, &want->slots[i].key) < 0)
      fail_msg("%s: a damaged block was not reported", what);
}

static long
run_check(const char *dir, uint64_t id, struct reports *rs)
{
  struct store *s = open_store(dir, 0);
  char err[1024];
  long n;

  rs->n = 0;
  n = store_check(s, id, collect_report, rs, err, sizeof err);
  if (n < 0)
    fail_msg("check: %s", err);
  assert_int_equal((size_t)n, rs->n);
  store_close(s);
  return n;
}

static void
flip_byte(const char *path, size_t off)
{
  size_t len;
  uint8_t *p = read_file(path, &len);

  assert_true(off < len);
  p[off] ^= 0x5a;
  write_file(path, p, len);
  free(p);
}

static void
test_verify(void **state)
{
  static struct reports rs;
  struct tdir t;
  struct vol v;
  struct store *s;
  struct htab got, want;
  const struct store_hash *pack;
  const struct index_entry *e;
  struct store_hash h;
  char path[512], err[1024];
  uint64_t victim = UINT64_MAX;
  uint8_t buf[BS];

  (void)state;
  build_five(&t, &v, 256);
  /* clean */
  assert_int_equal(run_check(t.store, 0, &rs), 0);
  for (uint64_t id = 1; id <= 5; id++)
    assert_int_equal(run_check(t.store, id, &rs), 0);
  s = open_store(t.store, 0);
  assert_int_equal(store_check(s, 6, collect_report, &rs, err, sizeof err),
                   -ENOENT);
  store_close(s);

  /* A block of snapshot 1, stored raw, that appears once in it, and is
   * unchanged in 2 and 3 but gone in 4 and 5 (or not: whatever the images
   * say). */
  s = open_store(t.store, 0);
  for (uint64_t b = 0; b < v.blocks && victim == UINT64_MAX; b++) {
    const uint8_t *p = v.snap_img[1] + b * BS;
    unsigned uses = 0;
    if (util_is_zero(p, BS))
      continue;
    for (uint64_t k = 0; k < v.blocks; k++)
      uses += memcmp(v.snap_img[1] + k * BS, p, BS) == 0;
    format_hash(p, BS, &h);
    e = store_find_blob(s, &h, &pack);
    if (uses == 1 && e && e->flags == 0 &&
        memcmp(v.snap_img[2] + b * BS, p, BS) == 0)
      victim = b;
  }
  assert_true(victim != UINT64_MAX);
  e = store_find_blob(s, &h, &pack);
  object_path(t.store, "pack", pack, path, sizeof path);
  {
    struct store_hash ph = *pack;
    uint32_t off = e->offset;
    store_close(s);
    flip_byte(path, off + 100);
    /* every snapshot block holding that contents, and nothing else */
    htab_init(&want);
    for (uint64_t id = 1; id <= 5; id++)
      for (uint64_t b = 0; b < v.blocks; b++)
        if (memcmp(v.snap_img[id] + b * BS, v.snap_img[1] + victim * BS,
                   BS) == 0)
          expect_key(&want, id, b);
    run_check(t.store, 0, &rs);
    assert_int_equal(expand_reports(&rs, &got), 0);
    same_keys(&got, &want, "one damaged blob");
    for (size_t i = 0; i < rs.n; i++)
      assert_non_null(strstr(rs.r[i].what, "damaged"));
    htab_free(&got);
    /* verify of snapshot 2 alone reports its block only */
    run_check(t.store, 2, &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.r[0].snap == 2 && rs.r[0].off == victim * BS);
    htab_free(&want);
    /* reading: that block fails and says so, the others of the pack read */
    s = open_store(t.store, 0);
    assert_int_equal(store_read_blob(s, &h, buf, err, sizeof err), -EILSEQ);
    assert_non_null(strstr(err, "damaged"));
    for (size_t i = 0; i < s->n_blobs; i++)
      if (memcmp(&s->packs[s->blobs[i].pack], &ph, sizeof ph) == 0 &&
          memcmp(&s->blobs[i].hash, &h, sizeof h) != 0 &&
          store_read_blob(s, &s->blobs[i].hash, buf, err, sizeof err) != 0)
        fail_msg("another block of the damaged pack: %s", err);
    store_close(s);
    flip_byte(path, off + 100);
    assert_int_equal(run_check(t.store, 0, &rs), 0);
    /* damage between the blobs (the pack's magic): the pack is reported,
     * no snapshot block, and every block still reads */
    flip_byte(path, 2);
    run_check(t.store, 0, &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.r[0].snap == 0);
    assert_non_null(strstr(rs.r[0].what, "outside its blobs"));
    s = open_store(t.store, 0);
    check_all(s, &v);
    store_close(s);
    flip_byte(path, 2);
    assert_int_equal(run_check(t.store, 0, &rs), 0);
  }

  /* A pack file gone: every block it held, in every snapshot, and the
   * pack itself once.  The first pack holds snapshot 1 in block order
   * (long ranges of missing blocks), the last one scattered blocks. */
  for (int which = 0; which < 2; which++) {
    struct store_hash gone;
    s = open_store(t.store, 0);
    gone = s->packs[which ? s->n_packs - 1 : 0];
    char hex[65], moved[600];
    htab_init(&want);
    for (uint64_t id = 1; id <= 5; id++)
      for (uint64_t b = 0; b < v.blocks; b++) {
        const uint8_t *p = v.snap_img[id] + b * BS;
        if (util_is_zero(p, BS))
          continue;
        format_hash(p, BS, &h);
        e = store_find_blob(s, &h, &pack);
        assert_non_null(e);
        if (memcmp(pack, &gone, sizeof gone) == 0)
          expect_key(&want, id, b);
      }
    assert_true(want.n > 0);
    store_close(s);
    object_path(t.store, "pack", &gone, path, sizeof path);
    snprintf(moved, sizeof moved, "%s.moved", path);
    assert_int_equal(rename(path, moved), 0);
    run_check(t.store, 0, &rs);
    assert_int_equal(expand_reports(&rs, &got), 1);
    same_keys(&got, &want, "pack gone");
    format_hash_hex(&gone, hex);
    for (size_t i = 0; i < rs.n; i++)
      if (rs.r[i].snap == 0)
        assert_non_null(strstr(rs.r[i].what, hex));
    htab_free(&got);
    htab_free(&want);
    assert_int_equal(rename(moved, path), 0);
    print_message("verify: pack %d gone: %zu reports\n", which, rs.n);
  }

  /* A damaged manifest: that snapshot cannot be read, nor those built on
   * it; nothing else. */
  s = open_store(t.store, 0);
  {
    struct store_hash man[6];
    for (uint64_t id = 1; id <= 5; id++)
      man[id] = store_catalog_find(s, id)->manifest;
    store_close(s);
    object_path(t.store, "snap", &man[5], path, sizeof path);
    flip_byte(path, 40);
    run_check(t.store, 0, &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.r[0].snap == 5 && rs.r[0].off == UINT64_MAX);
    assert_non_null(strstr(rs.r[0].what, "cannot be read"));
    flip_byte(path, 40);
    object_path(t.store, "snap", &man[4], path, sizeof path);
    flip_byte(path, 40);
    run_check(t.store, 0, &rs);
    assert_int_equal(rs.n, 2);
    assert_true(rs.r[0].snap == 4 && rs.r[0].off == UINT64_MAX);
    assert_true(rs.r[1].snap == 5 && rs.r[1].off == UINT64_MAX);
    flip_byte(path, 40);
    assert_int_equal(run_check(t.store, 0, &rs), 0);
  }
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- (h) restore ---- */

static void
restore_and_compare(const char *dir, uint64_t id, const char *to,
                    const uint8_t *img, uint64_t blocks,
                    const uint8_t *had, uint64_t had_blocks)
{
  struct store *s = open_store(dir, 0);
  struct restore_stats st, want = { 0 };
  char err[1024];
  size_t len;
  uint8_t *got;

  /* what must be written, zeroed or left */
  for (uint64_t b = 0; b < blocks; b++) {
    const uint8_t *w = img + b * BS;
    static const uint8_t zeros[BS];
    const uint8_t *h = had && b < had_blocks ? had + b * BS : zeros;
    want.blocks++;
    if (memcmp(w, h, BS) == 0)
      want.same_blocks++;
    else if (util_is_zero(w, BS))
      want.zeroed_blocks++;
    else
      want.written_blocks++;
  }
  if (store_restore(s, id, to, &st, err, sizeof err) != 0)
    fail_msg("restore %" PRIu64 ": %s", id, err);
  store_close(s);
  got = read_file(to, &len);
  assert_int_equal(len, blocks * BS);
  if (memcmp(got, img, len) != 0)
    fail_msg("restore %" PRIu64 " to %s: contents differ", id, to);
  free(got);
  if (st.blocks != want.blocks || st.written_blocks != want.written_blocks ||
      st.zeroed_blocks != want.zeroed_blocks ||
      st.same_blocks != want.same_blocks)
    fail_msg("restore %" PRIu64 ": %" PRIu64 " blocks, %" PRIu64 " written, "
             "%" PRIu64 " zeroed, %" PRIu64 " same; expected %" PRIu64 ", %"
             PRIu64 ", %" PRIu64 ", %" PRIu64, id, st.blocks,
             st.written_blocks, st.zeroed_blocks, st.same_blocks, want.blocks,
             want.written_blocks, want.zeroed_blocks, want.same_blocks);
}

static void
test_restore(void **state)
{
  struct tdir t;
  struct vol v;
  char to[256];
  uint8_t *garbage;

  (void)state;
  build_five(&t, &v, 256);
  snprintf(to, sizeof to, "%s/restored.img", t.root);
  /* onto nothing, then onto older and newer states */
  restore_and_compare(t.store, 1, to, v.snap_img[1], v.blocks, NULL, 0);
  restore_and_compare(t.store, 3, to, v.snap_img[3], v.blocks, v.snap_img[1],
                      v.blocks);
  restore_and_compare(t.store, 5, to, v.snap_img[5], v.blocks, v.snap_img[3],
                      v.blocks);
  restore_and_compare(t.store, 5, to, v.snap_img[5], v.blocks, v.snap_img[5],
                      v.blocks);
  restore_and_compare(t.store, 2, to, v.snap_img[2], v.blocks, v.snap_img[5],
                      v.blocks);
  /* onto garbage, longer and shorter than the volume */
  garbage = malloc((v.blocks + 40) * BS);
  assert_non_null(garbage);
  rnd_fill(garbage, (v.blocks + 40) * BS);
  write_file(to, garbage, (v.blocks + 40) * BS);
  restore_and_compare(t.store, 4, to, v.snap_img[4], v.blocks, garbage,
                      v.blocks);
  write_file(to, garbage, 100 * BS);
  restore_and_compare(t.store, 3, to, v.snap_img[3], v.blocks, garbage, 100);
  free(garbage);
  /* errors: no such snapshot, a directory as target */
  {
    struct store *s = open_store(t.store, 0);
    struct restore_stats st;
    char err[1024];
    assert_int_equal(store_restore(s, 9, to, &st, err, sizeof err), -ENOENT);
    assert_true(store_restore(s, 1, t.root, &st, err, sizeof err) < 0);
    store_close(s);
  }
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- (i) an aborted writer ---- */

static void
test_abort(void **state)
{
  enum { BLOCKS = 8192 };
  struct tdir t;
  struct vol v;
  struct store *s;
  struct store_writer *w;
  struct snap_meta meta = { .size_bytes = BLOCKS * (uint64_t)BS };
  char path[256], err[1024];
  void *cat0, *cat1;
  size_t l0, l1, objects0;
  uint8_t block[BS];

  (void)state;
  tdir_make(&t);
  vol_init(&v, BLOCKS);
  for (uint64_t b = 0; b < 64; b++)
    vol_write_random(&v, b * 3);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  vol_snapshot(s, &v, false, NULL);
  store_close(s);
  snprintf(path, sizeof path, "%s/catalog", t.store);
  cat0 = read_file(path, &l0);
  objects0 = count_objects(t.store);
  /* more than a pack of new blocks: one pack is written before commit */
  s = open_store(t.store, STORE_WRITE);
  if (store_writer_begin(s, &meta, false, &w, err, sizeof err) != 0)
    fail_msg("%s", err);
  for (uint64_t b = 0; b < 4200; b++) {
    rnd_fill(block, BS);
    if (store_writer_block(w, b, block, err, sizeof err) != 0)
      fail_msg("%s", err);
  }
  store_writer_abort(w);
  store_close(s);
  cat1 = read_file(path, &l1);
  assert_int_equal(l0, l1);
  assert_memory_equal(cat0, cat1, l0);
  free(cat1);
  assert_int_equal(count_objects(t.store), objects0 + 1);
  /* a writer that fails at commit (a block given twice) is aborted too */
  s = open_store(t.store, STORE_WRITE);
  {
    uint64_t id = 0;
    if (store_writer_begin(s, &meta, false, &w, err, sizeof err) != 0)
      fail_msg("%s", err);
    rnd_fill(block, BS);
    assert_int_equal(store_writer_block(w, 7, block, err, sizeof err), 0);
    assert_int_equal(store_writer_zero(w, 5, 3, err, sizeof err), 0);
    assert_int_equal(store_writer_commit(w, &id, NULL, err, sizeof err),
                     -EINVAL);
    assert_non_null(strstr(err, "block 7 was given twice"));
    assert_true(id == 0);
    store_writer_abort(w);
    /* out of range */
    if (store_writer_begin(s, &meta, false, &w, err, sizeof err) != 0)
      fail_msg("%s", err);
    assert_int_equal(store_writer_block(w, BLOCKS, block, err, sizeof err),
                     -EINVAL);
    assert_int_equal(store_writer_zero(w, BLOCKS - 1, 2, err, sizeof err),
                     -EINVAL);
    store_writer_abort(w);
  }
  assert_int_equal(store_catalog(s)->n_snaps, 1);
  /* the next gc removes the aborted writers' packs */
  if (store_gc(s, false, NULL, err, sizeof err) != 0)
    fail_msg("%s", err);
  store_close(s);
  assert_int_equal(count_objects(t.store), objects0);
  cat1 = read_file(path, &l1);
  assert_memory_equal(cat0, cat1, l0);
  free(cat0);
  free(cat1);
  check_no_garbage(t.store);
  s = open_store(t.store, 0);
  check_all(s, &v);
  store_close(s);
  vol_free(&v);
  rm_rf(t.root);
}

/* Deleting while a snapshot is being written: the garbage collection
 * keeps what the writer has put (a pack written before its commit) and the
 * blobs it found in the store (a block equal to one only the deleted
 * snapshot held); the newest snapshot, which the writer builds its delta
 * on, cannot be deleted until the writer is done. */
static void
test_delete_while_writing(void **state)
{
  enum { BLOCKS = 8192 };
  struct tdir t;
  struct vol v;
  struct store *s;
  struct store_writer *w;
  struct snap_meta meta = { .size_bytes = BLOCKS * (uint64_t)BS };
  uint8_t only_in_1[BS];
  char err[1024];
  uint64_t id = 0;

  (void)state;
  tdir_make(&t);
  vol_init(&v, BLOCKS);
  for (uint64_t b = 0; b < 64; b++)
    vol_write_random(&v, b);
  memcpy(only_in_1, vol_block(&v, 1), BS);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  vol_snapshot(s, &v, true, NULL);
  vol_write_random(&v, 1);
  vol_snapshot(s, &v, false, NULL);
  vol_write_random(&v, 2);
  vol_snapshot(s, &v, false, NULL);
  /* snapshot 4, written while 1 and 3 are deleted */
  vol_write(&v, 10, only_in_1);
  for (uint64_t b = 100; b < 4300; b++)       /* more than one pack */
    vol_write_random(&v, b);
  if (store_writer_begin(s, &meta, false, &w, err, sizeof err) != 0)
    fail_msg("%s", err);
  for (uint64_t b = 0; b < BLOCKS; b++)
    if (v.dirty[b] == 1 &&
        store_writer_block(w, b, vol_block(&v, b), err, sizeof err) != 0)
      fail_msg("%s", err);
  assert_int_equal(store_delete(s, 3, NULL, err, sizeof err), -EBUSY);
  if (!strstr(err, "snapshot 3 is the newest"))
    fail_msg("message \"%s\" does not say why", err);
  if (store_delete(s, 1, NULL, err, sizeof err) != 0)
    fail_msg("delete 1: %s", err);
  assert_null(store_catalog_find(s, 1));
  if (store_writer_commit(w, &id, NULL, err, sizeof err) != 0)
    fail_msg("commit: %s", err);
  assert_true(id == 4);
  check_read_back(s, 4, v.img, v.blocks);
  check_read_back(s, 2, v.snap_img[2], v.blocks);
  check_read_back(s, 3, v.snap_img[3], v.blocks);
  /* the writer is done: 3 goes (merged into 4) */
  if (store_delete(s, 3, NULL, err, sizeof err) != 0)
    fail_msg("delete 3: %s", err);
  check_read_back(s, 4, v.img, v.blocks);
  check_read_back(s, 2, v.snap_img[2], v.blocks);
  store_close(s);
  check_no_garbage(t.store);
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- (j) the lock ---- */

static void
expect_in_use(const char *dir, int flags)
{
  struct store *s = NULL;
  char err[1024] = "";

  assert_true(store_open(dir, flags, &s, err, sizeof err) < 0);
  assert_null(s);
  if (!strstr(err, "in use") || !strstr(err, dir))
    fail_msg("message \"%s\" does not say the store is in use", err);
}

static void
test_lock(void **state)
{
  struct tdir t;
  struct store *w, *r1, *r2;
  char err[1024];

  (void)state;
  tdir_make(&t);
  w = open_store(t.store, STORE_CREATE | STORE_WRITE);
  expect_in_use(t.store, 0);
  expect_in_use(t.store, STORE_WRITE);
  store_close(w);
  r1 = open_store(t.store, 0);
  r2 = open_store(t.store, 0);
  expect_in_use(t.store, STORE_WRITE);
  store_close(r1);
  expect_in_use(t.store, STORE_WRITE);
  store_close(r2);
  w = open_store(t.store, STORE_WRITE);
  store_close(w);
  /* not a store at all */
  assert_true(store_open(t.root, 0, &w, err, sizeof err) < 0);
  assert_non_null(strstr(err, "not a duplex snapshot store"));
  rm_rf(t.root);
}

/* ---- index objects split at store_index_max_entries ---- */

/* Every index object holds at most max entries and lists only packs its
 * entries are in; together they name each blob once. */
static void
check_index_parts(const char *dir, uint32_t max)
{
  struct names idx;
  struct htab seen;
  size_t total = 0;
  char err[256];

  list_objects(dir, "index", &idx);
  htab_init(&seen);
  for (size_t i = 0; i < idx.n; i++) {
    char path[512];
    struct index_obj ix;
    size_t len;
    void *buf;
    uint8_t *used;
    object_path(dir, "index", &idx.h[i], path, sizeof path);
    buf = read_file(path, &len);
    if (format_index_parse(buf, len, &ix, err, sizeof err) != 0)
      fail_msg("%s: %s", path, err);
    assert_true(ix.n_entries > 0 && ix.n_entries <= max);
    used = calloc(ix.n_packs, 1);
    assert_non_null(used);
    for (uint32_t k = 0; k < ix.n_entries; k++) {
      used[ix.entries[k].pack] = 1;
      if (!htab_add(&seen, &ix.entries[k].hash, 1))
        fail_msg("a blob is named by two index entries");
    }
    for (uint32_t p = 0; p < ix.n_packs; p++)
      assert_true(used[p]);
    total += ix.n_entries;
    free(used);
    format_index_free(&ix);
    free(buf);
  }
  assert_true(idx.n >= (total + max - 1) / max);
  print_message("index: %zu entries in %zu objects of at most %u\n", total,
                idx.n, max);
  htab_free(&seen);
  free(idx.h);
}

static void
test_index_split(void **state)
{
  struct tdir t;
  struct vol v;
  struct store *s;
  struct reports *rs = malloc(sizeof *rs);
  uint32_t saved = store_index_max_entries;
  char err[1024];

  (void)state;
  assert_non_null(rs);
  store_index_max_entries = 37;
  build_five(&t, &v, 512);
  check_index_parts(t.store, 37);
  s = open_store(t.store, 0);
  assert_true(store_catalog(s)->n_index > 5);
  check_all(s, &v);
  store_close(s);
  assert_int_equal(run_check(t.store, 0, rs), 0);
  /* gc writes its index in parts too */
  for (uint64_t id = 2; id <= 4; id += 2) {
    s = open_store(t.store, STORE_WRITE);
    if (store_delete(s, id, NULL, err, sizeof err) != 0)
      fail_msg("%s", err);
    store_close(s);
    check_index_parts(t.store, 37);
    check_after_delete(t.store, &v);
  }
  /* and with the limit back, one gc makes it one object again */
  store_index_max_entries = saved;
  s = open_store(t.store, STORE_WRITE);
  if (store_gc(s, true, NULL, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(store_catalog(s)->n_index, 1);
  store_close(s);
  check_after_delete(t.store, &v);
  assert_int_equal(run_check(t.store, 0, rs), 0);
  free(rs);
  vol_free(&v);
  rm_rf(t.root);
}

/* ---- volume size changes, huge zero ranges ---- */

static void
test_resize(void **state)
{
  struct tdir t;
  struct store *s;
  struct vol v;
  uint8_t *img1;
  uint64_t id;

  (void)state;
  tdir_make(&t);
  vol_init(&v, 256);
  vol_fill(&v);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  vol_snapshot(s, &v, false, NULL);
  img1 = v.snap_img[1];
  /* grow to 512 blocks: only the new blocks written and one old one
   * changed are given; the rest keeps the parent's contents */
  v.img = realloc(v.img, 512 * BS);
  v.dirty = realloc(v.dirty, 512);
  memset(v.img + 256 * BS, 0, 256 * BS);
  memset(v.dirty, 0, 512);
  v.blocks = 512;
  for (uint64_t b = 300; b < 310; b++)
    vol_write_random(&v, b);
  vol_write_random(&v, 5);
  id = vol_snapshot(s, &v, false, NULL);
  check_read_back(s, id, v.snap_img[id], 512);
  /* and shrink to 128 */
  v.blocks = 128;
  vol_write_random(&v, 1);
  id = vol_snapshot(s, &v, false, NULL);
  check_read_back(s, id, v.snap_img[id], 128);
  /* a delta on the shrunk volume */
  vol_write_random(&v, 2);
  id = vol_snapshot(s, &v, false, NULL);
  check_read_back(s, id, v.snap_img[id], 128);
  check_read_back(s, 1, img1, 256);
  store_close(s);
  vol_free(&v);
  rm_rf(t.root);
}

/* A trim of more than 2^32 blocks (a 32 TiB volume): only manifests. */
static void
test_huge_zero_range(void **state)
{
  const uint64_t blocks = 1ull << 33;
  struct tdir t;
  struct store *s;
  struct store_writer *w;
  struct snap_meta meta = { .size_bytes = blocks * BS };
  struct store_map map;
  uint8_t block[BS];
  char err[1024];
  uint64_t id;

  (void)state;
  tdir_make(&t);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  rnd_fill(block, BS);
  assert_int_equal(store_writer_begin(s, &meta, false, &w, err, sizeof err),
                   0);
  assert_int_equal(store_writer_block(w, 0, block, err, sizeof err), 0);
  assert_int_equal(store_writer_block(w, (1ull << 32) + 10, block, err,
                                      sizeof err), 0);
  assert_int_equal(store_writer_block(w, blocks - 1, block, err, sizeof err),
                   0);
  if (store_writer_commit(w, &id, NULL, err, sizeof err) != 0)
    fail_msg("%s", err);
  /* trim everything but the last block */
  assert_int_equal(store_writer_begin(s, &meta, false, &w, err, sizeof err),
                   0);
  assert_int_equal(store_writer_zero(w, 0, blocks - 1, err, sizeof err), 0);
  if (store_writer_commit(w, &id, NULL, err, sizeof err) != 0)
    fail_msg("%s", err);
  if (store_map_resolve(s, id, &map, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(map.n_runs, 1);
  assert_true(map.runs[0].start == blocks - 1 && map.runs[0].count == 1);
  store_map_free(&map);
  if (store_map_resolve(s, 1, &map, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(map.n_runs, 3);
  store_map_free(&map);
  store_close(s);
  rm_rf(t.root);
}

/* ---- store_set_io_lock: a writer lets go of the callers' lock while it
 * writes and syncs its objects ---- */

static struct {
  pthread_mutex_t mu;           /* the callers' lock */
  pthread_mutex_t sig;          /* guards the counters */
  pthread_cond_t cv;
  unsigned released;            /* times the writer let go of mu */
  unsigned taken;               /* times the reader took mu meanwhile */
  bool done;                    /* the writer thread is finished */
  struct store *s;
  struct vol *v;
  int rc;
  char err[1024];
} iol;

static void
iol_deadline(struct timespec *ts, int secs)
{
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += secs;
}

/* On the writer's thread, right after it let go of mu: it goes on with
 * its write once the reader holds mu (at most 5 s). */
static void
iol_released(void)
{
  struct timespec ts;
  unsigned want;

  iol_deadline(&ts, 5);
  pthread_mutex_lock(&iol.sig);
  want = ++iol.released;
  pthread_cond_broadcast(&iol.cv);
  while (iol.taken < want &&
         pthread_cond_timedwait(&iol.cv, &iol.sig, &ts) == 0)
    ;
  pthread_mutex_unlock(&iol.sig);
}

/* The writer: snapshot 2 of the blocks written since snapshot 1, under
 * mu as a caller of a shared store holds it. */
static void *
iol_writer(void *arg)
{
  struct snap_meta meta = { .size_bytes = iol.v->blocks * BS };
  struct store_writer *w;
  uint64_t id;

  (void)arg;
  pthread_mutex_lock(&iol.mu);
  iol.rc = store_writer_begin(iol.s, &meta, false, &w, iol.err,
                              sizeof iol.err);
  for (uint64_t b = 0; b < iol.v->blocks && iol.rc == 0; b++)
    if (iol.v->dirty[b])
      iol.rc = store_writer_block(w, b, vol_block(iol.v, b), iol.err,
                                  sizeof iol.err);
  if (iol.rc == 0)
    iol.rc = store_writer_commit(w, &id, NULL, iol.err, sizeof iol.err);
  else
    store_writer_abort(w);
  pthread_mutex_unlock(&iol.mu);
  pthread_mutex_lock(&iol.sig);
  iol.done = true;
  pthread_cond_broadcast(&iol.cv);
  pthread_mutex_unlock(&iol.sig);
  return NULL;
}

/* Each time the writer lets go (a pack filled among the blocks, the last
 * pack, the index, the manifest, the catalog), another thread takes the
 * lock within 5 s and reads snapshot 1 whole while the writer writes;
 * snapshot 2 shows only once committed.  Without the release the reader
 * would wait for the whole snapshot. */
static void
test_io_lock(void **state)
{
  enum { BLOCKS = 8192 };
  struct tdir t;
  struct vol v;
  struct store *s;
  pthread_t thr;
  unsigned seen = 0;

  (void)state;
  tdir_make(&t);
  vol_init(&v, BLOCKS);
  for (uint64_t b = 0; b < 64; b++)
    vol_write_random(&v, b * 5);
  s = open_store(t.store, STORE_CREATE | STORE_WRITE);
  vol_snapshot(s, &v, false, NULL);
  /* more than a pack of new blocks (incompressible) */
  for (uint64_t b = 0; b < 4200; b++)
    vol_write_random(&v, BLOCKS - 1 - b);
  memset(&iol, 0, sizeof iol);
  pthread_mutex_init(&iol.mu, NULL);
  pthread_mutex_init(&iol.sig, NULL);
  pthread_cond_init(&iol.cv, NULL);
  iol.s = s;
  iol.v = &v;
  store_set_io_lock(s, &iol.mu);
  store_io_released_hook = iol_released;
  assert_int_equal(pthread_create(&thr, NULL, iol_writer, NULL), 0);
  for (;;) {
    struct timespec ts;
    bool done;

    iol_deadline(&ts, 10);
    pthread_mutex_lock(&iol.sig);
    while (iol.released == seen && !iol.done &&
           pthread_cond_timedwait(&iol.cv, &iol.sig, &ts) == 0)
      ;
    done = iol.released == seen;
    pthread_mutex_unlock(&iol.sig);
    if (done)
      break;                    /* finished, or stuck: checked below */
    seen++;
    iol_deadline(&ts, 5);
    if (pthread_mutex_timedlock(&iol.mu, &ts) != 0)
      fail_msg("the writer let go of the lock, yet it is still held");
    pthread_mutex_lock(&iol.sig);
    iol.taken = seen;
    pthread_cond_broadcast(&iol.cv);
    pthread_mutex_unlock(&iol.sig);
    assert_int_equal(store_catalog(s)->n_snaps, 1);
    check_read_back(s, 1, v.snap_img[1], BLOCKS);
    pthread_mutex_unlock(&iol.mu);
  }
  assert_int_equal(pthread_join(thr, NULL), 0);
  store_io_released_hook = NULL;
  store_set_io_lock(s, NULL);
  if (iol.rc != 0)
    fail_msg("writer: %s", iol.err);
  assert_true(iol.done);
  /* a pack among the blocks, the last pack, index, manifest, catalog */
  assert_int_equal(seen, 5);
  assert_int_equal(store_catalog(s)->n_snaps, 2);
  v.n_snap = 2;
  v.snap_img = realloc(v.snap_img, 3 * sizeof *v.snap_img);
  assert_non_null(v.snap_img);
  v.snap_img[2] = malloc(BLOCKS * BS);
  assert_non_null(v.snap_img[2]);
  memcpy(v.snap_img[2], v.img, BLOCKS * BS);
  check_all(s, &v);
  store_close(s);
  s = open_store(t.store, 0);
  check_all(s, &v);
  store_close(s);
  pthread_mutex_destroy(&iol.mu);
  pthread_mutex_destroy(&iol.sig);
  pthread_cond_destroy(&iol.cv);
  vol_free(&v);
  rm_rf(t.root);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_first_snapshot),
    cmocka_unit_test(test_chain),
    cmocka_unit_test(test_overlay_diff_random),
    cmocka_unit_test(test_growth),
    cmocka_unit_test(test_delete),
    cmocka_unit_test(test_delete_errors),
    cmocka_unit_test(test_delete_damaged),
    cmocka_unit_test(test_interrupted_delete),
    cmocka_unit_test(test_verify),
    cmocka_unit_test(test_restore),
    cmocka_unit_test(test_abort),
    cmocka_unit_test(test_delete_while_writing),
    cmocka_unit_test(test_lock),
    cmocka_unit_test(test_index_split),
    cmocka_unit_test(test_resize),
    cmocka_unit_test(test_huge_zero_range),
    cmocka_unit_test(test_io_lock),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
