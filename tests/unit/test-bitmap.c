/* Bitmap: outward rounding on set, inward on clear, the clipped last bit,
 * runs, and a randomised comparison against a one-byte-per-bit model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bitmap.h"

#define G 4096u

/* End of [off, off+len) clipped to size, without overflow. */
static uint64_t
min_end(uint64_t off, uint64_t len, uint64_t size)
{
  return len > size - off ? size : off + len;
}

static void
test_new_rejects_bad_grain(void **state)
{
  (void)state;
  assert_null(bitmap_new(1 << 20, 0));
  assert_null(bitmap_new(1 << 20, 256));
  assert_null(bitmap_new(1 << 20, 3000));
  struct bitmap *bm = bitmap_new(1 << 20, 512);
  assert_non_null(bm);
  assert_int_equal(bitmap_bits(bm), 2048);
  assert_int_equal(bitmap_grain(bm), 512);
  bitmap_free(bm);
  bitmap_free(NULL);
}

static void
test_set_rounds_outward_clear_inward(void **state)
{
  struct bitmap *bm = bitmap_new(64 * G, G);
  uint64_t off, len;

  (void)state;
  bitmap_set_range(bm, G + 1, 10); /* inside bit 1 */
  assert_true(bitmap_test(bm, G));
  assert_false(bitmap_test(bm, 0));
  assert_false(bitmap_test(bm, 2 * G));
  assert_int_equal(bitmap_dirty_bytes(bm), G);

  bitmap_set_range(bm, 3 * G - 1, 2); /* straddles bits 2 and 3 */
  assert_int_equal(bitmap_dirty_bytes(bm), 3 * G);

  /* Partial coverage never clears. */
  bitmap_clear_range(bm, G + 1, G);
  assert_true(bitmap_test(bm, G));
  bitmap_clear_range(bm, G, G - 1);
  assert_true(bitmap_test(bm, G));
  /* Whole region clears; the partly covered neighbour stays. */
  bitmap_clear_range(bm, G, 2 * G - 1);
  assert_false(bitmap_test(bm, G));
  assert_true(bitmap_test(bm, 2 * G));
  assert_int_equal(bitmap_dirty_bytes(bm), 2 * G);

  assert_true(bitmap_next_run(bm, 0, 1 << 20, &off, &len));
  assert_int_equal(off, 2 * G);
  assert_int_equal(len, 2 * G);

  bitmap_set_range(bm, 0, 0);
  bitmap_set_range(bm, 64 * G, G); /* past the end: ignored */
  assert_int_equal(bitmap_dirty_bytes(bm), 2 * G);
  bitmap_free(bm);
}

static void
test_last_bit_clipped(void **state)
{
  /* 10 full grains and a 1000-byte tail. */
  uint64_t size = 10 * G + 1000, off, len;
  struct bitmap *bm = bitmap_new(size, G);

  (void)state;
  assert_int_equal(bitmap_bits(bm), 11);
  bitmap_set_range(bm, size - 1, 100);
  assert_int_equal(bitmap_dirty_bytes(bm), 1000);
  assert_true(bitmap_next_run(bm, 0, 1 << 20, &off, &len));
  assert_int_equal(off, 10 * G);
  assert_int_equal(len, 1000);
  /* Clearing to the end of the volume covers the short last bit. */
  bitmap_clear_range(bm, 10 * G, 1000);
  assert_int_equal(bitmap_dirty_bytes(bm), 0);

  bitmap_set_all(bm);
  assert_int_equal(bitmap_dirty_bytes(bm), size);
  bitmap_clear_range(bm, 0, UINT64_MAX);
  assert_int_equal(bitmap_dirty_bytes(bm), 0);
  bitmap_set_range(bm, 0, UINT64_MAX);
  assert_int_equal(bitmap_dirty_bytes(bm), size);
  bitmap_clear_all(bm);
  assert_int_equal(bitmap_dirty_bytes(bm), 0);
  assert_false(bitmap_next_run(bm, 0, G, &off, &len));
  bitmap_free(bm);
}

