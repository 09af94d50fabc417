/* Consistency points of tail capture (internal.h): the state machine, no I/O.
 *
 *   pre-hook -> freeze -> drain -> mark -> thaw -> post-hook -> done
 *
 * Each step is optional but drain and mark.  Whatever fails (a hook, the
 * freeze, the link, the time limit), a filesystem that was frozen is thawed
 * and a post-hook whose pre-hook ran is run, before the point ends; the
 * first failure is the point's result. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static void
act(struct point *pt, enum point_action a)
{
  pt->action = a;
}

static void
fail(struct point *pt, const char *why)
{
  if (!pt->failed) {
    pt->failed = true;
    snprintf(pt->error, sizeof pt->error, "%s", why);
  }
}

/* After the mark (or a failure): undo what was done, in reverse order. */
static void
unwind(struct point *pt)
{
  if (pt->frozen && !pt->thaw_sent) {
    pt->state = POINT_THAWING;
    pt->thaw_sent = true;
    act(pt, POINT_ACT_THAW);
    return;
  }
  if (pt->pre_hook_ran && !pt->post_hook_sent && pt->cfg.post_hook) {
    pt->state = POINT_POST_HOOK;
    pt->post_hook_sent = true;
    act(pt, POINT_ACT_POST_HOOK);
    return;
  }
  pt->state = pt->failed ? POINT_FAILED : POINT_DONE;
  act(pt, POINT_ACT_FINISH);
}

static void
to_drain(struct point *pt)
{
  pt->state = POINT_DRAINING;
  act(pt, POINT_ACT_DRAIN);
}

void
point_start(struct point *pt, const struct point_config *cfg)
{
  memset(pt, 0, sizeof *pt);
  pt->cfg = *cfg;
  if (cfg->pre_hook) {
    pt->state = POINT_PRE_HOOK;
    act(pt, POINT_ACT_PRE_HOOK);
  } else if (cfg->freeze) {
    pt->state = POINT_FREEZING;
    act(pt, POINT_ACT_FREEZE);
  } else {
    to_drain(pt);
  }
}

enum point_action
point_event(struct point *pt, enum point_event ev, bool ok, const char *why)
{
  act(pt, POINT_ACT_NONE);
  switch (ev) {
  case POINT_EV_PRE_HOOK_DONE:
    if (pt->state != POINT_PRE_HOOK)
      break;
    if (!ok) {
      /* The hook did not take whatever its post-hook releases. */
      fail(pt, why ? why : "the pre-hook failed");
      unwind(pt);
      break;
    }
    pt->pre_hook_ran = true;
    if (pt->cfg.freeze) {
      pt->state = POINT_FREEZING;
      act(pt, POINT_ACT_FREEZE);
    } else {
      to_drain(pt);
    }
    break;
  case POINT_EV_FROZEN:
    if (pt->state != POINT_FREEZING)
      break;
    if (!ok) {
      fail(pt, why ? why : "the freeze failed");
      unwind(pt);
      break;
    }
    pt->frozen = true;
    to_drain(pt);
    break;
  case POINT_EV_DRAINED:
    if (pt->state != POINT_DRAINING)
      break;
    pt->state = POINT_MARKING;
    act(pt, POINT_ACT_MARK);
    break;
  case POINT_EV_MARKED:
    if (pt->state != POINT_MARKING)
      break;
    if (!ok)
      fail(pt, why ? why : "the snapshot was not taken");
    else
      pt->marked = true;
    unwind(pt);
    break;
  case POINT_EV_THAWED:
    if (pt->state != POINT_THAWING)
      break;
    if (!ok)
      fail(pt, why ? why : "the thaw failed");
    pt->frozen = !ok && pt->frozen; /* the watchdog thaws it then */
    pt->thaw_failed = !ok;
    unwind(pt);
    break;
  case POINT_EV_POST_HOOK_DONE:
    if (pt->state != POINT_POST_HOOK)
      break;
    if (!ok)
      fail(pt, why ? why : "the post-hook failed");
    unwind(pt);
    break;
  case POINT_EV_ABORT:
    /* The time limit, the link, the agent stopping: whatever runs now is
     * abandoned (the driver kills a hook, stops waiting). */
    switch (pt->state) {
    case POINT_PRE_HOOK:
    case POINT_FREEZING:
    case POINT_DRAINING:
    case POINT_MARKING:
      fail(pt, why ? why : "aborted");
      unwind(pt);
      break;
    case POINT_POST_HOOK:
      fail(pt, why ? why : "aborted");
      pt->state = POINT_FAILED;
      act(pt, POINT_ACT_FINISH);
      break;
    default:
      break; /* thawing: the thaw answers (or the watchdog thaws) */
    }
    break;
  }
  return pt->action;
}

bool
point_finished(const struct point *pt)
{
  return pt->state == POINT_DONE || pt->state == POINT_FAILED;
}

const char *
point_state_name(enum point_state s)
{
  switch (s) {
  case POINT_IDLE: return "idle";
  case POINT_PRE_HOOK: return "pre-hook";
  case POINT_FREEZING: return "freezing";
  case POINT_DRAINING: return "draining";
  case POINT_MARKING: return "marking";
  case POINT_THAWING: return "thawing";
  case POINT_POST_HOOK: return "post-hook";
  case POINT_DONE: return "done";
  case POINT_FAILED: return "failed";
  }
  return "?";
}
