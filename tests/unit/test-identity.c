/* The secondary's identity module: the verdict per decision, the
 * conversion of its bitmap image to the primary's grain, and taking over
 * the metadata a crashed primary left. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"

static bool
bit(const uint8_t *img, uint64_t i)
{
  return img[i / 8] & (1u << (i % 8));
}

static void
test_verdicts(void **state)
{
  (void)state;
  assert_int_equal(identity_verdict(GEN_NO_SYNC, false), IDENTITY_ACCEPT);
  assert_int_equal(identity_verdict(GEN_TARGET_BITMAP, false),
                   IDENTITY_ACCEPT);
  assert_int_equal(identity_verdict(GEN_TARGET_FULL, false), IDENTITY_ACCEPT);
  assert_int_equal(identity_verdict(GEN_BOTH_FRESH, false), IDENTITY_ACCEPT);
  assert_int_equal(identity_verdict(GEN_SPLIT_BRAIN, false),
                   IDENTITY_SPLIT_BRAIN);
  assert_int_equal(identity_verdict(GEN_SOURCE_BITMAP, false),
                   IDENTITY_NEWER);
  assert_int_equal(identity_verdict(GEN_UNRELATED, false),
                   IDENTITY_UNRELATED);
  /* The operator's discard turns every refusal into an accept. */
  assert_int_equal(identity_verdict(GEN_SPLIT_BRAIN, true), IDENTITY_ACCEPT);
  assert_int_equal(identity_verdict(GEN_SOURCE_FULL, true), IDENTITY_ACCEPT);
  assert_int_equal(identity_verdict(GEN_UNRELATED, true), IDENTITY_ACCEPT);
}

static void
test_convert_fine_to_coarse(void **state)
{
  uint8_t src[8] = { 0 }, dst[8] = { 0 };
  (void)state;
  /* 4 KiB bits 0 and 17 -> 64 KiB bits 0 and 1 */
  src[0] |= 1;
  src[2] |= 1u << 1;
  identity_image_convert(src, 64, 4096, dst, 64, 65536);
  assert_true(bit(dst, 0));
  assert_true(bit(dst, 1));
  assert_false(bit(dst, 2));
}

static void
test_convert_coarse_to_fine(void **state)
{
  uint8_t src[8] = { 0 }, dst[16] = { 0 };
  uint64_t i;
  (void)state;
  /* 64 KiB bit 1 -> 4 KiB bits 16..31, nothing else */
  src[0] = 1u << 1;
  identity_image_convert(src, 64, 65536, dst, 128, 4096);
  for (i = 0; i < 128; i++)
    assert_int_equal(bit(dst, i), i >= 16 && i < 32);
}

static void
test_convert_clips_to_destination(void **state)
{
  uint8_t src[8] = { 0 }, dst[8] = { 0 };
  (void)state;
  /* A bit beyond the destination's volume is dropped, not written. */
  src[7] = 0x80;
  identity_image_convert(src, 64, 4096, dst, 10, 4096);
  assert_memory_equal(dst, (uint8_t[8]){ 0 }, 8);
}

/* duplex-secondary started on the metadata of a primary killed while
 * writing: the regions of its activity log are marked in the bitmap
 * (written lazily, it may lack them), the log is kept until a resync
 * completes, and the volume counts as consistent. */
static void
test_start_folds_crashed_primary_log(void **state)
{
  char dir[] = "/tmp/test-identity.XXXXXX", path[64], err[256];
  const uint64_t size = 64ull << 20, grain = 4096, bits = size / grain;
  struct secondary s;
  struct meta *m;
  struct meta_sb sb;
  struct meta_al al = { .extent_shift = 22, .n = 3,
                        .extents = { 1, 7, 15 } }, back;
  uint8_t *img;
  size_t len;
  uint64_t i;
  bool created;

  (void)state;
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/m", dir);
  assert_int_equal(meta_open(path, &m, &created, err, sizeof err), 0);
  memset(&sb, 0, sizeof sb);
  sb.role = META_ROLE_PRIMARY;
  sb.size_bytes = size;
  sb.block_size = 4096;
  sb.bitmap_grain = (uint32_t)grain;
  sb.gen.current = 0x1234;
  assert_int_equal(meta_write(m, &sb), 0);
  assert_int_equal(meta_bitmap_resize(m, bits), 0);
  /* One bit the primary did flush: kept. */
  len = meta_bitmap_image_len(m);
  img = calloc(1, len);
  assert_non_null(img);
  img[0] = 1;
  assert_int_equal(meta_bitmap_write(m, img, 0, meta_bitmap_pages(m)), 0);
  assert_int_equal(meta_al_write(m, &al), 0);

  memset(&s, 0, sizeof s);
  s.meta = m;
  s.cfg.meta = path;
  assert_int_equal(identity_start(&s, err, sizeof err), 0);
  assert_true(s.bitmap_dirty);
  assert_true(s.al_uncertain);
  assert_int_equal(meta_get(m)->role, META_ROLE_SECONDARY);
  assert_true(meta_get(m)->consistent);
  memset(img, 0, len);
  assert_int_equal(meta_bitmap_read(m, img, len), 0);
  for (i = 0; i < bits; i++) {
    uint64_t extent = i * grain >> 22;
    bool want = i == 0 || extent == 1 || extent == 7 || extent == 15;
    if (bit(img, i) != want)
      fail_msg("bit %llu is %d, expected %d", (unsigned long long)i,
               bit(img, i), want);
  }
  /* The log stays until a resync to this side completes. */
  assert_int_equal(meta_al_read(m, &back), 0);
  assert_int_equal(back.n, 3);
  free(img);
  meta_close(m);
  unlink(path);
  rmdir(dir);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_verdicts),
    cmocka_unit_test(test_convert_fine_to_coarse),
    cmocka_unit_test(test_convert_coarse_to_fine),
    cmocka_unit_test(test_convert_clips_to_destination),
    cmocka_unit_test(test_start_folds_crashed_primary_log),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
