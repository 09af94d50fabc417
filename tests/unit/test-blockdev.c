/* Volumes: creation, size checks, locking, write-back of the page cache at
 * open, zeroing (fallocate and the write fallback, aligned and not),
 * data/hole queries.  Linked with --wrap=fdatasync (tests/CMakeLists.txt)
 * to see, and fail, the syncs bdev_open makes. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "blockdev.h"
#include "util.h"

#define VOL_SIZE (4u << 20)

/* fdatasync as bdev_open (and this file) see it. */
int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
static int sync_calls;
static int sync_last_fd = -1;
static int sync_fail; /* errno to fail with; 0: the real call */

int
__wrap_fdatasync(int fd)
{
  sync_calls++;
  sync_last_fd = fd;
  if (sync_fail) {
    errno = sync_fail;
    return -1;
  }
  return __real_fdatasync(fd);
}

struct fixture {
  char dir[64];
  char path[128];
};

static int
setup_in(void **state, const char *base)
{
  struct fixture *fx = calloc(1, sizeof *fx);

  snprintf(fx->dir, sizeof fx->dir, "%s/duplex-bdev-XXXXXX", base);
  if (!mkdtemp(fx->dir)) {
    free(fx);
    return -1;
  }
  snprintf(fx->path, sizeof fx->path, "%s/vol.img", fx->dir);
  *state = fx;
  return 0;
}

static int
setup(void **state)
{
  return setup_in(state, "/tmp");
}

/* tmpfs: no O_DIRECT, no FALLOC_FL_ZERO_RANGE. */
static int
setup_tmpfs(void **state)
{
  if (access("/dev/shm", W_OK) != 0)
    return setup(state);
  return setup_in(state, "/dev/shm");
}

static int
teardown(void **state)
{
  struct fixture *fx = *state;

  unlink(fx->path);
  rmdir(fx->dir);
  free(fx);
  return 0;
}

static void
fill(struct bdev *b, uint8_t v)
{
  uint8_t *buf = util_alloc_aligned(VOL_SIZE);

  memset(buf, v, VOL_SIZE);
  assert_int_equal(pwrite(b->fd, buf, VOL_SIZE, 0), VOL_SIZE);
  free(buf);
}

/* [off, off+len) is zero and everything else still v. */
static void
check_zeroed(struct bdev *b, uint64_t off, uint64_t len, uint8_t v)
{
  uint8_t *buf = util_alloc_aligned(VOL_SIZE);

  assert_int_equal(pread(b->fd, buf, VOL_SIZE, 0), VOL_SIZE);
  for (uint64_t i = 0; i < VOL_SIZE; i++) {
    uint8_t want = i >= off && i < off + len ? 0 : v;
    if (buf[i] != want)
      fail_msg("byte %llu is %u, expected %u (zeroed %llu+%llu)",
               (unsigned long long)i, buf[i], want, (unsigned long long)off,
               (unsigned long long)len);
  }
  free(buf);
}

static void
test_create_and_checks(void **state)
{
  struct fixture *fx = *state;
  struct bdev b, b2;
  struct stat st;
  char err[512];

  /* Missing and no size: an error naming the volume. */
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), -1);
  assert_non_null(strstr(err, fx->path));
  assert_non_null(strstr(err, "No such file"));

  assert_int_equal(bdev_open(fx->path, 5000, &b, err, sizeof err), -1);
  assert_non_null(strstr(err, "size 5000 is not a multiple of 4096 bytes"));

  assert_int_equal(bdev_open(fx->path, VOL_SIZE, &b, err, sizeof err), 0);
  assert_true(b.size == VOL_SIZE);
  assert_false(b.is_blockdev);
  assert_string_equal(b.path, fx->path);
  assert_int_equal(fstat(b.fd, &st), 0);
  assert_true(st.st_blocks == 0); /* sparse */

  /* A second agent on the same volume is refused. */
  assert_int_equal(bdev_open(fx->path, 0, &b2, err, sizeof err), -1);
  assert_non_null(strstr(err, "in use"));
  bdev_close(&b);
  assert_int_equal(b.fd, -1);

  /* Existing file: create_size is ignored, the real size counts. */
  assert_int_equal(bdev_open(fx->path, 8192, &b, err, sizeof err), 0);
  assert_true(b.size == VOL_SIZE);
  bdev_close(&b);

  assert_int_equal(truncate(fx->path, VOL_SIZE + 512), 0);
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), -1);
  assert_non_null(strstr(err, "is not a multiple of 4096 bytes"));
  assert_int_equal(truncate(fx->path, 0), 0);
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), -1);
  assert_non_null(strstr(err, "size is 0"));
}

static const struct {
  uint64_t off, len;
} ranges[] = {
  { 0, 4096 },        { 4096, 1 << 20 },  { 100, 50 },
  { 4000, 200 },      { 4095, 8194 },     { 12345, 1500000 },
  { VOL_SIZE - 1, 1 }, { 0, VOL_SIZE },
};

