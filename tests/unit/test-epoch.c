/* Epoch bookkeeping: overlapping ops never share an epoch, answering a
 * client closes the epoch, independent ops share one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"

static void
test_disjoint_share_epoch(void **state)
{
  struct epochs e;
  (void)state;
  epoch_init(&e);
  assert_int_equal(epoch_admit(&e, 0, 4096), 1);
  assert_int_equal(epoch_admit(&e, 4096, 4096), 1);
  assert_int_equal(epoch_admit(&e, 1 << 20, 8192), 1);
  epoch_fini(&e);
}

static void
test_overlap_opens_new_epoch(void **state)
{
  struct epochs e;
  (void)state;
  epoch_init(&e);
  assert_int_equal(epoch_admit(&e, 0, 8192), 1);
  assert_int_equal(epoch_admit(&e, 4096, 4096), 2);
  /* The new epoch only holds the second op: 0..4096 does not overlap it. */
  assert_int_equal(epoch_admit(&e, 0, 4096), 2);
  assert_int_equal(epoch_admit(&e, 0, 1), 3);
  epoch_fini(&e);
}

static void
test_same_block_counts_as_overlap(void **state)
{
  struct epochs e;
  (void)state;
  epoch_init(&e);
  /* Disjoint bytes of one 4 KiB block: the secondary may read-modify-write
   * that block, so they must not share an epoch. */
  assert_int_equal(epoch_admit(&e, 100, 100), 1);
  assert_int_equal(epoch_admit(&e, 300, 100), 2);
  assert_int_equal(epoch_admit(&e, 4096, 1), 2);
  epoch_fini(&e);
}

static void
test_close_only_current_and_nonempty(void **state)
{
  struct epochs e;
  uint64_t first;
  (void)state;
  epoch_init(&e);
  first = epoch_admit(&e, 0, 4096);
  epoch_close(&e, first);
  assert_int_equal(e.current, 2);
  /* Closing an old epoch, or an empty current one, changes nothing. */
  epoch_close(&e, first);
  assert_int_equal(e.current, 2);
  epoch_close(&e, 2);
  assert_int_equal(e.current, 2);
  assert_int_equal(epoch_admit(&e, 0, 4096), 2);
  epoch_fini(&e);
}

static void
test_cap_bounds_epoch(void **state)
{
  struct epochs e;
  uint64_t i, last = 0;
  (void)state;
  epoch_init(&e);
  for (i = 0; i <= EPOCH_MAX_OPS; i++)
    last = epoch_admit(&e, i * 4096, 4096);
  assert_int_equal(last, 2);
  epoch_fini(&e);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_disjoint_share_epoch),
    cmocka_unit_test(test_overlap_opens_new_epoch),
    cmocka_unit_test(test_same_block_counts_as_overlap),
    cmocka_unit_test(test_close_only_current_and_nonempty),
    cmocka_unit_test(test_cap_bounds_epoch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
