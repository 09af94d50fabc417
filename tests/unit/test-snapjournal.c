/* The crash-safe state of snapshots being copied (secondary/snapjournal.c):
 * the job list round-trips and refuses damage; journal records replay in
 * order and a torn or damaged tail is where replay stops. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "crc32c.h"
#include "internal.h"

static char dir[] = "/tmp/duplex-snapjournal-XXXXXX";
static char meta[128];

struct seen {
  unsigned n;
  uint64_t ids[16], blocks[16];
  uint8_t first[16];
};

static void
collect(void *arg, uint64_t id, uint64_t block, const uint8_t *data)
{
  struct seen *s = arg;

  if (s->n < 16) {
    s->ids[s->n] = id;
    s->blocks[s->n] = block;
    s->first[s->n] = data[0];
  }
  s->n++;
}

static void
test_jobs_roundtrip(void **state)
{
  struct snapjournal *j;
  struct snapjournal_job v[2], *out;
  uint64_t w1[3] = { 1, 0xffull << 8, 5 }, w2[1] = { 42 };
  char err[256], path[256];
  size_t n;
  int fd;

  (void)state;
  assert_int_equal(snapjournal_open(meta, &j, err, sizeof err), 0);
  assert_int_equal(snapjournal_load_jobs(j, &out, &n, err, sizeof err), 0);
  assert_int_equal(n, 0);                       /* none saved yet */
  memset(v, 0, sizeof v);
  v[0].id = 7;
  snprintf(v[0].meta.name, sizeof v[0].meta.name, "before upgrade");
  v[0].meta.created_ns = 123456789;
  v[0].meta.reason = SNAP_MANUAL;
  v[0].meta.size_bytes = v[0].size = 3 * 64 * 4096;
  v[0].full = true;
  v[0].set_words = w1;
  v[0].n_words = 3;
  v[1].id = 8;
  v[1].meta.reason = SNAP_BEFORE_RESYNC;
  v[1].rescan = true;
  v[1].size = 64 * 4096;
  v[1].set_words = w2;
  v[1].n_words = 1;
  assert_int_equal(snapjournal_save_jobs(j, v, 2, err, sizeof err), 0);
  assert_int_equal(snapjournal_load_jobs(j, &out, &n, err, sizeof err), 0);
  assert_int_equal(n, 2);
  assert_int_equal(out[0].id, 7);
  assert_string_equal(out[0].meta.name, "before upgrade");
  assert_int_equal(out[0].meta.created_ns, 123456789);
  assert_true(out[0].full && !out[0].rescan);
  assert_int_equal(out[0].n_words, 3);
  assert_memory_equal(out[0].set_words, w1, sizeof w1);
  assert_int_equal(out[1].meta.reason, SNAP_BEFORE_RESYNC);
  assert_true(out[1].rescan);
  assert_int_equal(out[1].set_words[0], 42);
  snapjournal_free_jobs(out, n);

  /* One flipped byte: refused, with the file named. */
  snprintf(path, sizeof path, "%s.snapjobs", meta);
  fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "X", 1, 40), 1);
  close(fd);
  assert_true(snapjournal_load_jobs(j, &out, &n, err, sizeof err) < 0);
  assert_non_null(strstr(err, ".snapjobs"));
  assert_int_equal(snapjournal_save_jobs(j, NULL, 0, err, sizeof err), 0);
  assert_int_equal(snapjournal_load_jobs(j, &out, &n, err, sizeof err), 0);
  assert_int_equal(n, 0);
  snapjournal_free_jobs(out, n);
  snapjournal_close(j);
}

/* Sets are saved as runs when that is smaller: a full 64 GiB snapshot
 * takes a few bytes, not 2 MiB; sparse, dense and patterned sets of any
 * shape come back exactly. */
static void
test_jobs_sets(void **state)
{
  enum { WORDS = (64ull << 30) / 4096 / 64 };
  struct snapjournal *j;
  struct snapjournal_job v[3], *out;
  uint64_t *full = malloc(WORDS * 8), *sparse = calloc(WORDS, 8);
  uint64_t pat[300], rng = 7;
  char err[256], path[256];
  struct stat st;
  size_t n;

  (void)state;
  assert_non_null(full);
  assert_non_null(sparse);
  memset(full, 0xff, WORDS * 8);
  full[1000] = 0x00ff00ff00ff00f0ull;           /* a few holes */
  for (unsigned i = 0; i < 64; i++)
    sparse[(i * 4099) % WORDS] |= 1ull << (i % 64);
  sparse[WORDS - 1] = 1ull << 63;               /* the very last block */
  for (size_t i = 0; i < 300; i++) {            /* no long runs: raw */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    pat[i] = rng;
  }
  memset(v, 0, sizeof v);
  v[0].id = 1;
  v[0].size = v[0].meta.size_bytes = 64ull << 30;
  v[0].set_words = full;
  v[0].n_words = WORDS;
  v[1].id = 2;
  v[1].size = v[1].meta.size_bytes = 64ull << 30;
  v[1].set_words = sparse;
  v[1].n_words = WORDS;
  v[2].id = 3;
  v[2].size = v[2].meta.size_bytes = 300 * 64 * 4096;
  v[2].set_words = pat;
  v[2].n_words = 300;
  assert_int_equal(snapjournal_open(meta, &j, err, sizeof err), 0);
  assert_int_equal(snapjournal_save_jobs(j, v, 3, err, sizeof err), 0);
  snprintf(path, sizeof path, "%s.snapjobs", meta);
  assert_int_equal(stat(path, &st), 0);
  if (st.st_size > 8192)
    fail_msg("%s holds %lld bytes: the sets were not saved as runs", path,
             (long long)st.st_size);
  assert_int_equal(snapjournal_load_jobs(j, &out, &n, err, sizeof err), 0);
  assert_int_equal(n, 3);
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(out[i].n_words, v[i].n_words);
    assert_memory_equal(out[i].set_words, v[i].set_words, v[i].n_words * 8);
  }
  snapjournal_free_jobs(out, n);
  assert_int_equal(snapjournal_save_jobs(j, NULL, 0, err, sizeof err), 0);
  snapjournal_close(j);
  free(full);
  free(sparse);
}

