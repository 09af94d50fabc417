/* Range locks: overlapping requests are granted strictly in arrival order,
 * non-overlapping ones at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "lock.h"

static int grants[16];
static int n_grants;

static void
on_grant(struct range_lock *l, void *opaque)
{
  (void)l;
  grants[n_grants++] = (int)(intptr_t)opaque;
}

static void
test_disjoint_granted_at_once(void **state)
{
  struct lockset *ls = lock_set_new();
  bool g1, g2;
  struct range_lock *a = lock_acquire(ls, 0, 4096, on_grant, (void *)1, &g1);
  struct range_lock *b = lock_acquire(ls, 4096, 8192, on_grant, (void *)2, &g2);
  (void)state;
  assert_true(g1);
  assert_true(g2);
  assert_int_equal(lock_held_count(ls), 2);
  lock_release(ls, a);
  lock_release(ls, b);
  assert_int_equal(lock_held_count(ls), 0);
  lock_set_free(ls);
}

static void
test_overlap_waits_in_order(void **state)
{
  struct lockset *ls = lock_set_new();
  bool g1, g2, g3, g4;
  struct range_lock *a, *b, *c, *d;
  (void)state;
  n_grants = 0;
  a = lock_acquire(ls, 0, 8192, on_grant, (void *)1, &g1);
  b = lock_acquire(ls, 4096, 12288, on_grant, (void *)2, &g2);
  /* Overlaps only b (a waiter): must still queue behind it. */
  c = lock_acquire(ls, 8192, 16384, on_grant, (void *)3, &g3);
  /* Disjoint from everything: granted at once. */
  d = lock_acquire(ls, 1 << 20, (1 << 20) + 4096, on_grant, (void *)4, &g4);
  assert_true(g1);
  assert_false(g2);
  assert_false(g3);
  assert_true(g4);
  lock_release(ls, a);
  assert_int_equal(n_grants, 1);
  assert_int_equal(grants[0], 2);
  lock_release(ls, b);
  assert_int_equal(n_grants, 2);
  assert_int_equal(grants[1], 3);
  lock_release(ls, c);
  lock_release(ls, d);
  assert_int_equal(lock_held_count(ls), 0);
  lock_set_free(ls);
}

static void
test_release_of_waiter(void **state)
{
  struct lockset *ls = lock_set_new();
  bool g1, g2, g3;
  struct range_lock *a, *b, *c;
  (void)state;
  n_grants = 0;
  a = lock_acquire(ls, 0, 4096, on_grant, (void *)1, &g1);
  b = lock_acquire(ls, 0, 4096, on_grant, (void *)2, &g2);
  c = lock_acquire(ls, 0, 4096, on_grant, (void *)3, &g3);
  assert_false(g2);
  /* A waiter that gives up does not grant anything while a is held. */
  lock_release(ls, b);
  assert_int_equal(n_grants, 0);
  lock_release(ls, a);
  assert_int_equal(n_grants, 1);
  assert_int_equal(grants[0], 3);
  lock_release(ls, c);
  lock_set_free(ls);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_disjoint_granted_at_once),
    cmocka_unit_test(test_overlap_waits_in_order),
    cmocka_unit_test(test_release_of_waiter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
