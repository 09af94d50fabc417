/* Generation identifiers: the decision table that says which way to sync,
 * after DRBD's UUID comparison (drbd_uuid_compare), reduced to two nodes. */
#include <stdbool.h>
#include <stdio.h>

#include "gen.h"

static bool
in_history(const struct gen_ids *g, uint64_t id)
{
  int i;
  if (id == 0)
    return false;
  for (i = 0; i < GEN_HISTORY; i++)
    if (g->history[i] == id)
      return true;
  return false;
}

/* Any generation both sides went through (apart from current). */
static bool
common_ancestor(const struct gen_ids *a, const struct gen_ids *b)
{
  int i;
  if (a->bitmap && (a->bitmap == b->bitmap || in_history(b, a->bitmap)))
    return true;
  if (b->bitmap && in_history(a, b->bitmap))
    return true;
  for (i = 0; i < GEN_HISTORY; i++)
    if (in_history(b, a->history[i]))
      return true;
  return false;
}

enum gen_decision
gen_compare(const struct gen_ids *local, const struct gen_ids *peer)
{
  if (local->current == 0 && peer->current == 0)
    return GEN_BOTH_FRESH;
  if (local->current == 0)
    return GEN_TARGET_FULL;
  if (peer->current == 0)
    return GEN_SOURCE_FULL;
  if (local->current == peer->current)
    return GEN_NO_SYNC;
  /* One side moved on from the generation the other still holds. */
  if (local->bitmap != 0 && local->bitmap == peer->current)
    return GEN_SOURCE_BITMAP;
  if (peer->bitmap != 0 && peer->bitmap == local->current)
    return GEN_TARGET_BITMAP;
  /* Both moved on from the same point: both have changes the other lacks. */
  if (local->bitmap != 0 && local->bitmap == peer->bitmap)
    return GEN_SPLIT_BRAIN;
  /* One side moved on long ago: its bitmap no longer covers the change. */
  if (in_history(local, peer->current))
    return GEN_SOURCE_FULL;
  if (in_history(peer, local->current))
    return GEN_TARGET_FULL;
  if (common_ancestor(local, peer))
    return GEN_SPLIT_BRAIN;
  return GEN_UNRELATED;
}

const char *
gen_decision_name(enum gen_decision d)
{
  switch (d) {
  case GEN_BOTH_FRESH: return "both-fresh";
  case GEN_NO_SYNC: return "no-sync";
  case GEN_SOURCE_BITMAP: return "source-bitmap";
  case GEN_TARGET_BITMAP: return "target-bitmap";
  case GEN_SOURCE_FULL: return "source-full";
  case GEN_TARGET_FULL: return "target-full";
  case GEN_SPLIT_BRAIN: return "split-brain";
  case GEN_UNRELATED: return "unrelated";
  }
  return "?";
}

static void
push_history(struct gen_ids *g, uint64_t id)
{
  int i;
  if (id == 0)
    return;
  for (i = GEN_HISTORY - 1; i > 0; i--)
    g->history[i] = g->history[i - 1];
  g->history[0] = id;
}

void
gen_new_current(struct gen_ids *g, uint64_t fresh)
{
  if (g->bitmap == 0)
    g->bitmap = g->current;
  else
    push_history(g, g->current);
  g->current = fresh;
}

void
gen_sync_done_source(struct gen_ids *g)
{
  push_history(g, g->bitmap);
  g->bitmap = 0;
}

void
gen_sync_done_target(struct gen_ids *g, const struct gen_ids *source)
{
  if (g->current != source->current)
    push_history(g, g->current);
  g->current = source->current;
  g->bitmap = 0;
}

void
gen_format(uint64_t id, char out[17])
{
  snprintf(out, 17, "%016llx", (unsigned long long)id);
}