static void
zero_all_ranges(struct fixture *fx, bool force_direct)
{
  struct bdev b;
  char err[512];

  assert_int_equal(bdev_open(fx->path, VOL_SIZE, &b, err, sizeof err), 0);
  /* On tmpfs, pretending O_DIRECT drives the aligned read-modify-write
   * fallback (harmless: the alignment it adds is just not required). */
  if (force_direct)
    b.direct = true;
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
    for (int punch = 0; punch < 2; punch++) {
      fill(&b, 0x5a);
      assert_int_equal(bdev_zero(&b, ranges[i].off, ranges[i].len, punch), 0);
      check_zeroed(&b, ranges[i].off, ranges[i].len, 0x5a);
    }
  }
  assert_int_equal(bdev_zero(&b, 0, 0, false), 0);
  assert_int_equal(bdev_zero(&b, VOL_SIZE, 4096, false), -EINVAL);
  assert_int_equal(bdev_zero(&b, 4096, UINT64_MAX, true), -EINVAL);
  bdev_close(&b);
}

static void
test_zero(void **state)
{
  zero_all_ranges(*state, false);
}

static void
test_zero_fallback(void **state)
{
  zero_all_ranges(*state, false);
  teardown(state);
  setup_tmpfs(state);
  zero_all_ranges(*state, true);
}

static void
test_data_and_holes(void **state)
{
  struct fixture *fx = *state;
  uint8_t *buf = util_alloc_aligned(4096);
  struct bdev b;
  char err[512];

  assert_int_equal(bdev_open(fx->path, VOL_SIZE, &b, err, sizeof err), 0);
  assert_int_equal(bdev_next_data(&b, 0), VOL_SIZE);
  memset(buf, 1, 4096);
  assert_int_equal(pwrite(b.fd, buf, 4096, 1 << 20), 4096);
  assert_int_equal(fdatasync(b.fd), 0);
  assert_int_equal(bdev_next_data(&b, 0), 1 << 20);
  assert_int_equal(bdev_next_hole(&b, 1 << 20), (1 << 20) + 4096);
  assert_int_equal(bdev_next_data(&b, (1 << 20) + 4096), VOL_SIZE);
  assert_int_equal(bdev_next_hole(&b, 0), 0);
  assert_int_equal(bdev_next_data(&b, VOL_SIZE), VOL_SIZE);
  assert_int_equal(bdev_next_hole(&b, VOL_SIZE + 1), VOL_SIZE);
  bdev_close(&b);
  free(buf);
}

/* Data written through the page cache and not synced yet is written back
 * when the volume is opened with O_DIRECT, before anything reads it
 * directly; a failed write-back refuses the volume.  (Linux itself writes
 * back dirty pages before an O_DIRECT read of them, so the bytes read
 * below match either way; the sync is what is checked.) */
static void
test_open_writes_back(void **state)
{
  struct fixture *fx = *state;
  uint8_t *want = malloc(VOL_SIZE), *got = util_alloc_aligned(VOL_SIZE);
  struct bdev b;
  char err[512];
  FILE *f;

  for (uint32_t i = 0; i < VOL_SIZE; i++)
    want[i] = (uint8_t)(i * 2654435761u >> 24);
  f = fopen(fx->path, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(want, 1, VOL_SIZE, f), VOL_SIZE);
  assert_int_equal(fclose(f), 0); /* dirty in the page cache, not synced */

  sync_calls = 0;
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), 0);
  if (!b.direct) {
    bdev_close(&b);
    skip(); /* no O_DIRECT where the fixture lives */
  }
  assert_int_equal(sync_calls, 1);
  assert_int_equal(sync_last_fd, b.fd);
  assert_int_equal(pread(b.fd, got, VOL_SIZE, 0), VOL_SIZE);
  assert_memory_equal(got, want, VOL_SIZE);
  bdev_close(&b);

  /* The write-back fails: the volume is refused, with the reason, and
   * left unlocked. */
  sync_fail = EIO;
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), -1);
  sync_fail = 0;
  assert_non_null(strstr(err, fx->path));
  assert_non_null(strstr(err, "cannot write back"));
  assert_non_null(strstr(err, "Input/output error"));
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), 0);
  bdev_close(&b);

  /* Buffered I/O (tmpfs has no O_DIRECT) reads the page cache itself:
   * nothing to write back. */
  teardown(state);
  setup_tmpfs(state);
  fx = *state;
  f = fopen(fx->path, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(want, 1, VOL_SIZE, f), VOL_SIZE);
  assert_int_equal(fclose(f), 0);
  sync_calls = 0;
  assert_int_equal(bdev_open(fx->path, 0, &b, err, sizeof err), 0);
  if (!b.direct)
    assert_int_equal(sync_calls, 0);
  bdev_close(&b);
  free(got);
  free(want);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_create_and_checks, setup, teardown),
    cmocka_unit_test_setup_teardown(test_zero, setup, teardown),
    cmocka_unit_test_setup_teardown(test_zero_fallback, setup_tmpfs,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_data_and_holes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_open_writes_back, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
