/* Bitmap: outward rounding on set, inward on clear, the clipped last bit,
 * runs, a randomised comparison against a one-byte-per-bit model, the word
 * image (its byte layout, recount, OR) and page-dirty tracking. */
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

/* Bits per 4 KiB page of the word image. */
#define PAGE_BITS (BITMAP_PAGE * 8ull)

static void
test_word_image_layout(void **state)
{
  /* 3 pages and a bit: 2 full pages, a third page of 1 word + 5 bits. */
  const uint64_t nbits = 2 * PAGE_BITS + 64 + 5;
  struct bitmap *bm = bitmap_new(nbits * G, G);
  const uint8_t *bytes;

  (void)state;
  assert_int_equal(bitmap_word_count(bm), 2 * PAGE_BITS / 64 + 2);
  assert_int_equal(bitmap_page_count(bm), 3);
  bitmap_set_range(bm, 0, G);           /* bit 0 */
  bitmap_set_range(bm, 9 * G, G);       /* bit 9: byte 1, bit 1 */
  bitmap_set_range(bm, (nbits - 1) * G, G);
  bytes = (const uint8_t *)bitmap_words(bm);
  assert_int_equal(bytes[0], 0x01);
  assert_int_equal(bytes[1], 0x02);
  assert_int_equal(bytes[(nbits - 1) / 8], 1u << ((nbits - 1) % 8));

  assert_int_equal(bitmap_page_of(bm, 0), 0);
  assert_int_equal(bitmap_page_of(bm, (PAGE_BITS - 1) * G + G - 1), 0);
  assert_int_equal(bitmap_page_of(bm, PAGE_BITS * G), 1);
  assert_int_equal(bitmap_page_of(bm, (nbits - 1) * G), 2);
  bitmap_free(bm);

  /* A different grain: page_of follows the bit, not the byte offset. */
  bm = bitmap_new(1ull << 40, 65536);
  assert_int_equal(bitmap_page_of(bm, PAGE_BITS * 65536 * 3 + 7), 3);
  assert_int_equal(bitmap_page_count(bm), (1ull << 24) / PAGE_BITS);
  bitmap_free(bm);
}

static void
test_recount_after_load(void **state)
{
  /* 100 bits: word 1 has 36 valid bits. */
  const uint64_t size = 100 * G - 10;
  struct bitmap *bm = bitmap_new(size, G);
  uint64_t *w = bitmap_words(bm), off, len;

  (void)state;
  assert_int_equal(bitmap_word_count(bm), 2);
  /* As if loaded from disk, with junk past the last bit. */
  w[0] = 0x8000000000000001ull;
  w[1] = ~0ull;
  bitmap_recount(bm);
  assert_int_equal(w[1], (1ull << 36) - 1);
  assert_true(bitmap_test(bm, 0));
  assert_true(bitmap_test(bm, 63 * G));
  assert_false(bitmap_test(bm, 62 * G));
  assert_int_equal(bitmap_dirty_bytes(bm), 2 * G + 36 * G - 10);
  /* Loading is not a change: nothing to write back. */
  assert_int_equal(bitmap_dirty_page_count(bm), 0);
  assert_false(bitmap_take_dirty_pages(bm, &off, &len));

  /* The count stays right for later changes. */
  bitmap_clear_range(bm, 64 * G, 36 * G);
  assert_int_equal(bitmap_dirty_bytes(bm), 2 * G);
  bitmap_free(bm);
}

static void
test_or_words(void **state)
{
  const uint64_t nbits = PAGE_BITS + 70; /* two pages, 3 words on page 1 */
  struct bitmap *bm = bitmap_new(nbits * G, G);
  struct bitmap *other = bitmap_new(nbits * G, G);
  uint64_t first, n, *w;

  (void)state;
  bitmap_set_range(bm, 0, 4 * G);          /* bits 0..3 */
  bitmap_set_range(other, 2 * G, 4 * G);   /* bits 2..5, overlapping */
  bitmap_set_range(other, (nbits - 1) * G, G);
  while (bitmap_take_dirty_pages(bm, &first, &n))
    ;
  bitmap_or_words(bm, bitmap_words(other), bitmap_word_count(other));
  assert_int_equal(bitmap_dirty_bytes(bm), 7 * G);
  assert_true(bitmap_test(bm, 5 * G));
  assert_true(bitmap_test(bm, (nbits - 1) * G));
  assert_true(bitmap_page_dirty(bm, 0));
  assert_true(bitmap_page_dirty(bm, 1));

  /* ORing in what is already there changes nothing. */
  while (bitmap_take_dirty_pages(bm, &first, &n))
    ;
  bitmap_or_words(bm, bitmap_words(other), bitmap_word_count(other));
  assert_int_equal(bitmap_dirty_bytes(bm), 7 * G);
  assert_int_equal(bitmap_dirty_page_count(bm), 0);

  /* Bits past the end of the volume and words past the count are ignored;
   * a short image ORs only its words. */
  w = calloc(bitmap_word_count(bm) + 4, sizeof *w);
  for (size_t i = 0; i < bitmap_word_count(bm) + 4; i++)
    w[i] = ~0ull;
  bitmap_or_words(bm, w, 1);
  assert_int_equal(bitmap_dirty_bytes(bm), (64 + 1) * G);
  assert_true(bitmap_page_dirty(bm, 0));
  assert_false(bitmap_page_dirty(bm, 1));
  bitmap_or_words(bm, w, bitmap_word_count(bm) + 4);
  assert_int_equal(bitmap_dirty_bytes(bm), nbits * G);
  free(w);
  bitmap_free(other);
  bitmap_free(bm);
}

