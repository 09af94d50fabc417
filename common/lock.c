/* Range locks (lock.h).
 *
 * Overlapping client writes and resync reads must not be in flight at the
 * same time: the order in which they reach the replication stream must be
 * the order in which they reach the local volume, or the replica could end
 * up holding an older version of a block than the primary.  A request is
 * granted when it overlaps neither a held lock nor an earlier waiter, so
 * overlapping requests are granted strictly in arrival order. */
#include <stdlib.h>
#include <sys/queue.h>

#include "lock.h"

struct range_lock {
  uint64_t start, end;          /* [start, end) */
  bool held;
  lock_granted_fn fn;
  void *opaque;
  TAILQ_ENTRY(range_lock) link;
};

TAILQ_HEAD(lock_list, range_lock);

struct lockset {
  struct lock_list held;
  struct lock_list waiting;
  unsigned n_held;
};

struct lockset *
lock_set_new(void)
{
  struct lockset *ls = calloc(1, sizeof *ls);
  if (!ls)
    abort();
  TAILQ_INIT(&ls->held);
  TAILQ_INIT(&ls->waiting);
  return ls;
}

void
lock_set_free(struct lockset *ls)
{
  struct range_lock *l;
  if (!ls)
    return;
  while ((l = TAILQ_FIRST(&ls->held))) {
    TAILQ_REMOVE(&ls->held, l, link);
    free(l);
  }
  while ((l = TAILQ_FIRST(&ls->waiting))) {
    TAILQ_REMOVE(&ls->waiting, l, link);
    free(l);
  }
  free(ls);
}

static bool
overlaps(const struct range_lock *l, uint64_t start, uint64_t end)
{
  return l->start < end && start < l->end;
}

/* Does [start,end) overlap a held lock, or a waiter queued before `until`? */
static bool
lock_conflicts(struct lockset *ls, uint64_t start, uint64_t end,
               const struct range_lock *until)
{
  struct range_lock *l;
  TAILQ_FOREACH(l, &ls->held, link)
    if (overlaps(l, start, end))
      return true;
  TAILQ_FOREACH(l, &ls->waiting, link) {
    if (l == until)
      break;
    if (overlaps(l, start, end))
      return true;
  }
  return false;
}

struct range_lock *
lock_acquire(struct lockset *ls, uint64_t start, uint64_t end,
             lock_granted_fn fn, void *opaque, bool *granted)
{
  struct range_lock *l = calloc(1, sizeof *l);
  if (!l)
    abort();
  l->start = start;
  l->end = end;
  l->fn = fn;
  l->opaque = opaque;
  if (!lock_conflicts(ls, start, end, NULL)) {
    l->held = true;
    TAILQ_INSERT_TAIL(&ls->held, l, link);
    ls->n_held++;
    *granted = true;
  } else {
    TAILQ_INSERT_TAIL(&ls->waiting, l, link);
    *granted = false;
  }
  return l;
}

void
lock_release(struct lockset *ls, struct range_lock *l)
{
  struct range_lock *w, *next;
  struct range_lock **granted = NULL;
  size_t n = 0, cap = 0, i;

  if (l->held) {
    TAILQ_REMOVE(&ls->held, l, link);
    ls->n_held--;
  } else {
    TAILQ_REMOVE(&ls->waiting, l, link);
  }
  free(l);

  /* Grant every waiter that no longer conflicts, in order.  Callbacks run
   * afterwards, since a callback may acquire or release locks itself. */
  for (w = TAILQ_FIRST(&ls->waiting); w; w = next) {
    next = TAILQ_NEXT(w, link);
    if (lock_conflicts(ls, w->start, w->end, w))
      continue;
    TAILQ_REMOVE(&ls->waiting, w, link);
    w->held = true;
    TAILQ_INSERT_TAIL(&ls->held, w, link);
    ls->n_held++;
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      granted = realloc(granted, cap * sizeof *granted);
      if (!granted)
        abort();
    }
    granted[n++] = w;
  }
  for (i = 0; i < n; i++)
    granted[i]->fn(granted[i], granted[i]->opaque);
  free(granted);
}

unsigned
lock_held_count(const struct lockset *ls)
{
  return ls->n_held;
}
