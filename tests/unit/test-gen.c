/* Generation identifiers: every row of the decision table, its symmetry, and
 * the life cycles that lead to each row. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gen.h"

static enum gen_decision
mirror(enum gen_decision d)
{
  switch (d) {
  case GEN_SOURCE_BITMAP: return GEN_TARGET_BITMAP;
  case GEN_TARGET_BITMAP: return GEN_SOURCE_BITMAP;
  case GEN_SOURCE_FULL: return GEN_TARGET_FULL;
  case GEN_TARGET_FULL: return GEN_SOURCE_FULL;
  default: return d;
  }
}

/* Check a row both ways round. */
static void
expect(struct gen_ids a, struct gen_ids b, enum gen_decision d)
{
  enum gen_decision got = gen_compare(&a, &b);
  enum gen_decision back = gen_compare(&b, &a);
  if (got != d)
    fail_msg("expected %s, got %s", gen_decision_name(d),
             gen_decision_name(got));
  if (back != mirror(d))
    fail_msg("mirror: expected %s, got %s", gen_decision_name(mirror(d)),
             gen_decision_name(back));
}

static void
test_table_rows(void **state)
{
  (void)state;
  /* both fresh */
  expect((struct gen_ids){ 0 }, (struct gen_ids){ 0 }, GEN_BOTH_FRESH);
  /* peer fresh: everything goes */
  expect((struct gen_ids){ .current = 7 }, (struct gen_ids){ 0 },
         GEN_SOURCE_FULL);
  /* same generation */
  expect((struct gen_ids){ .current = 7 }, (struct gen_ids){ .current = 7 },
         GEN_NO_SYNC);
  expect((struct gen_ids){ .current = 7, .bitmap = 3 },
         (struct gen_ids){ .current = 7 }, GEN_NO_SYNC);
  /* local moved on from the peer's current: bitmap resync */
  expect((struct gen_ids){ .current = 9, .bitmap = 7 },
         (struct gen_ids){ .current = 7 }, GEN_SOURCE_BITMAP);
  /* both moved on from 7: split brain */
  expect((struct gen_ids){ .current = 9, .bitmap = 7 },
         (struct gen_ids){ .current = 8, .bitmap = 7 }, GEN_SPLIT_BRAIN);
  /* the peer's current is only in local history: full sync */
  expect((struct gen_ids){ .current = 9, .bitmap = 8, .history = { 7 } },
         (struct gen_ids){ .current = 7 }, GEN_SOURCE_FULL);
  expect((struct gen_ids){ .current = 9, .history = { 5, 7 } },
         (struct gen_ids){ .current = 7 }, GEN_SOURCE_FULL);
  /* diverged further back: still split brain */
  expect((struct gen_ids){ .current = 9, .bitmap = 8, .history = { 7 } },
         (struct gen_ids){ .current = 6, .bitmap = 7 }, GEN_SPLIT_BRAIN);
  expect((struct gen_ids){ .current = 9, .history = { 4 } },
         (struct gen_ids){ .current = 6, .history = { 4 } }, GEN_SPLIT_BRAIN);
  /* nothing in common */
  expect((struct gen_ids){ .current = 9, .bitmap = 8, .history = { 7 } },
         (struct gen_ids){ .current = 6, .bitmap = 5, .history = { 4 } },
         GEN_UNRELATED);
}

/* The primary loses its peer, writes, reconnects: bitmap resync; after it
 * both hold the same generation. */
static void
test_cycle_disconnect(void **state)
{
  struct gen_ids p = { .current = 100 }, s = { .current = 100 };
  (void)state;
  gen_new_current(&p, 200);
  assert_int_equal(p.bitmap, 100);
  assert_int_equal(gen_compare(&p, &s), GEN_SOURCE_BITMAP);
  /* a second outage before the resync finished: still covered */
  gen_new_current(&p, 300);
  assert_int_equal(p.bitmap, 100);
  assert_int_equal(gen_compare(&p, &s), GEN_SOURCE_BITMAP);
  gen_sync_done_source(&p);
  gen_sync_done_target(&s, &p);
  assert_int_equal(gen_compare(&p, &s), GEN_NO_SYNC);
  assert_int_equal(p.bitmap, 0);
  assert_int_equal(s.current, 300);
}

/* Both sides write while apart: split brain; after one side discards and
 * is resynced, they agree again. */
static void
test_cycle_split_brain(void **state)
{
  struct gen_ids a = { .current = 100 }, b = { .current = 100 };
  (void)state;
  gen_new_current(&a, 200);
  gen_new_current(&b, 300);
  assert_int_equal(gen_compare(&a, &b), GEN_SPLIT_BRAIN);
  gen_sync_done_source(&a);
  gen_sync_done_target(&b, &a);
  assert_int_equal(gen_compare(&a, &b), GEN_NO_SYNC);
}

/* A fresh secondary, then a completed full sync. */
static void
test_cycle_fresh_secondary(void **state)
{
  struct gen_ids p = { .current = 100 }, s = { 0 };
  (void)state;
  assert_int_equal(gen_compare(&p, &s), GEN_SOURCE_FULL);
  gen_sync_done_source(&p);
  gen_sync_done_target(&s, &p);
  assert_int_equal(gen_compare(&p, &s), GEN_NO_SYNC);
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_table_rows),
    cmocka_unit_test(test_cycle_disconnect),
    cmocka_unit_test(test_cycle_split_brain),
    cmocka_unit_test(test_cycle_fresh_secondary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
