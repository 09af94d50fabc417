/* The secondary's identity module: the verdict per decision, and the
 * conversion of its bitmap image to the primary's grain. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_verdicts),
    cmocka_unit_test(test_convert_fine_to_coarse),
    cmocka_unit_test(test_convert_coarse_to_fine),
    cmocka_unit_test(test_convert_clips_to_destination),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
