/* Unit tests for primary/point.c, the consistency point state machine: every
 * configuration (hooks, freeze) with a failure injected at every step, an
 * abort in every state, and random outcome sequences.  Whatever happens, a
 * filesystem that was frozen is thawed before the point finishes, a
 * post-hook whose pre-hook succeeded runs, and the point finishes exactly
 * once, with success only when nothing failed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

/* What the simulated driver saw. */
struct run {
  unsigned thaws, freezes_ok, finishes, post_hooks, pre_hooks_ok, marks;
  bool frozen;                  /* the simulated filesystem */
  unsigned steps;
  bool counted;                 /* the current action was counted */
};

/* Outcome of each action: fail_at names the action that fails (or NONE),
 * abort_in the state in which an abort arrives instead of an outcome. */
static void
drive(const struct point_config *cfg, enum point_action fail_at,
      enum point_state abort_in, unsigned (*pick)(void), struct run *r,
      struct point *pt)
{
  enum point_action a;

  memset(r, 0, sizeof *r);
  point_start(pt, cfg);
  a = pt->action;
  while (a != POINT_ACT_FINISH) {
    bool ok = true;
    enum point_event ev;

    assert_true(++r->steps < 100);
    /* Counted when asked for: an abort may cut the step short. */
    if (a == POINT_ACT_THAW && !r->counted) {
      r->thaws++;
      r->frozen = false; /* FITHAW, or the watchdog after it failed */
    }
    if (a == POINT_ACT_POST_HOOK && !r->counted)
      r->post_hooks++;
    r->counted = true;
    if (abort_in != POINT_IDLE && pt->state == abort_in) {
      abort_in = POINT_IDLE;
      a = point_event(pt, POINT_EV_ABORT, false, "time limit");
      if (a == POINT_ACT_NONE) {
        /* Thawing: the thaw still answers. */
        assert_int_equal(pt->state, POINT_THAWING);
        a = point_event(pt, POINT_EV_THAWED, true, NULL);
      }
      r->counted = false;
      continue;
    }
    if (pick)
      ok = pick() != 0;
    else
      ok = a != fail_at;
    switch (a) {
    case POINT_ACT_PRE_HOOK:
      ev = POINT_EV_PRE_HOOK_DONE;
      if (ok)
        r->pre_hooks_ok++;
      break;
    case POINT_ACT_FREEZE:
      ev = POINT_EV_FROZEN;
      if (ok) {
        r->frozen = true;
        r->freezes_ok++;
      }
      break;
    case POINT_ACT_DRAIN:
      ev = POINT_EV_DRAINED;
      if (!ok) {
        /* A drain does not fail: the link drops or time runs out. */
        a = point_event(pt, POINT_EV_ABORT, false, "link lost");
        r->counted = false;
        continue;
      }
      break;
    case POINT_ACT_MARK:
      ev = POINT_EV_MARKED;
      r->marks++;
      break;
    case POINT_ACT_THAW:
      ev = POINT_EV_THAWED;
      break;
    case POINT_ACT_POST_HOOK:
      ev = POINT_EV_POST_HOOK_DONE;
      break;
    default:
      fail_msg("unexpected action %d in state %s", a,
               point_state_name(pt->state));
      return;
    }
    a = point_event(pt, ev, ok, ok ? NULL : "injected");
    r->counted = false;
  }
  r->finishes++;
  assert_true(point_finished(pt));
  /* Stray outcomes after the end change nothing. */
  assert_int_equal(point_event(pt, POINT_EV_THAWED, true, NULL),
                   POINT_ACT_NONE);
  assert_int_equal(point_event(pt, POINT_EV_ABORT, false, "late"),
                   POINT_ACT_NONE);
  assert_true(point_finished(pt));
}

static void
check_invariants(const struct point_config *cfg, const struct run *r,
                 const struct point *pt)
{
  assert_false(r->frozen);
  assert_false(pt->frozen && !pt->thaw_failed);
  assert_int_equal(r->thaws, r->freezes_ok);
  if (r->pre_hooks_ok && cfg->post_hook)
    assert_int_equal(r->post_hooks, 1);
  if (!cfg->pre_hook || !r->pre_hooks_ok)
    assert_int_equal(r->post_hooks, 0);
  assert_int_equal(r->finishes, 1);
  assert_true(r->marks <= 1);
}

