/* Epoch bookkeeping for the replication stream, no I/O.
 *
 * The secondary applies the ops of one epoch in any order and starts epoch
 * n+1 only when epoch n is on disk.  The primary therefore closes the
 * current epoch (a) when a client is answered for one of its ops, so a write
 * that may depend on an answered one lands after it, and (b) before an op
 * that overlaps an op already in the epoch, so overlapping ops keep their
 * order.  A cap on ops per epoch bounds the overlap scan. */
#include <stdlib.h>

#include "internal.h"

void
epoch_init(struct epochs *e)
{
  e->current = 1;
  e->n = 0;
  e->cap = 0;
  e->ranges = NULL;
}

void
epoch_fini(struct epochs *e)
{
  free(e->ranges);
  e->ranges = NULL;
}

void
epoch_advance(struct epochs *e)
{
  e->current++;
  e->n = 0;
}

void
epoch_close(struct epochs *e, uint64_t epoch)
{
  if (epoch == e->current && e->n > 0)
    epoch_advance(e);
}

/* Ranges are compared in whole 4 KiB blocks: the secondary may
 * read-modify-write the edges of an unaligned zero range, so two ops that
 * share a block must not run in parallel there either. */
uint64_t
epoch_admit(struct epochs *e, uint64_t off, uint64_t len)
{
  size_t i;
  bool conflict = e->n >= EPOCH_MAX_OPS;

  len = ((off + len + BDEV_ALIGN - 1) & ~(uint64_t)(BDEV_ALIGN - 1));
  off &= ~(uint64_t)(BDEV_ALIGN - 1);
  len -= off;

  for (i = 0; i < e->n && !conflict; i++)
    if (e->ranges[i].start < off + len && off < e->ranges[i].end)
      conflict = true;
  if (conflict)
    epoch_advance(e);
  if (e->n == e->cap) {
    e->cap = e->cap ? e->cap * 2 : 64;
    e->ranges = realloc(e->ranges, e->cap * sizeof *e->ranges);
    if (!e->ranges)
      abort();
  }
  e->ranges[e->n].start = off;
  e->ranges[e->n].end = off + len;
  e->n++;
  return e->current;
}