static void
test_page_dirty_tracking(void **state)
{
  const uint64_t npages = 10;
  struct bitmap *bm = bitmap_new(npages * PAGE_BITS * G - 1, G);
  uint64_t first, n;

  (void)state;
  assert_int_equal(bitmap_page_count(bm), npages);
  assert_false(bitmap_take_dirty_pages(bm, &first, &n));

  /* Pages 1, 2 (a range across their boundary), 3 and 7. */
  bitmap_set_range(bm, (2 * PAGE_BITS - 1) * G, 2 * G);
  bitmap_set_range(bm, 3 * PAGE_BITS * G, G);
  bitmap_set_range(bm, 7 * PAGE_BITS * G + 5 * G, G);
  assert_int_equal(bitmap_dirty_page_count(bm), 4);
  assert_false(bitmap_page_dirty(bm, 0));
  assert_true(bitmap_page_dirty(bm, 1));
  assert_true(bitmap_page_dirty(bm, bitmap_page_of(bm, 7 * PAGE_BITS * G)));
  assert_false(bitmap_page_dirty(bm, npages)); /* out of range */

  assert_true(bitmap_take_dirty_pages(bm, &first, &n));
  assert_int_equal(first, 1);
  assert_int_equal(n, 3);
  assert_false(bitmap_page_dirty(bm, 2));
  assert_true(bitmap_take_dirty_pages(bm, &first, &n));
  assert_int_equal(first, 7);
  assert_int_equal(n, 1);
  assert_false(bitmap_take_dirty_pages(bm, &first, &n));
  assert_int_equal(bitmap_dirty_page_count(bm), 0);

  /* No change, no dirt: setting a set bit, clearing a clear one, or a
   * clear that covers no whole bit. */
  bitmap_set_range(bm, 3 * PAGE_BITS * G, G);
  bitmap_clear_range(bm, 5 * PAGE_BITS * G, 10 * G);
  bitmap_clear_range(bm, 3 * PAGE_BITS * G + 1, G);
  assert_false(bitmap_take_dirty_pages(bm, &first, &n));

  /* Clearing dirties too. */
  bitmap_clear_range(bm, 3 * PAGE_BITS * G, G);
  assert_true(bitmap_take_dirty_pages(bm, &first, &n));
  assert_int_equal(first, 3);
  assert_int_equal(n, 1);

  /* A failed write gives its pages back; clipped to the page count. */
  bitmap_mark_pages_dirty(bm, 8, 100);
  bitmap_mark_pages_dirty(bm, npages, 1);
  assert_int_equal(bitmap_dirty_page_count(bm), 2);
  assert_true(bitmap_take_dirty_pages(bm, &first, &n));
  assert_int_equal(first, 8);
  assert_int_equal(n, 2);

  /* set_all / clear_all dirty every page that changes. */
  bitmap_set_all(bm);
  assert_int_equal(bitmap_dirty_page_count(bm), npages);
  assert_true(bitmap_take_dirty_pages(bm, &first, &n));
  assert_int_equal(first, 0);
  assert_int_equal(n, npages);
  bitmap_set_all(bm);
  assert_int_equal(bitmap_dirty_page_count(bm), 0);
  bitmap_clear_range(bm, 0, 4 * PAGE_BITS * G);
  while (bitmap_take_dirty_pages(bm, &first, &n))
    ;
  bitmap_clear_all(bm);
  assert_int_equal(bitmap_dirty_page_count(bm), npages - 4);
  assert_int_equal(bitmap_dirty_bytes(bm), 0);
  bitmap_free(bm);
}

/* Across many pages: the runs taken are exactly the pages changed. */
static void
test_page_dirty_random(void **state)
{
  const uint64_t npages = 200;
  struct bitmap *bm = bitmap_new(npages * PAGE_BITS * 512, 512);
  bool model[200];
  uint64_t first, n;

  (void)state;
  srand(777);
  for (int round = 0; round < 50; round++) {
    memset(model, 0, sizeof model);
    for (int i = 0; i < 30; i++) {
      uint64_t bit = (uint64_t)rand() % (npages * PAGE_BITS);
      bool was = bitmap_test(bm, bit * 512);

      if (rand() % 2) {
        bitmap_set_range(bm, bit * 512, 512);
        model[bit / PAGE_BITS] |= !was;
      } else {
        bitmap_clear_range(bm, bit * 512, 512);
        model[bit / PAGE_BITS] |= was;
      }
    }
    while (bitmap_take_dirty_pages(bm, &first, &n)) {
      assert_true(n > 0 && first + n <= npages);
      assert_true(first == 0 || !model[first - 1]);
      for (uint64_t p = first; p < first + n; p++) {
        assert_true(model[p]);
        model[p] = false;
      }
      assert_true(first + n == npages || !model[first + n]);
    }
    for (uint64_t p = 0; p < npages; p++)
      assert_false(model[p]);
  }
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
    cmocka_unit_test(test_word_image_layout),
    cmocka_unit_test(test_recount_after_load),
    cmocka_unit_test(test_or_words),
    cmocka_unit_test(test_page_dirty_tracking),
    cmocka_unit_test(test_page_dirty_random),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
