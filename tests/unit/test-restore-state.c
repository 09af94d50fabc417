/* primary/restore-state.c: the restore record's header (every field round
 * trips, any damaged byte is refused) and the file (created whole, pages
 * written in place, read back, removed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"

static const struct restore_hdr sample = {
  .source = 0x0102030405060708ull,
  .safety = 42,
  .size = 2ull << 30,
  .grain = 65536,
  .flags = RESTORE_F_PLANNED,
  .started_wall_ms = 1790000000123ull,
  .rate = 50ull << 20,
};

static void
test_header_roundtrip(void **state)
{
  uint8_t buf[RESTORE_HDR_LEN];
  struct restore_hdr h;
  char err[256];

  (void)state;
  restore_hdr_encode(&sample, buf);
  assert_int_equal(restore_hdr_decode(buf, &h, err, sizeof err), 0);
  assert_memory_equal(&h, &sample, sizeof h);
}

static void
test_header_damage_refused(void **state)
{
  uint8_t buf[RESTORE_HDR_LEN];
  struct restore_hdr h;
  char err[256];

  (void)state;
  restore_hdr_encode(&sample, buf);
  /* Every bit of the checked bytes. */
  for (int i = 0; i < 72 * 8; i++) {
    buf[i / 8] ^= (uint8_t)(1u << (i % 8));
    assert_int_equal(restore_hdr_decode(buf, &h, err, sizeof err), -1);
    buf[i / 8] ^= (uint8_t)(1u << (i % 8));
  }
  assert_int_equal(restore_hdr_decode(buf, &h, err, sizeof err), 0);
  /* A well-formed header with a bad grain. */
  {
    struct restore_hdr bad = sample;
    bad.grain = 1000;
    restore_hdr_encode(&bad, buf);
    assert_int_equal(restore_hdr_decode(buf, &h, err, sizeof err), -1);
    assert_non_null(strstr(err, "grain"));
  }
}

static void
test_file(void **state)
{
  char dir[] = "/tmp/test-restore-state.XXXXXX", path[256];
  uint64_t words[1024], back[1024];
  struct restore_hdr h;
  char err[256];
  int fd;

  (void)state;
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/vol.meta.restore", dir);
  assert_int_equal(restore_file_open(path, &h, &fd, err, sizeof err), 1);
  for (int i = 0; i < 1024; i++)
    words[i] = ~0ull;
  assert_int_equal(restore_file_create(path, &sample, words, 1024, &fd), 0);
  /* The second page (words 512..1023) changes in place. */
  memset(words + 512, 0, 512 * sizeof *words);
  words[700] = 0x5a;
  assert_int_equal(restore_file_write_pages(fd, words, 1024, 1, 1), 0);
  close(fd);
  assert_int_equal(restore_file_open(path, &h, &fd, err, sizeof err), 0);
  assert_memory_equal(&h, &sample, sizeof h);
  assert_int_equal(restore_file_read_words(fd, back, 1024), 0);
  assert_memory_equal(back, words, sizeof words);
  h.flags = 0;
  assert_int_equal(restore_file_write_header(fd, &h), 0);
  close(fd);
  assert_int_equal(restore_file_open(path, &h, &fd, err, sizeof err), 0);
  assert_int_equal(h.flags, 0);
  assert_int_equal(restore_file_remove(path, fd), 0);
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(rmdir(dir), 0);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_header_roundtrip),
    cmocka_unit_test(test_header_damage_refused),
    cmocka_unit_test(test_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