static void
test_runs_across_words(void **state)
{
  struct bitmap *bm = bitmap_new(1000ull * G, G);
  uint64_t off, len;

  (void)state;
  bitmap_set_range(bm, 60 * G, 10 * G);   /* bits 60..69, crosses a word */
  bitmap_set_range(bm, 500 * G, 300 * G); /* bits 500..799 */
  assert_true(bitmap_next_run(bm, 0, 1 << 30, &off, &len));
  assert_int_equal(off, 60 * G);
  assert_int_equal(len, 10 * G);
  assert_true(bitmap_next_run(bm, off + len, 1 << 30, &off, &len));
  assert_int_equal(off, 500 * G);
  assert_int_equal(len, 300 * G);
  /* max_len caps a run. */
  assert_true(bitmap_next_run(bm, 500 * G, 16 * G, &off, &len));
  assert_int_equal(off, 500 * G);
  assert_int_equal(len, 16 * G);
  /* A from inside a set bit starts at the next bit. */
  assert_true(bitmap_next_run(bm, 60 * G + 1, 1 << 30, &off, &len));
  assert_int_equal(off, 61 * G);
  assert_false(bitmap_next_run(bm, 800 * G, 1 << 30, &off, &len));
  assert_false(bitmap_next_run(bm, 1000 * G, 1 << 30, &off, &len));
  bitmap_free(bm);
}

static void
test_random_against_model(void **state)
{
  const uint64_t nbits = 3000, size = nbits * 512 - 100;
  struct bitmap *bm = bitmap_new(size, 512);
  uint8_t *model = calloc(nbits, 1);

  (void)state;
  srand(12345);
  for (int iter = 0; iter < 20000; iter++) {
    uint64_t off = (uint64_t)rand() % (size + 1000);
    uint64_t len = (uint64_t)rand() % (rand() % 8 ? 4000 : 400000);
    bool set = rand() % 2;

    if (set)
      bitmap_set_range(bm, off, len);
    else
      bitmap_clear_range(bm, off, len);
    if (len && off < size) {
      uint64_t end = min_end(off, len, size);
      if (set) {
        for (uint64_t b = off / 512; b <= (end - 1) / 512; b++)
          model[b] = 1;
      } else {
        uint64_t first = (off + 511) / 512;
        uint64_t last = end == size ? nbits : end / 512;
        for (uint64_t b = first; b < last; b++)
          model[b] = 0;
      }
    }
    if (iter % 97 == 0) {
      uint64_t dirty = 0, pos = 0, off2, len2;
      for (uint64_t b = 0; b < nbits; b++) {
        uint64_t bytes = b == nbits - 1 ? size - b * 512 : 512;
        assert_int_equal(bitmap_test(bm, b * 512), model[b]);
        dirty += model[b] ? bytes : 0;
      }
      assert_int_equal(bitmap_dirty_bytes(bm), dirty);
      /* Walking the runs visits exactly the set bits. */
      dirty = 0;
      while (bitmap_next_run(bm, pos, 64 * 512, &off2, &len2)) {
        assert_true(off2 >= pos);
        assert_true(len2 > 0 && len2 <= 64 * 512);
        for (uint64_t b = off2 / 512; b < (off2 + len2 + 511) / 512; b++)
          assert_int_equal(model[b], 1);
        if (off2 > 0 && off2 != pos)
          assert_int_equal(model[off2 / 512 - 1], 0);
        dirty += len2;
        pos = off2 + len2;
      }
      assert_int_equal(bitmap_dirty_bytes(bm), dirty);
    }
  }
  free(model);
  bitmap_free(bm);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_new_rejects_bad_grain),
    cmocka_unit_test(test_set_rounds_outward_clear_inward),
    cmocka_unit_test(test_last_bit_clipped),
    cmocka_unit_test(test_runs_across_words),
    cmocka_unit_test(test_random_against_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