static const struct point_config configs[] = {
  { false, NULL, NULL },
  { true, NULL, NULL },
  { true, "pre", "post" },
  { false, "pre", "post" },
  { true, "pre", NULL },
  { true, NULL, "post" },
};

static void
test_success_every_config(void **state)
{
  struct point pt;
  struct run r;
  unsigned i;
  (void)state;

  for (i = 0; i < sizeof configs / sizeof configs[0]; i++) {
    drive(&configs[i], POINT_ACT_NONE, POINT_IDLE, NULL, &r, &pt);
    check_invariants(&configs[i], &r, &pt);
    assert_int_equal(pt.state, POINT_DONE);
    assert_true(pt.marked);
    assert_int_equal(r.marks, 1);
    assert_int_equal(r.freezes_ok, configs[i].freeze ? 1 : 0);
  }
}

static void
test_failure_at_every_step(void **state)
{
  static const enum point_action steps[] = {
    POINT_ACT_PRE_HOOK, POINT_ACT_FREEZE, POINT_ACT_DRAIN, POINT_ACT_MARK,
    POINT_ACT_THAW, POINT_ACT_POST_HOOK,
  };
  struct point pt;
  struct run r;
  unsigned i, k;
  (void)state;

  for (i = 0; i < sizeof configs / sizeof configs[0]; i++) {
    for (k = 0; k < sizeof steps / sizeof steps[0]; k++) {
      drive(&configs[i], steps[k], POINT_IDLE, NULL, &r, &pt);
      check_invariants(&configs[i], &r, &pt);
      /* Fails exactly when the failing step was part of this config. */
      {
        bool present = (steps[k] == POINT_ACT_PRE_HOOK && configs[i].pre_hook)
            || (steps[k] == POINT_ACT_FREEZE && configs[i].freeze)
            || steps[k] == POINT_ACT_DRAIN || steps[k] == POINT_ACT_MARK
            || (steps[k] == POINT_ACT_THAW && configs[i].freeze)
            || (steps[k] == POINT_ACT_POST_HOOK && configs[i].pre_hook &&
                configs[i].post_hook);
        if (present != (pt.state == POINT_FAILED))
          fail_msg("config %u, failing step %d: state %s", i, steps[k],
                   point_state_name(pt.state));
        if (present)
          assert_true(strlen(pt.error) > 0);
      }
      /* A snapshot is taken only if nothing before the mark failed. */
      if (steps[k] == POINT_ACT_DRAIN || steps[k] == POINT_ACT_MARK ||
          (steps[k] == POINT_ACT_PRE_HOOK && configs[i].pre_hook) ||
          (steps[k] == POINT_ACT_FREEZE && configs[i].freeze))
        assert_false(pt.marked);
    }
  }
}

static void
test_abort_in_every_state(void **state)
{
  static const enum point_state states[] = {
    POINT_PRE_HOOK, POINT_FREEZING, POINT_DRAINING, POINT_MARKING,
    POINT_THAWING, POINT_POST_HOOK,
  };
  struct point pt;
  struct run r;
  unsigned i, k;
  (void)state;

  for (i = 0; i < sizeof configs / sizeof configs[0]; i++)
    for (k = 0; k < sizeof states / sizeof states[0]; k++) {
      drive(&configs[i], POINT_ACT_NONE, states[k], NULL, &r, &pt);
      check_invariants(&configs[i], &r, &pt);
      if (states[k] == POINT_DRAINING || states[k] == POINT_MARKING)
        assert_int_equal(pt.state, POINT_FAILED);
    }
}

static unsigned seed;
static unsigned
pick_random(void)
{
  seed = seed * 1103515245u + 12345u;
  return (seed >> 16) % 4 != 0; /* one outcome in four fails */
}

static void
test_random_outcomes(void **state)
{
  struct point pt;
  struct run r;
  unsigned i, n;
  (void)state;

  for (n = 0; n < 5000; n++) {
    seed = n;
    i = n % (sizeof configs / sizeof configs[0]);
    drive(&configs[i], POINT_ACT_NONE, POINT_IDLE, pick_random, &r, &pt);
    check_invariants(&configs[i], &r, &pt);
  }
}

int
main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_success_every_config),
    cmocka_unit_test(test_failure_at_every_step),
    cmocka_unit_test(test_abort_in_every_state),
    cmocka_unit_test(test_random_outcomes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
