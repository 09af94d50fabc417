/* Metadata superblock: slot codec, creation, alternating crash-safe
 * writes, and recovery from a torn or corrupted slot. */
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

#include "meta.h"

struct fixture {
  char dir[64];
  char path[128];
};

static int
setup(void **state)
{
  struct fixture *fx = calloc(1, sizeof *fx);

  strcpy(fx->dir, "/tmp/duplex-meta-XXXXXX");
  if (!mkdtemp(fx->dir))
    return -1;
  snprintf(fx->path, sizeof fx->path, "%s/vol.meta", fx->dir);
  *state = fx;
  return 0;
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

static struct meta_sb
sample_sb(uint32_t role)
{
  struct meta_sb sb = {
    .size_bytes = 1ull << 34,
    .block_size = 65536,
    .role = role,
    .consistent = true,
    .clean_shutdown = false,
  };
  for (int i = 0; i < 16; i++)
    sb.volume_uuid[i] = (uint8_t)(0xa0 + i);
  return sb;
}

static void
assert_sb_equal(const struct meta_sb *a, const struct meta_sb *b)
{
  assert_memory_equal(a->volume_uuid, b->volume_uuid, 16);
  assert_true(a->size_bytes == b->size_bytes);
  assert_int_equal(a->block_size, b->block_size);
  assert_int_equal(a->role, b->role);
  assert_int_equal(a->consistent, b->consistent);
  assert_int_equal(a->clean_shutdown, b->clean_shutdown);
}

static void
corrupt_byte(const char *path, off_t off)
{
  int fd = open(path, O_RDWR);
  uint8_t b;

  assert_true(fd >= 0);
  assert_int_equal(pread(fd, &b, 1, off), 1);
  b ^= 0x01;
  assert_int_equal(pwrite(fd, &b, 1, off), 1);
  close(fd);
}

static void
test_codec_roundtrip(void **state)
{
  struct meta_sb sb = sample_sb(META_ROLE_SECONDARY), out;
  uint8_t slot[META_SLOT_SIZE];
  uint64_t seq;

  (void)state;
  sb.clean_shutdown = true;
  meta_sb_encode(&sb, 42, slot);
  assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), 0);
  assert_int_equal(seq, 42);
  assert_sb_equal(&sb, &out);
  /* Little-endian magic at offset 0: "1ATEMXPD" read as bytes. */
  assert_int_equal(slot[0], 0x31);
  assert_int_equal(slot[7], 0x44);

  assert_int_equal(meta_sb_decode(slot, sizeof slot - 1, &out, &seq), -1);
  /* Any single flipped bit anywhere in the slot is caught. */
  for (size_t i = 0; i < META_SLOT_SIZE; i += 37) {
    slot[i] ^= 0x10;
    assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), -1);
    slot[i] ^= 0x10;
  }
  memset(slot, 0, sizeof slot);
  assert_int_equal(meta_sb_decode(slot, sizeof slot, &out, &seq), -1);
}

static void
test_create_then_reopen(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb zero = { 0 };
  struct meta *m;
  struct stat st;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_true(created);
  assert_sb_equal(meta_get(m), &zero);
  assert_int_equal(meta_get(m)->role, META_ROLE_NONE);
  assert_int_equal(stat(fx->path, &st), 0);
  assert_int_equal(st.st_size, 2 * META_SLOT_SIZE);
  meta_close(m);

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_false(created);
  meta_close(m);
}

static void
test_write_roundtrip_and_seq_order(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb sb = sample_sb(META_ROLE_PRIMARY);
  struct meta *m;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  /* Several writes alternate slots; the last one must win on reopen
   * whichever slot it landed in. */
  for (uint32_t i = 1; i <= 5; i++) {
    sb.block_size = 4096 * i;
    assert_int_equal(meta_write(m, &sb), 0);
    assert_sb_equal(meta_get(m), &sb);
    meta_close(m);
    assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
    assert_false(created);
    assert_sb_equal(meta_get(m), &sb);
  }
  meta_close(m);
}

/* Find which slot holds the newest superblock. */
static int
newest_slot(const char *path, uint64_t *seq_out)
{
  uint8_t slots[2 * META_SLOT_SIZE];
  struct meta_sb sb;
  uint64_t seq[2] = { 0, 0 };
  int fd = open(path, O_RDONLY), best = -1;

  assert_int_equal(pread(fd, slots, sizeof slots, 0), sizeof slots);
  close(fd);
  for (int i = 0; i < 2; i++)
    if (meta_sb_decode(slots + i * META_SLOT_SIZE, META_SLOT_SIZE, &sb,
                       &seq[i]) == 0 &&
        (best == -1 || seq[i] > seq[best]))
      best = i;
  *seq_out = best >= 0 ? seq[best] : 0;
  return best;
}

static void
test_torn_slot_falls_back(void **state)
{
  struct fixture *fx = *state;
  struct meta_sb old = sample_sb(META_ROLE_SECONDARY), new = old;
  struct meta *m;
  char err[256];
  bool created;
  uint64_t seq;
  int slot;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_int_equal(meta_write(m, &old), 0);
  new.consistent = false;
  new.size_bytes *= 2;
  assert_int_equal(meta_write(m, &new), 0);
  meta_close(m);

  /* Tear the newest slot (as a crash mid-write would): the older state
   * comes back. */
  slot = newest_slot(fx->path, &seq);
  assert_true(slot >= 0);
  corrupt_byte(fx->path, (off_t)slot * META_SLOT_SIZE + 2000);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_sb_equal(meta_get(m), &old);

  /* The next write goes over the torn slot, not the good one. */
  assert_int_equal(meta_write(m, &new), 0);
  meta_close(m);
  assert_int_equal(newest_slot(fx->path, &seq), slot);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_sb_equal(meta_get(m), &new);
  meta_close(m);
}

static void
test_both_corrupt_is_an_error(void **state)
{
  struct fixture *fx = *state;
  struct meta *m;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  meta_close(m);
  corrupt_byte(fx->path, 100);
  corrupt_byte(fx->path, META_SLOT_SIZE + 100);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), -1);
  assert_non_null(strstr(err, "both superblock copies are corrupt"));
  assert_non_null(strstr(err, fx->path));

  /* Never reinitialised behind the operator's back. */
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), -1);

  /* A truncated (empty) file is corrupt too, not new. */
  assert_int_equal(truncate(fx->path, 0), 0);
  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), -1);
}

static void
test_second_opener_refused(void **state)
{
  struct fixture *fx = *state;
  struct meta *m, *m2;
  char err[256];
  bool created;

  assert_int_equal(meta_open(fx->path, &m, &created, err, sizeof err), 0);
  assert_int_equal(meta_open(fx->path, &m2, &created, err, sizeof err), -1);
  assert_non_null(strstr(err, "in use"));
  meta_close(m);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_codec_roundtrip),
    cmocka_unit_test_setup_teardown(test_create_then_reopen, setup, teardown),
    cmocka_unit_test_setup_teardown(test_write_roundtrip_and_seq_order, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_torn_slot_falls_back, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_both_corrupt_is_an_error, setup,
                                    teardown),
    cmocka_unit_test_setup_teardown(test_second_opener_refused, setup,
                                    teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