/* A list saved by the previous version (DXSJOBS1: raw words only) is
 * still read after an upgrade. */
static void
test_jobs_v1(void **state)
{
  uint8_t buf[16 + 43 + STORE_NAME_MAX + 1 + 16 + 8 + 2 * 8 + 4] = { 0 };
  struct snapjournal *j;
  struct snapjournal_job *out;
  char err[256], path[256];
  size_t off = 0, n;
  uint32_t crc;
  int fd;

  (void)state;
  memcpy(buf, "DXSJOBS1", 8);
  buf[8] = 1;                                   /* one job */
  off = 16;
  buf[off] = 9;                                 /* id */
  buf[off + 26] = 0x08;                         /* size_bytes 128 * 4096 */
  buf[off + 34] = 0x08;                         /* size */
  buf[off + 40] = SNAP_MANUAL;
  off += 43;
  memcpy(buf + off, "old", 3);
  off += STORE_NAME_MAX + 1 + 16;
  buf[off] = 2;                                 /* n_words */
  off += 8;
  buf[off] = 0x5a;                              /* words: 0x5a, 1 << 63 */
  buf[off + 15] = 0x80;
  off += 16;
  crc = crc32c(0, buf, off);
  memcpy(buf + off, &crc, 4);
  off += 4;
  assert_int_equal(off, sizeof buf);
  snprintf(path, sizeof path, "%s.snapjobs", meta);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, buf, off), (ssize_t)off);
  close(fd);
  assert_int_equal(snapjournal_open(meta, &j, err, sizeof err), 0);
  if (snapjournal_load_jobs(j, &out, &n, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_int_equal(n, 1);
  assert_int_equal(out[0].id, 9);
  assert_string_equal(out[0].meta.name, "old");
  assert_int_equal(out[0].size, 128 * 4096);
  assert_int_equal(out[0].n_words, 2);
  assert_true(out[0].set_words[0] == 0x5a && out[0].set_words[1] == 1ull << 63);
  snapjournal_free_jobs(out, n);
  assert_int_equal(snapjournal_save_jobs(j, NULL, 0, err, sizeof err), 0);
  snapjournal_close(j);
}

static void
test_journal_replay(void **state)
{
  struct snapjournal *j;
  uint8_t data[3 * 4096];
  uint64_t ids[3] = { 7, 7, 8 }, blocks[3] = { 10, 11, 3 };
  struct seen s;
  char err[256], path[256];
  struct stat st;
  int fd;

  (void)state;
  assert_int_equal(snapjournal_open(meta, &j, err, sizeof err), 0);
  assert_int_equal(snapjournal_reset(j), 0);
  for (int i = 0; i < 3; i++)
    memset(data + i * 4096, 'a' + i, 4096);
  assert_int_equal(snapjournal_append(j, ids, blocks, data, 2, err,
                                      sizeof err), 0);
  assert_int_equal(snapjournal_append(j, ids + 2, blocks + 2,
                                      data + 2 * 4096, 1, err, sizeof err),
                   0);
  memset(&s, 0, sizeof s);
  assert_int_equal(snapjournal_replay(j, collect, &s), 3);
  assert_int_equal(s.n, 3);
  assert_int_equal(s.ids[2], 8);
  assert_int_equal(s.blocks[1], 11);
  assert_int_equal(s.first[2], 'c');

  /* A torn tail (half of the last record) is where replay stops. */
  snprintf(path, sizeof path, "%s.snapjournal", meta);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(truncate(path, st.st_size - 2000), 0);
  memset(&s, 0, sizeof s);
  assert_int_equal(snapjournal_replay(j, collect, &s), 2);
  /* A damaged record, too, and nothing after it is trusted. */
  fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "Z", 1, 100), 1);
  close(fd);
  memset(&s, 0, sizeof s);
  assert_int_equal(snapjournal_replay(j, collect, &s), 0);
  assert_int_equal(snapjournal_reset(j), 0);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_size, 0);
  snapjournal_close(j);
}

static int
setup(void **state)
{
  (void)state;
  if (!mkdtemp(dir))
    return -1;
  snprintf(meta, sizeof meta, "%s/replica.meta", dir);
  return 0;
}

static int
teardown(void **state)
{
  char cmd[200];

  (void)state;
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_jobs_roundtrip),
    cmocka_unit_test(test_jobs_sets),
    cmocka_unit_test(test_jobs_v1),
    cmocka_unit_test(test_journal_replay),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
