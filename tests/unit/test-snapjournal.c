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
    cmocka_unit_test(test_journal_replay),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
